package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// RetryOutcome says what a retried dead letter did.
type RetryOutcome struct {
	Seq     uint64
	Applied bool
	// Fields written; Superseded lists the fields left out because a newer
	// event of the same key wrote them (or "row deleted").
	Fields     []string
	Superseded []string
}

func (o RetryOutcome) String() string {
	switch {
	case o.Applied && len(o.Superseded) > 0:
		return fmt.Sprintf("dead letter %d applied (%s); left to newer events: %s", o.Seq, strings.Join(o.Fields, ", "), strings.Join(o.Superseded, ", "))
	case o.Applied:
		return fmt.Sprintf("dead letter %d applied (%s)", o.Seq, strings.Join(o.Fields, ", "))
	default:
		return fmt.Sprintf("dead letter %d superseded by newer events (%s): nothing to apply; removed", o.Seq, strings.Join(o.Superseded, ", "))
	}
}

// RetryDeadLetter applies a dead-lettered event again, after the data or
// the mapping was fixed, in order with respect to newer events of the same
// key: what newer events wrote (or a newer delete) wins, only the rest is
// written. On success the dead letter is removed from DUPLEX_DLQ. The
// target's applied position is not moved.
func RetryDeadLetter(ctx context.Context, cfg *config.Config, bus *Bus, seq uint64, log *slog.Logger) (RetryOutcome, error) {
	out := RetryOutcome{Seq: seq}
	js := bus.JetStream()
	sd, err := pipeline.GetDeadLetter(ctx, js, seq)
	if err != nil {
		return out, err
	}
	dl := &sd.DeadLetter
	if dl.Event == nil {
		return out, fmt.Errorf("dead letter %d (%s, stage %s) holds a captured change, not an event: fix the row at the source (an update carries it again), then drop the dead letter", seq, dl.Flow, dl.Stage)
	}
	f := cfg.Flow(dl.Flow)
	if f == nil {
		return out, fmt.Errorf("dead letter %d: flow %s is not configured", seq, dl.Flow)
	}
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return out, err
	}
	deleted, newer, err := pipeline.NewerChanges(ctx, js, dl)
	if err != nil {
		return out, fmt.Errorf("dead letter %d: read newer events: %w", seq, err)
	}
	ev := *dl.Event
	ev.Redo = true
	e := m.Entity(ev.Entity)
	if e == nil {
		return out, fmt.Errorf("dead letter %d: entity %s is not in the mapping", seq, ev.Entity)
	}
	if deleted {
		out.Superseded = []string{"row deleted by a newer event"}
		return out, pipeline.DropDeadLetter(ctx, js, seq)
	}
	if ev.Op == transform.OpUpsert {
		data := map[string]any{}
		for k, v := range ev.Data {
			switch {
			case k == e.Key:
				data[k] = v
			case newer[k]:
				out.Superseded = append(out.Superseded, k)
			default:
				data[k] = v
				out.Fields = append(out.Fields, k)
			}
		}
		sort.Strings(out.Fields)
		sort.Strings(out.Superseded)
		if len(out.Fields) == 0 && len(out.Superseded) > 0 {
			return out, pipeline.DropDeadLetter(ctx, js, seq)
		}
		ev.Data = data
	} else {
		out.Fields = []string{string(ev.Op)}
	}
	sink, err := pgsink.New(pgsink.Config{Flow: f.Name, Source: f.From, System: f.To, DSN: cfg.Systems[f.To].DSN, Origin: f.ToolOrigin(), Mapping: m, Logger: log})
	if err != nil {
		return out, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	tx := &transform.Tx{Version: transform.SchemaVersion, Source: ev.Source, CommitLSN: ev.Pos.LSN, CommitTime: ev.Pos.CommitTime, Xid: ev.Pos.Xid,
		Last: true, Redo: true, Events: []transform.Event{ev}}
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
