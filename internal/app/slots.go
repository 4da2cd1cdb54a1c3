package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
)

// slotWatch polls the slots of the sources, keeps the last reading, and
// warns when a slot retains more WAL than configured.
type slotWatch struct {
	mu    sync.Mutex
	last  map[string]pgcapture.SlotLag
	warns map[string]time.Time
}

// Slots returns the last reading of each source's slot.
func (a *App) Slots() map[string]pgcapture.SlotLag {
	a.slots.mu.Lock()
	defer a.slots.mu.Unlock()
	out := make(map[string]pgcapture.SlotLag, len(a.slots.last))
	for k, v := range a.slots.last {
		out[k] = v
	}
	return out
}

func (a *App) watchSlots(ctx context.Context, every time.Duration) {
	cfg := a.opts.Config
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			_ = c.Close(context.WithoutCancel(ctx))
		}
	}()
	lastInfo := time.Time{}
	for {
		for _, name := range cfg.Sources() {
			sys := cfg.Systems[name]
			l, err := func() (pgcapture.SlotLag, error) {
				c := conns[name]
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgx.Connect(ctx, sys.DSN); err != nil {
						return pgcapture.SlotLag{System: name, Slot: sys.Slot, At: time.Now().UTC()}, fmt.Errorf("slot %s of %s: connect: %w", sys.Slot, name, err)
					}
					conns[name] = c
				}
				return pgcapture.ReadSlot(ctx, c, name, sys.Slot)
			}()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				l.Error = err.Error()
			}
			a.slots.mu.Lock()
			a.slots.last[name] = l
			warned := a.slots.warns[name]
			a.slots.mu.Unlock()
			limit := sys.WALWarnBytes
			if err == nil && limit > 0 && l.RetainedBytes > limit && time.Since(warned) > 5*time.Minute {
				a.log.Warn("replication slot retains more WAL than wal_warn_bytes: the source keeps this WAL until duplex confirms it",
					slog.String("source", name), slog.String("slot", sys.Slot), slog.Int64("retained_bytes", l.RetainedBytes),
					slog.Int64("wal_warn_bytes", limit), slog.Int64("behind_bytes", l.BehindBytes), slog.Bool("active", l.Active))
				a.slots.mu.Lock()
				a.slots.warns[name] = time.Now()
				a.slots.mu.Unlock()
			}
		}
		if time.Since(lastInfo) > time.Minute {
			lastInfo = time.Now()
			for name, l := range a.Slots() {
				if l.Error == "" {
					a.log.Info("replication slot", slog.String("source", name), slog.String("slot", l.Slot),
						slog.Int64("retained_bytes", l.RetainedBytes), slog.Int64("behind_bytes", l.BehindBytes))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
