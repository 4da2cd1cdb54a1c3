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

// ReplayProgress is where an offline replay is.
type ReplayProgress struct {
	Total, Pending uint64 // messages
	Stats          pipeline.FlowCounts
}

// ReplayOffline re-applies a flow from a point of the retained stream when
// no duplex runs it: it takes the flow's lease (refusing, with the
// holder's name, when an instance holds it), re-points the flow's consumer
// and runs the flow alone (no capture) until nothing is pending, reporting
// progress every half second. The lease is held, renewed, until the
// replay ends; a standby instance takes the flow over afterwards.
func ReplayOffline(ctx context.Context, cfg *config.Config, bus *Bus, flow string, from ReplayFrom, log *slog.Logger, progress func(ReplayProgress)) (pipeline.FlowCounts, error) {
	f := cfg.Flow(flow)
	if f == nil {
		return pipeline.FlowCounts{}, fmt.Errorf("replay: no flow %q", flow)
	}
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return pipeline.FlowCounts{}, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lease, err := holdFlowLease(ctx, bus.JetStream(), cfg, f.Name, log)
	if err != nil {
		return pipeline.FlowCounts{}, errLeaseHeld(flow, err)
	}
	var counts pipeline.FlowCounts
	err = lease.Hold(ctx, func(ctx context.Context) error {
		var err error
		counts, err = replayHeld(ctx, cfg, bus, f, m, from, log, progress)
		return err
	})
	if errors.Is(err, pipeline.ErrLeaseLost) {
		return counts, fmt.Errorf("replay %s: stopped: %w", flow, err)
	}
	return counts, err
}

// replayHeld is ReplayOffline once the flow's lease is held.
func replayHeld(ctx context.Context, cfg *config.Config, bus *Bus, f *config.Flow, m *transform.Mapping, from ReplayFrom, log *slog.Logger, progress func(ReplayProgress)) (pipeline.FlowCounts, error) {
	flow := f.Name
	js := bus.JetStream()
	if err := pipeline.ResetFlowFrom(ctx, js, f.Name, f.From, from.Seq, from.Time); err != nil {
		return pipeline.FlowCounts{}, fmt.Errorf("replay %s: %w", flow, err)
	}
	pending := func() (uint64, error) {
		c, err := js.Consumer(ctx, pipeline.StreamName, f.Name)
		if err != nil {
			return 0, err
		}
		info := c.CachedInfo()
		return info.NumPending + uint64(info.NumAckPending), nil
	}
	total, err := pending()
	if err != nil {
		return pipeline.FlowCounts{}, fmt.Errorf("replay %s: %w", flow, err)
	}
	cipher, fieldHash, err := personal(ctx, cfg, m)
	if err != nil {
		return pipeline.FlowCounts{}, fmt.Errorf("replay %s: %w", flow, err)
	}
	sink, err := pgsink.New(pgsink.Config{Flow: f.Name, Source: f.From, System: f.To, DSN: cfg.Systems[f.To].DSN, Origin: f.Origin, Mapping: m, FieldHash: fieldHash, Logger: log, Slot: captureSlot(cfg, f.To)})
	if err != nil {
		return pipeline.FlowCounts{}, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	verify, err := loadVerifier(ctx, cfg, bus.dataDir, f.From)
	if err != nil {
		return pipeline.FlowCounts{}, fmt.Errorf("replay %s: %w", flow, err)
	}
	stats := &pipeline.FlowStats{}
	ap, err := pipeline.NewApplier(js, pipeline.ApplierConfig{Flow: f.Name, Source: f.From, Sink: sink, Batch: f.Batch,
		Verify: verify, Mapping: m, Target: f.To, MaxClockSkew: f.MaxClockSkew,
		MaxWaitAttempts: f.MaxWaitAttempts, LargeTxChunks: f.LargeTxChunks, PII: cipher, Logger: log, Stats: stats})
	if err != nil {
		return pipeline.FlowCounts{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ap.Run(rctx) }()
	defer func() { cancel(); <-done }()
	for {
		select {
		case <-ctx.Done():
			return stats.Snapshot(), ctx.Err()
		case err := <-done:
			done <- err
			switch {
			case ctx.Err() != nil:
				return stats.Snapshot(), ctx.Err()
			case err == nil:
				return stats.Snapshot(), fmt.Errorf("replay %s: flow stopped", flow)
			}
			return stats.Snapshot(), fmt.Errorf("replay %s: flow stopped: %w", flow, err)
		case <-time.After(500 * time.Millisecond):
		}
		p, err := pending()
		if err != nil {
			continue
		}
		s := stats.Snapshot()
		if progress != nil {
			progress(ReplayProgress{Total: total, Pending: p, Stats: s})
		}
		if p == 0 && s.State == "running" {
			return s, nil
		}
	}
}
