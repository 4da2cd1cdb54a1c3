package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// RetryDeadLetter applies a dead-lettered event again, after the data or
// the mapping was fixed, by the rules of pipeline.PlanRetry (what newer
// events wrote, or a newer delete, wins; only the rest is written), under
// the flow's tool origin so that it is not echoed. On success the dead
// letter is removed from DUPLEX_DLQ. The target's applied position is not
// moved.
func RetryDeadLetter(ctx context.Context, cfg *config.Config, bus *Bus, seq uint64, log *slog.Logger) (pipeline.RetryOutcome, error) {
	out := pipeline.RetryOutcome{Seq: seq}
	js := bus.JetStream()
	sd, err := pipeline.GetDeadLetter(ctx, js, seq)
	if err != nil {
		return out, err
	}
	dl := &sd.DeadLetter
	f := cfg.Flow(dl.Flow)
	if f == nil {
		return out, fmt.Errorf("dead letter %d: flow %s is not configured", seq, dl.Flow)
	}
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return out, err
	}
	e := m.Entity(dl.Entity)
	if dl.Event != nil && e == nil {
		return out, fmt.Errorf("dead letter %d: entity %s is not in the mapping", seq, dl.Entity)
	}
	var key []string
	if e != nil {
		key = e.KeyFields()
	}
	tx, out, err := pipeline.PlanRetry(ctx, js, sd, key)
	if err != nil {
		return out, err
	}
	if tx == nil {
		return out, pipeline.DropDeadLetter(ctx, js, seq)
	}
	cipher, fieldHash, err := personal(ctx, cfg, m)
	if err != nil {
		return out, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	// Personal fields stay sealed in the dead letter; opened only here,
	// to apply.
	for i := range tx.Events {
		if err := cipher.Open(&tx.Events[i]); err != nil {
			return out, fmt.Errorf("dead letter %d still fails: %w", seq, err)
		}
	}
	// Dead letters are not signed (flows and captures publish them): what
	// a retry writes is held to the mapping like anything a flow applies.
	for i := range tx.Events {
		if err := m.CheckIncoming(&tx.Events[i], f.From, f.To, time.Now(), f.MaxClockSkew); err != nil {
			return out, fmt.Errorf("dead letter %d cannot be retried: %w", seq, err)
		}
	}
	sink, err := pgsink.New(pgsink.Config{Flow: f.Name, Source: f.From, System: f.To, DSN: cfg.Systems[f.To].DSN, Origin: f.ToolOrigin(), Mapping: m, FieldHash: fieldHash, Logger: log, Slot: captureSlot(cfg, f.To)})
	if err != nil {
		return out, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	if _, err := sink.Apply(ctx, []*transform.Tx{tx}); err != nil {
		var ae *pipeline.ApplyError
		if errors.As(err, &ae) {
			return out, fmt.Errorf("dead letter %d still fails (%s): %w", seq, ae.Kind, err)
		}
		return out, fmt.Errorf("dead letter %d still fails: %w", seq, err)
	}
	out.Applied = true
	return out, pipeline.DropDeadLetter(ctx, js, seq)
}
