package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SlotLag is where a source's replication slot stands against the server's
// current WAL position, as pg_replication_slots reports it.
type SlotLag struct {
	System string `json:"system"`
	Slot   string `json:"slot"`
	Active bool   `json:"active"`
	// BehindBytes is the WAL between the server's current position and
	// the slot's confirmed_flush_lsn: what duplex has not made durable yet.
	BehindBytes int64 `json:"wal_behind_bytes"`
	// RetainedBytes is the WAL the server keeps for the slot (from its
	// restart_lsn).
	RetainedBytes int64     `json:"wal_retained_bytes"`
	ConfirmedLSN  string    `json:"confirmed_lsn"`
	CurrentLSN    string    `json:"current_lsn"`
	At            time.Time `json:"at"`
	Error         string    `json:"error,omitempty"`
}

// ReadSlot reads a slot's confirmed and restart positions against the
// server's current WAL position (pg_current_wal_lsn). The error wraps
// pgx.ErrNoRows when the slot does not exist.
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
