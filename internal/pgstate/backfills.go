package pgstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backfill is a backfill request and its progress, as kept in the source
// database's duplex.backfills. Status is requested, running, done or
// failed.
type Backfill struct {
	ID        int64
	Slot      string
	Table     string
	Filter    string
	ChunkRows int
	Status    string
	LastKey   *string
	Rows      int64
	Estimate  int64
	Error     string
	Requested time.Time
	Started   *time.Time
	Finished  *time.Time
}

// RequestBackfill records a requested backfill of table ("schema.table";
// rel is the same table quoted, as a regclass literal) for the capture of
// slot, with its estimated row count, and returns its id. filter is not
// checked here.
func RequestBackfill(ctx context.Context, q Querier, slot, table, rel, filter string, chunkRows int) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, `INSERT INTO duplex.backfills (slot, tbl, filter, chunk_rows, estimate)
		VALUES ($1, $2, $3, $4, (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $5::regclass)) RETURNING id`,
		slot, table, filter, chunkRows, rel).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record backfill request of %s: %w", table, err)
	}
	return id, nil
}

// BackfillByID reads a backfill's state; the error wraps pgx.ErrNoRows when
// there is no such backfill.
func BackfillByID(ctx context.Context, q Querier, id int64) (*Backfill, error) {
	var b Backfill
	err := q.QueryRow(ctx, `SELECT id, slot, tbl, filter, chunk_rows, status, last_key, rows, estimate, error, requested_at, started_at, finished_at
		FROM duplex.backfills WHERE id = $1`, id).Scan(&b.ID, &b.Slot, &b.Table, &b.Filter, &b.ChunkRows, &b.Status, &b.LastKey, &b.Rows,
		&b.Estimate, &b.Error, &b.Requested, &b.Started, &b.Finished)
	if err != nil {
		return nil, fmt.Errorf("backfill %d: %w", id, err)
	}
	return &b, nil
}

// PendingBackfill returns the id of slot's oldest backfill that is
// requested or running; ok is false when there is none.
func PendingBackfill(ctx context.Context, q Querier, slot string) (id int64, ok bool, err error) {
	err = q.QueryRow(ctx, `SELECT id FROM duplex.backfills WHERE slot = $1 AND status IN ('requested', 'running') ORDER BY id LIMIT 1`, slot).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read backfill requests of %s: %w", slot, err)
	}
	return id, true, nil
}

// StartBackfill marks a backfill running (keeping when it first started).
func StartBackfill(ctx context.Context, q Querier, id int64) error {
	if _, err := q.Exec(ctx, `UPDATE duplex.backfills SET status = 'running', started_at = coalesce(started_at, now()) WHERE id = $1`, id); err != nil {
		return fmt.Errorf("mark backfill %d running: %w", id, err)
	}
	return nil
}

// FailBackfill marks a backfill failed with the reason.
func FailBackfill(ctx context.Context, q Querier, id int64, reason string) error {
	if _, err := q.Exec(ctx, `UPDATE duplex.backfills SET status = 'failed', error = $2, finished_at = now() WHERE id = $1`, id, reason); err != nil {
		return fmt.Errorf("mark backfill %d failed: %w", id, err)
	}
	return nil
}

// BackfillProgress records that a backfill copied rows so far, up to
// lastKey; done marks it done.
func BackfillProgress(ctx context.Context, q Querier, id int64, lastKey string, rows int64, done bool) error {
	status := "running"
	if done {
		status = "done"
	}
	if _, err := q.Exec(ctx, `UPDATE duplex.backfills SET status = $2, last_key = $3, rows = $4,
		finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE id = $1`, id, status, lastKey, rows); err != nil {
		return fmt.Errorf("record progress of backfill %d: %w", id, err)
	}
	return nil
}
