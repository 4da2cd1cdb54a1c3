package app

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// holdStore keeps a source's held entities in its database
// (duplex.held, through pgstate), where they survive restarts next to the
// slot they hold back, and how far released holds were read again
// (duplex.held_released).
type holdStore struct {
	system, dsn string
	mapping     *transform.Mapping
}

var _ pipeline.Holds = (*holdStore)(nil)

func (h *holdStore) with(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		return fmt.Errorf("held entities of %s: connect: %w", h.system, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("held entities of %s: %w", h.system, err)
	}
	return f(conn)
}

// Held implements pipeline.Holds: a hold is fixed when the entity's table
// has every mapped column again.
func (h *holdStore) Held(ctx context.Context) (pipeline.Holding, error) {
	var out pipeline.Holding
	err := h.with(ctx, func(conn *pgx.Conn) error {
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
			return err
		}
		var err error
		if out.Now, err = capture.ParseLSN(lsn); err != nil {
			return err
		}
		held, err := pgstate.Holds(ctx, conn, h.system)
		if err != nil {
			return err
		}
		for _, hd := range held {
			fixed, err := h.fits(ctx, conn, hd.Entity)
			if err != nil {
				return err
			}
			out.Holds = append(out.Holds, pipeline.Hold{Entity: hd.Entity, Since: hd.Since, Reason: hd.Reason, At: hd.At, Fixed: fixed})
		}
		out.Redone, err = pgstate.Redone(ctx, conn, h.system)
		return err
	})
	if err != nil {
		return pipeline.Holding{}, fmt.Errorf("held entities of %s: %w", h.system, err)
	}
	return out, nil
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
		return pgstate.AddHold(ctx, conn, h.system, pgstate.Hold{Entity: hd.Entity, Since: hd.Since, Reason: hd.Reason, At: hd.At})
	})
}

// Release implements pipeline.Holds.
func (h *holdStore) Release(ctx context.Context, entity string, redoneUntil capture.LSN) error {
	return h.with(ctx, func(conn *pgx.Conn) error {
		return pgstate.ReleaseHold(ctx, conn, h.system, entity, redoneUntil)
	})
}
