package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Ensure creates the publication and slot if absent, and adds missing
// tables to the publication.
func (s *Source) Ensure(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.DSN)
	if err != nil {
		return fmt.Errorf("capture %s: connect: %w", s.cfg.System, redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, s.cfg.Publication)
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, s.cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	var missing []string
	for _, t := range s.cfg.Tables {
		if !slices.Contains(have, t) {
			missing = append(missing, quoteQualified(t))
		}
	}
	switch {
	case !exists:
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgx.Identifier{s.cfg.Publication}.Sanitize(), strings.Join(missing, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("capture %s: create publication %s: %w", s.cfg.System, s.cfg.Publication, err)
		}
		s.log.Info("created publication", slog.String("publication", s.cfg.Publication), slog.Any("tables", s.cfg.Tables))
	case len(missing) > 0:
		sql := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pgx.Identifier{s.cfg.Publication}.Sanitize(), strings.Join(missing, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("capture %s: add tables to publication %s: %w", s.cfg.System, s.cfg.Publication, err)
		}
		s.log.Info("added tables to publication", slog.String("publication", s.cfg.Publication), slog.Any("tables", missing))
	}
	var slotExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, s.cfg.Slot).Scan(&slotExists); err != nil {
		return fmt.Errorf("capture %s: read slot %s: %w", s.cfg.System, s.cfg.Slot, err)
	}
	if slotExists && s.cfg.Snapshot == SnapshotInitial && s.snap == nil {
		done, err := pgstate.SnapshotDone(ctx, conn, s.cfg.Slot)
		if err != nil {
			return fmt.Errorf("capture %s: %w", s.cfg.System, err)
		}
		if !done {
			// The initial snapshot was interrupted: its exported snapshot is
			// gone with the session that made it, so it starts over from a
			// new slot. What was already copied is applied again, harmlessly.
			s.log.Warn("initial snapshot did not complete; dropping the slot and starting it again")
			if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.cfg.Slot); err != nil {
				return fmt.Errorf("capture %s: drop slot %s of an interrupted snapshot: %w", s.cfg.System, s.cfg.Slot, err)
			}
			slotExists = false
		}
	}
	if !slotExists {
		if s.cfg.Snapshot == SnapshotInitial {
			// The snapshot's rows count as written just before the slot
			// existed, by the server's clock, so that every change after
			// the consistent point is newer than them.
			var before time.Time
			if err := conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&before); err != nil {
				return fmt.Errorf("capture %s: read server clock: %w", s.cfg.System, err)
			}
			return s.createWithSnapshot(ctx, before)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s.cfg.Slot); err != nil {
			return fmt.Errorf("capture %s: create slot %s: %w", s.cfg.System, s.cfg.Slot, err)
		}
		s.log.Info("created replication slot")
	}
	return nil
}

// replicationConfig is the connection configuration of a replication
// session.
func (s *Source) replicationConfig() (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("capture %s: parse dsn: %w", s.cfg.System, redact(err))
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "duplex-" + s.cfg.System
	cfg.RuntimeParams["DateStyle"] = "ISO, YMD"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["IntervalStyle"] = "iso_8601"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	return cfg, nil
}

func quoteQualified(t string) string {
	if i := strings.IndexByte(t, '.'); i >= 0 {
		return pgx.Identifier{t[:i], t[i+1:]}.Sanitize()
	}
	return pgx.Identifier{t}.Sanitize()
}
