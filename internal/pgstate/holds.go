package pgstate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
)

// Hold is an entity a source holds back (duplex.held): its changes from
// Since on are read again once its table fits the mapping.
type Hold struct {
	Entity string
	Since  capture.LSN
	Reason string
	At     time.Time
}

// Holds returns system's holds, oldest position first.
func Holds(ctx context.Context, q Querier, system string) ([]Hold, error) {
	rows, err := q.Query(ctx, `SELECT entity, since_lsn::text, reason, held_at FROM duplex.held WHERE system = $1 ORDER BY since_lsn`, system)
	if err != nil {
		return nil, fmt.Errorf("read holds: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Hold, error) {
		var h Hold
		var since string
		if err := r.Scan(&h.Entity, &since, &h.Reason, &h.At); err != nil {
			return h, err
		}
		var err error
		h.Since, err = capture.ParseLSN(since)
		return h, err
	})
	if err != nil {
		return nil, fmt.Errorf("read holds: %w", err)
	}
	return out, nil
}

// AddHold records h for system; an entity already held keeps its first
// hold.
func AddHold(ctx context.Context, q Querier, system string, h Hold) error {
	if _, err := q.Exec(ctx, `INSERT INTO duplex.held (system, entity, since_lsn, reason, held_at) VALUES ($1, $2, $3::text::pg_lsn, $4, $5)
		ON CONFLICT (system, entity) DO NOTHING`, system, h.Entity, h.Since.String(), h.Reason, h.At); err != nil {
		return fmt.Errorf("record hold of %s: %w", h.Entity, err)
	}
	return nil
}

// ReleaseHold removes system's hold of entity, if any, and records in the
// same statement that its changes up to redoneUntil were read again and
// published (duplex.held_released; the highest such position per entity
// is kept). Without a hold it does nothing.
func ReleaseHold(ctx context.Context, q Querier, system, entity string, redoneUntil capture.LSN) error {
	if _, err := q.Exec(ctx, `WITH released AS (DELETE FROM duplex.held WHERE system = $1 AND entity = $2 RETURNING since_lsn)
		INSERT INTO duplex.held_released AS r (system, entity, since_lsn, redone_until) SELECT $1, $2, since_lsn, $3::text::pg_lsn FROM released
		ON CONFLICT (system, entity) DO UPDATE SET since_lsn = EXCLUDED.since_lsn,
			redone_until = greatest(r.redone_until, EXCLUDED.redone_until), released_at = now()`,
		system, entity, redoneUntil.String()); err != nil {
		return fmt.Errorf("release hold of %s: %w", entity, err)
	}
	return nil
}

// Redone returns, per entity of system whose hold was released, the
// highest position up to which its held changes were read again: WAL at
// or below it was handled, whatever shape of the table pgoutput decodes
// it with when a slot sends it again.
func Redone(ctx context.Context, q Querier, system string) (map[string]capture.LSN, error) {
	rows, err := q.Query(ctx, `SELECT entity, redone_until::text FROM duplex.held_released WHERE system = $1`, system)
	if err != nil {
		return nil, fmt.Errorf("read released holds: %w", err)
	}
	out := map[string]capture.LSN{}
	var entity, until string
	_, err = pgx.ForEachRow(rows, []any{&entity, &until}, func() error {
		lsn, err := capture.ParseLSN(until)
		out[entity] = lsn
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read released holds: %w", err)
	}
	return out, nil
}
