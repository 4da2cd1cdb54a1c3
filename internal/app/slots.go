package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// SlotLag is where a source's replication slot stands.
type SlotLag struct {
	System string `json:"system"`
	Slot   string `json:"slot"`
	Active bool   `json:"active"`
	// BehindBytes is the WAL between the server's current position and
	// the slot's confirmed position: what duplex has not made durable yet.
	BehindBytes int64 `json:"wal_behind_bytes"`
	// RetainedBytes is the WAL the server keeps for the slot (from its
	// restart position).
	RetainedBytes int64     `json:"wal_retained_bytes"`
	ConfirmedLSN  string    `json:"confirmed_lsn"`
	CurrentLSN    string    `json:"current_lsn"`
	At            time.Time `json:"at"`
	Error         string    `json:"error,omitempty"`
}

// ReadSlot reads a slot's position against the server's current WAL
// position.
func ReadSlot(ctx context.Context, conn *pgx.Conn, system, slot string) (SlotLag, error) {
	l := SlotLag{System: system, Slot: slot, At: time.Now().UTC()}
	err := conn.QueryRow(ctx, `SELECT active, coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0),
			coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0), coalesce(confirmed_flush_lsn::text, ''), pg_current_wal_lsn()::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&l.Active, &l.BehindBytes, &l.RetainedBytes, &l.ConfirmedLSN, &l.CurrentLSN)
	if err != nil {
		return l, fmt.Errorf("slot %s of %s: %w", slot, system, err)
	}
	return l, nil
}

// slotWatch polls the slots of the sources, keeps the last reading, and
// warns when a slot retains more WAL than configured.
type slotWatch struct {
	mu    sync.Mutex
	last  map[string]SlotLag
	warns map[string]time.Time
}

// Slots returns the last reading of each source's slot.
func (a *App) Slots() map[string]SlotLag {
	a.slots.mu.Lock()
	defer a.slots.mu.Unlock()
	out := make(map[string]SlotLag, len(a.slots.last))
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
			l, err := func() (SlotLag, error) {
				c := conns[name]
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgx.Connect(ctx, sys.DSN); err != nil {
						return SlotLag{System: name, Slot: sys.Slot, At: time.Now().UTC()}, fmt.Errorf("slot %s of %s: connect: %w", sys.Slot, name, err)
					}
					conns[name] = c
				}
				return ReadSlot(ctx, c, name, sys.Slot)
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
