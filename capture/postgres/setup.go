package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Ensure creates the publication and slot if absent, and adds missing
// tables to the publication. It records the slot it creates in
// duplex.slots and checks an existing one against that record
// (slotcheck.go): the error is a *SlotLostError when the slot was dropped,
// replaced, invalidated or belongs to another cluster.
func (s *Source) Ensure(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.DSN)
	if err != nil {
		return fmt.Errorf("capture %s: connect: %w", s.cfg.System, redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, s.cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	var missing []string
	for _, t := range s.cfg.Tables {
		in := false
		if exists {
			if in, err = publishes(ctx, conn, s.cfg.Publication, t); err != nil {
				return fmt.Errorf("capture %s: %w", s.cfg.System, err)
			}
		}
		if !in {
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
	if err := s.warnViaRoot(ctx, conn); err != nil {
		return err
	}
	st, err := readSlotState(ctx, conn, s.cfg.Slot)
	if err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	system, err := pgstate.SystemIdentifier(ctx, conn)
	if err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	rec, recorded, err := pgstate.ReadSlotRecord(ctx, conn, s.cfg.Slot)
	if err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	if recorded {
		oid, err := pgstate.DatabaseOID(ctx, conn)
		if err != nil {
			return fmt.Errorf("capture %s: %w", s.cfg.System, err)
		}
		if rec.DatabaseOID != oid {
			// This database was created anew and restored from a dump: the
			// record came with the dump and describes a slot of the
			// database it was dumped from. Changes made there after the
			// dump are not in this database either, so none can be
			// missed here: start from a slot of its own.
			s.log.Warn("duplex's record of the slot came with a restored dump of another database; recording this database's own slot",
				slog.String("slot", s.cfg.Slot), slog.Uint64("recorded_database_oid", uint64(rec.DatabaseOID)), slog.Uint64("database_oid", uint64(oid)))
			if _, err := pgstate.ForgetSlot(ctx, conn, s.cfg.Slot); err != nil {
				return fmt.Errorf("capture %s: %w", s.cfg.System, err)
			}
			recorded = false
		}
	}
	// An initial snapshot not yet complete copies every row again: the
	// slot it starts from need not be the one recorded.
	fresh := false
	if s.cfg.Snapshot == SnapshotInitial && s.snap == nil {
		done, err := pgstate.SnapshotDone(ctx, conn, s.cfg.Slot)
		if err != nil {
			return fmt.Errorf("capture %s: %w", s.cfg.System, err)
		}
		fresh = !done
		if !done && st.exists {
			// The initial snapshot was interrupted: its exported snapshot is
			// gone with the session that made it, so it starts over from a
			// new slot. What was already copied is applied again, harmlessly.
			s.log.Warn("initial snapshot did not complete; dropping the slot and starting it again")
			if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.cfg.Slot); err != nil {
				return fmt.Errorf("capture %s: drop slot %s of an interrupted snapshot: %w", s.cfg.System, s.cfg.Slot, err)
			}
			st = slotState{}
		}
	}
	if recorded && !fresh {
		if lost := checkSlot(rec, system, st); lost != nil {
			lost.System, lost.Flows = s.cfg.System, s.cfg.Flows
			return lost
		}
	}
	if !st.exists {
		if s.cfg.Snapshot == SnapshotInitial {
			// The snapshot's rows count as written just before the slot
			// existed, by the server's clock, so that every change after
			// the consistent point is newer than them.
			var before time.Time
			if err := conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&before); err != nil {
				return fmt.Errorf("capture %s: read server clock: %w", s.cfg.System, err)
			}
			if err := s.createWithSnapshot(ctx, before); err != nil {
				return err
			}
			return s.recordSlot(ctx, conn, s.snap.consistent)
		}
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, s.cfg.Slot).Scan(&lsn); err != nil {
			return fmt.Errorf("capture %s: create slot %s: %w", s.cfg.System, s.cfg.Slot, err)
		}
		created, err := capture.ParseLSN(lsn)
		if err != nil {
			return fmt.Errorf("capture %s: create slot %s: %w", s.cfg.System, s.cfg.Slot, err)
		}
		if err := s.recordSlot(ctx, conn, created); err != nil {
			return err
		}
		s.log.Info("created replication slot", slog.String("consistent_point", lsn))
		return nil
	}
	if !recorded {
		// A slot made by a duplex that did not record its slots, or one
		// that stopped between creating and recording it: adopted as it is.
		if err := s.recordSlot(ctx, conn, st.confirmed); err != nil {
			return err
		}
		s.log.Info("recorded the existing replication slot", slog.String("confirmed", st.confirmed.String()))
		return nil
	}
	s.mu.Lock()
	s.recorded = max(s.recorded, rec.ConfirmedLSN)
	s.mu.Unlock()
	return nil
}

// publishes says whether publication pub publishes every row of table
// ("schema.table"): it is FOR ALL TABLES, or the table or a partitioned
// table it is a partition of is a member (pg_publication_rel), or, from
// PostgreSQL 15, the schema of one of them is (FOR TABLES IN SCHEMA).
// pg_publication_tables is not asked: it lists the leaf partitions of a
// partitioned table (none while it has none) unless the publication
// publishes via the partition root.
func publishes(ctx context.Context, conn *pgx.Conn, pub, table string) (bool, error) {
	var in bool
	var version int
	if err := conn.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = $1 AND p.puballtables)
		OR EXISTS (SELECT 1 FROM pg_publication p JOIN pg_publication_rel r ON r.prpubid = p.oid
			WHERE p.pubname = $1 AND (r.prrelid = $2::regclass OR r.prrelid IN (SELECT relid FROM pg_partition_ancestors($2::regclass)))),
		current_setting('server_version_num')::int`, pub, quoteQualified(table)).Scan(&in, &version); err != nil {
		return false, fmt.Errorf("read publication %s for table %s: %w", pub, table, err)
	}
	if in || version < 150000 {
		return in, nil
	}
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication p JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid
		JOIN pg_class c ON c.relnamespace = pn.pnnspid
		WHERE p.pubname = $1 AND (c.oid = $2::regclass OR c.oid IN (SELECT relid FROM pg_partition_ancestors($2::regclass))))`,
		pub, quoteQualified(table)).Scan(&in); err != nil {
		return false, fmt.Errorf("read publication %s for table %s: %w", pub, table, err)
	}
	return in, nil
}

// warnViaRoot warns when the publication publishes via the partition root
// and a mapped table is partitioned: PostgreSQL then publishes no TRUNCATE
// of a single partition (pgoutput skips it), so duplex cannot see one.
func (s *Source) warnViaRoot(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_publication p, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 AND p.pubviaroot AND c.relkind = 'p' AND n.nspname || '.' || c.relname = ANY($2)`, s.cfg.Publication, s.cfg.Tables)
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	if len(tables) > 0 {
		s.log.Warn("the publication publishes via the partition root: PostgreSQL does not publish a TRUNCATE of a single partition of these tables, so the other side keeps those rows (duplex verify lists them); a publication without publish_via_partition_root publishes it",
			slog.String("publication", s.cfg.Publication), slog.Any("tables", tables))
	}
	return nil
}

// recordSlot records that duplex created (or adopted) the slot, at
// created, and starts the session's record of confirmed positions there.
func (s *Source) recordSlot(ctx context.Context, q pgstate.Querier, created capture.LSN) error {
	if err := pgstate.RecordSlot(ctx, q, s.cfg.Slot, created); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.mu.Lock()
	s.recorded, s.ownEnd, s.recordedAt = created, 0, time.Time{}
	s.mu.Unlock()
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

// quoteIdent quotes one identifier for SQL and for replication commands
// (CREATE_REPLICATION_SLOT, START_REPLICATION), whose grammar takes
// quoted identifiers too: "Duplex""Pub".
func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes a string constant, doubling the single quotes in it.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// publicationNamesOption is the value of pgoutput's publication_names
// option for one publication. pgoutput splits the option as a list of
// identifiers (SplitIdentifierString in pgoutput.c), folding unquoted
// names to lower case, so the name is quoted as an identifier first and
// then as a string constant: '"DuplexPub"'.
func publicationNamesOption(pub string) string { return quoteLiteral(quoteIdent(pub)) }

// quoteQualified quotes "schema.table" (split at the first dot, as the
// mapping splits it) as "schema"."table".
func quoteQualified(t string) string {
	if i := strings.IndexByte(t, '.'); i >= 0 {
		return pgx.Identifier{t[:i], t[i+1:]}.Sanitize()
	}
	return pgx.Identifier{t}.Sanitize()
}
