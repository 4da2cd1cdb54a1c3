package pgstate

import (
	"context"
	"fmt"

	"github.com/duplex-cdc/duplex/capture"
)

// SnapshotDone says whether the initial snapshot of slot completed
// (duplex.snapshots).
func SnapshotDone(ctx context.Context, q Querier, slot string) (bool, error) {
	var done bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM duplex.snapshots WHERE slot = $1)`, slot).Scan(&done); err != nil {
		return false, fmt.Errorf("read snapshot state of %s: %w", slot, err)
	}
	return done, nil
}

// RecordSnapshot records that the initial snapshot of slot completed: rows
// copied as of its consistent point.
func RecordSnapshot(ctx context.Context, q Querier, slot string, consistent capture.LSN, rows int64) error {
	if _, err := q.Exec(ctx, `INSERT INTO duplex.snapshots (slot, consistent_lsn, rows) VALUES ($1, $2::text::pg_lsn, $3)
		ON CONFLICT (slot) DO UPDATE SET consistent_lsn = EXCLUDED.consistent_lsn, rows = EXCLUDED.rows, completed_at = now()`,
		slot, consistent.String(), rows); err != nil {
		return fmt.Errorf("record snapshot of %s: %w", slot, err)
	}
	return nil
}
