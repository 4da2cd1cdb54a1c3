package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// Snapshot modes.
const (
	SnapshotInitial = "initial"
	SnapshotNever   = "never"
)

// pendingSnapshot is a slot just created with an exported snapshot; the
// replication session that created it must stay open until the copy ran.
type pendingSnapshot struct {
	conn       *pgconn.PgConn
	name       string
	consistent capture.LSN
	at         time.Time
}

func (p *pendingSnapshot) close() {
	if p.conn != nil {
		_ = p.conn.Close(context.Background())
	}
}

// SnapshotProgress is where an initial snapshot is.
type SnapshotProgress struct {
	Running  bool
	Table    string
	Rows     int64 // copied of Table
	Estimate int64 // pg_class.reltuples of Table
	Total    int64 // copied of all tables
	Done     bool
}

// Progress returns the initial snapshot's progress.
func (s *Source) Progress() SnapshotProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progress
}

// createWithSnapshot creates the slot on a replication session and keeps
// the session, whose exported snapshot shows the database exactly at the
// slot's consistent point.
func (s *Source) createWithSnapshot(ctx context.Context, before time.Time) error {
	cfg, err := s.replicationConfig()
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("capture %s: connect for replication: %w", s.cfg.System, redact(err))
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, quoteIdent(s.cfg.Slot), "pgoutput", pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		conn.Close(ctx)
		return fmt.Errorf("capture %s: create slot %s with a snapshot: %w", s.cfg.System, s.cfg.Slot, err)
	}
	lsn, err := capture.ParseLSN(res.ConsistentPoint)
	if err != nil {
		conn.Close(ctx)
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.snap = &pendingSnapshot{conn: conn, name: res.SnapshotName, consistent: lsn, at: before.UTC()}
	s.log.Info("created replication slot with an exported snapshot", slog.String("consistent_point", res.ConsistentPoint), slog.String("snapshot", res.SnapshotName))
	return nil
}

// runSnapshot copies every published table as it was at the slot's
// consistent point, in chunks of keyset-paginated rows handed on as
// inserts, waits until all of it is durable, and records that the
// snapshot completed. Changes after the consistent point come from the
// slot, so nothing is missed or seen twice in effect.
func (s *Source) runSnapshot(ctx context.Context, h capture.Handler) error {
	conn, err := pgx.Connect(ctx, s.cfg.DSN)
	if err != nil {
		return fmt.Errorf("capture %s: snapshot: connect: %w", s.cfg.System, redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("capture %s: snapshot: begin: %w", s.cfg.System, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(s.snap.name)); err != nil {
		return fmt.Errorf("capture %s: snapshot: use exported snapshot: %w", s.cfg.System, err)
	}
	info := capture.TxInfo{System: s.cfg.System, CommitLSN: s.snap.consistent, EndLSN: s.snap.consistent, CommitTime: s.snap.at, Snapshot: true}
	s.setProgress(func(p *SnapshotProgress) { *p = SnapshotProgress{Running: true} })
	chunk, total := 0, int64(0)
	started := time.Now()
	for _, table := range s.cfg.Tables {
		key := s.cfg.Keys[table]
		if key == "" {
			return fmt.Errorf("capture %s: snapshot of %s: no key column", s.cfg.System, table)
		}
		var keyType string
		var estimate int64
		if err := tx.QueryRow(ctx, `SELECT format_type(a.atttypid, NULL), greatest(c.reltuples, 0)::bigint FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
			WHERE a.attrelid = $1::regclass AND a.attname = $2`, quoteQualified(table), key).Scan(&keyType, &estimate); err != nil {
			return fmt.Errorf("capture %s: snapshot of %s: key column %s: %w", s.cfg.System, table, key, err)
		}
		s.setProgress(func(p *SnapshotProgress) { p.Table, p.Rows, p.Estimate = table, 0, estimate })
		qk := pgx.Identifier{key}.Sanitize()
		first := fmt.Sprintf("SELECT * FROM %s ORDER BY %s LIMIT %d", quoteQualified(table), qk, s.cfg.SnapshotChunk)
		next := fmt.Sprintf("SELECT * FROM %s WHERE %s > $1::%s ORDER BY %s LIMIT %d", quoteQualified(table), qk, keyType, qk, s.cfg.SnapshotChunk)
		var last *string
		var rows int64
		tableStart, lastLog := time.Now(), time.Now()
		for {
			var r pgx.Rows
			if last == nil {
				r, err = tx.Query(ctx, first, pgx.QueryResultFormats{pgx.TextFormatCode})
			} else {
				r, err = tx.Query(ctx, next, pgx.QueryResultFormats{pgx.TextFormatCode}, *last)
			}
			if err != nil {
				return fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
			}
			changes, lastKey, err := s.readChunk(r, table, key)
			if err != nil {
				return err
			}
			if len(changes) == 0 {
				break
			}
			last = &lastKey
			if err := h.Chunk(ctx, &capture.Chunk{Tx: info, Index: chunk, Last: true, Changes: changes}); err != nil {
				return err
			}
			chunk++
			rows += int64(len(changes))
			total += int64(len(changes))
			s.setProgress(func(p *SnapshotProgress) { p.Rows, p.Total = rows, total })
			if time.Since(lastLog) > 2*time.Second {
				lastLog = time.Now()
				// Integer arithmetic: rows per second, and the time the
				// rest takes at the rate so far.
				elapsed := time.Since(tableStart)
				rate := rows * int64(time.Second) / max(int64(elapsed), 1)
				eta := time.Duration(0)
				if estimate > rows && rate > 0 {
					eta = time.Duration((estimate-rows)/rate) * time.Second
				}
				s.log.Info("snapshot progress", slog.String("table", table), slog.Int64("rows", rows), slog.Int64("estimate", estimate),
					slog.Int64("rows_per_sec", rate), slog.Duration("eta", eta.Round(time.Second)))
			}
			if len(changes) < s.cfg.SnapshotChunk {
				break
			}
		}
		s.log.Info("snapshot of table done", slog.String("table", table), slog.Int64("rows", rows), slog.Duration("took", time.Since(tableStart).Round(time.Millisecond)))
	}
	_ = tx.Rollback(ctx)
	// Everything copied must be durable before the snapshot counts as
	// done: a refused publish (or the end of ctx) leaves it unrecorded, so
	// the next session copies again.
	if err := h.Drain(ctx); err != nil {
		return fmt.Errorf("capture %s: snapshot of %d rows not recorded complete: %w", s.cfg.System, total, err)
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("capture %s: record snapshot: %w", s.cfg.System, err)
	}
	if err := pgstate.RecordSnapshot(ctx, conn, s.cfg.Slot, s.snap.consistent, total); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.setProgress(func(p *SnapshotProgress) { p.Running, p.Done = false, true })
	s.log.Info("initial snapshot complete", slog.Int64("rows", total), slog.Duration("took", time.Since(started).Round(time.Millisecond)))
	return nil
}

// readChunk decodes a page of rows as insert changes and returns the text
// of the last key.
func (s *Source) readChunk(r pgx.Rows, table, key string) ([]capture.Change, string, error) {
	defer r.Close()
	dec := NewDecoder()
	schema, name := splitTable(table)
	var out []capture.Change
	var lastKey string
	for r.Next() {
		fds := r.FieldDescriptions()
		raw := r.RawValues()
		row := make(capture.Row, len(fds))
		for i, fd := range fds {
			if raw[i] == nil {
				row[fd.Name] = nil
				continue
			}
			v, err := dec.Decode(fd.DataTypeOID, raw[i])
			if err != nil {
				return nil, "", fmt.Errorf("capture %s: snapshot of %s column %s: %w", s.cfg.System, table, fd.Name, err)
			}
			row[fd.Name] = v
			if fd.Name == key {
				lastKey = string(raw[i])
			}
		}
		out = append(out, capture.Change{Schema: schema, Table: name, Op: capture.Insert, New: row})
	}
	if err := r.Err(); err != nil {
		return nil, "", fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
	}
	return out, lastKey, nil
}

func (s *Source) setProgress(f func(p *SnapshotProgress)) {
	s.mu.Lock()
	f(&s.progress)
	s.mu.Unlock()
}

func splitTable(t string) (string, string) {
	for i := 0; i < len(t); i++ {
		if t[i] == '.' {
			return t[:i], t[i+1:]
		}
	}
	return "public", t
}
