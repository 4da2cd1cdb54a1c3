package app

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// holdStore keeps a source's held entities in its database
// (duplex.held), where they survive restarts next to the slot they hold
// back.
type holdStore struct {
	system, dsn string
	mapping     *transform.Mapping
}

var _ pipeline.Holds = (*holdStore)(nil)

const heldDDL = `
CREATE SCHEMA IF NOT EXISTS duplex;
CREATE TABLE IF NOT EXISTS duplex.held (
	system    text NOT NULL,
	entity    text NOT NULL,
	since_lsn pg_lsn NOT NULL,
	reason    text NOT NULL,
	held_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (system, entity)
);`

func (h *holdStore) with(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		return fmt.Errorf("held entities of %s: connect: %w", h.system, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, heldDDL); err != nil {
		return fmt.Errorf("held entities of %s: %w", h.system, err)
	}
	return f(conn)
}

// Held implements pipeline.Holds: a hold is fixed when the entity's table
// has every mapped column again.
func (h *holdStore) Held(ctx context.Context) ([]pipeline.Hold, capture.LSN, error) {
	var out []pipeline.Hold
	var now capture.LSN
	err := h.with(ctx, func(conn *pgx.Conn) error {
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
			return err
		}
		var err error
		if now, err = capture.ParseLSN(lsn); err != nil {
			return err
		}
		rows, err := conn.Query(ctx, `SELECT entity, since_lsn::text, reason, held_at FROM duplex.held WHERE system = $1 ORDER BY since_lsn`, h.system)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var hd pipeline.Hold
			var since string
			if err := rows.Scan(&hd.Entity, &since, &hd.Reason, &hd.At); err != nil {
				return err
			}
			if hd.Since, err = capture.ParseLSN(since); err != nil {
				return err
			}
			out = append(out, hd)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for i := range out {
			fixed, err := h.fits(ctx, conn, out[i].Entity)
			if err != nil {
				return err
			}
			out[i].Fixed = fixed
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("held entities of %s: %w", h.system, err)
	}
	return out, now, nil
}

// fits says whether the entity's table has every column the mapping maps.
func (h *holdStore) fits(ctx context.Context, conn *pgx.Conn, entity string) (bool, error) {
	e := h.mapping.Entity(entity)
	if e == nil || e.Tables[h.system] == nil {
		return true, nil // no longer mapped: nothing to hold
	}
	t := e.Tables[h.system]
	rows, err := conn.Query(ctx, `SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, t.QualifiedTable())
	if err != nil {
		return false, err
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, err
	}
	for _, col := range t.MappedColumns() {
		if !slices.Contains(have, col) {
			return false, nil
		}
	}
	return true, nil
}

// Hold implements pipeline.Holds.
func (h *holdStore) Hold(ctx context.Context, hd pipeline.Hold) error {
	return h.with(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `INSERT INTO duplex.held (system, entity, since_lsn, reason, held_at) VALUES ($1, $2, $3::text::pg_lsn, $4, $5)
			ON CONFLICT (system, entity) DO NOTHING`, h.system, hd.Entity, hd.Since.String(), hd.Reason, hd.At)
		return err
	})
}

// Release implements pipeline.Holds.
func (h *holdStore) Release(ctx context.Context, entity string) error {
	return h.with(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `DELETE FROM duplex.held WHERE system = $1 AND entity = $2`, h.system, entity)
		return err
	})
}
