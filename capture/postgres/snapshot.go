package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
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
	// The chunks carry a snapshot this transaction exports (the same one
	// it imported): it stays importable exactly while the copy runs,
	// whatever becomes of the slot's replication session, which sits idle
	// in a transaction meanwhile (idle_in_transaction_session_timeout ends
	// it) and whose own export is importable only while it lives.
	var name string
	if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&name); err != nil {
		return fmt.Errorf("capture %s: snapshot: export for the chunks: %w", s.cfg.System, err)
	}
	tracksCommits, err := tracksCommitTimes(ctx, tx)
	if err != nil {
		return fmt.Errorf("capture %s: snapshot: %w", s.cfg.System, err)
	}
	info := capture.TxInfo{System: s.cfg.System, CommitLSN: s.snap.consistent, EndLSN: s.snap.consistent, CommitTime: s.snap.at, Snapshot: true, SnapshotName: name}
	s.setProgress(func(p *SnapshotProgress) { *p = SnapshotProgress{Running: true} })
	chunk, total := 0, int64(0)
	started := time.Now()
	for _, table := range s.cfg.Tables {
		key := s.cfg.Keys[table]
		if len(key) == 0 {
			return fmt.Errorf("capture %s: snapshot of %s: no key column", s.cfg.System, table)
		}
		var estimate int64
		if err := tx.QueryRow(ctx, `SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass`, quoteQualified(table)).Scan(&estimate); err != nil {
			return fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
		}
		withTime := s.cfg.CommitTimes[table] && tracksCommits
		first, next, err := keysetQueries(ctx, tx, table, key, "", s.cfg.SnapshotChunk, withTime)
		if err != nil {
			return fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
		}
		s.setProgress(func(p *SnapshotProgress) { p.Table, p.Rows, p.Estimate = table, 0, estimate })
		var last *string
		var rows int64
		tableStart, lastLog := time.Now(), time.Now()
		for {
			var r pgx.Rows
			if last == nil {
				r, err = tx.Query(ctx, first, pgx.QueryResultFormats{pgx.TextFormatCode})
			} else {
				var args []any
				if args, err = keyArgs(*last, len(key)); err == nil {
					r, err = tx.Query(ctx, next, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
				}
			}
			if err != nil {
				return fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
			}
			changes, lastKey, err := s.readChunk(r, table, key, withTime)
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
// of the last row's key (its key columns' text joined by capture.JoinKey).
func (s *Source) readChunk(r pgx.Rows, table string, key []string, withTime bool) ([]capture.Change, string, error) {
	defer r.Close()
	dec := NewDecoder()
	schema, name := splitTable(table)
	var out []capture.Change
	var lastKey string
	parts := make([]string, len(key))
	for r.Next() {
		fds := r.FieldDescriptions()
		raw := r.RawValues()
		var committed *time.Time
		if withTime {
			// keysetQueries put the commit time of the row's last write
			// after its columns.
			n := len(fds) - 1
			if raw[n] != nil {
				v, err := dec.Decode(fds[n].DataTypeOID, raw[n])
				if err != nil {
					return nil, "", fmt.Errorf("capture %s: snapshot of %s: commit time: %w", s.cfg.System, table, err)
				}
				t, ok := v.(time.Time)
				if !ok {
					return nil, "", fmt.Errorf("capture %s: snapshot of %s: commit time: %T", s.cfg.System, table, v)
				}
				t = t.UTC()
				committed = &t
			}
			fds, raw = fds[:n], raw[:n]
		}
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
			if k := slices.Index(key, fd.Name); k >= 0 {
				parts[k] = string(raw[i])
			}
		}
		lastKey = capture.JoinKey(parts)
		out = append(out, capture.Change{Schema: schema, Table: name, Op: capture.Insert, New: row, RowCommitTime: committed})
	}
	if err := r.Err(); err != nil {
		return nil, "", fmt.Errorf("capture %s: snapshot of %s: %w", s.cfg.System, table, err)
	}
	return out, lastKey, nil
}

// keysetQueries returns the queries of the first and of the next pages of
// a table in key order: "ORDER BY a, b LIMIT n", and "WHERE (a, b) >
// ($1::ta, $2::tb)" (a row comparison, in the order of the key columns'
// btree operators, as ORDER BY sorts) for the page after a key. cond, when
// set, is a further filter (SQL). With commitTime each row is followed by
// the commit time of its last write (NULL when unknown).
func keysetQueries(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, table string, key []string, cond string, limit int, commitTime bool) (first, next string, err error) {
	r, err := q.Query(ctx, `SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attname = ANY($2) AND attnum > 0 AND NOT attisdropped`, quoteQualified(table), key)
	if err != nil {
		return "", "", err
	}
	types := map[string]string{}
	for r.Next() {
		var n, t string
		if err := r.Scan(&n, &t); err != nil {
			r.Close()
			return "", "", err
		}
		types[n] = t
	}
	if err := r.Err(); err != nil {
		return "", "", err
	}
	var cols, params []string
	for i, k := range key {
		if types[k] == "" {
			return "", "", fmt.Errorf("key column %s does not exist", k)
		}
		cols = append(cols, pgx.Identifier{k}.Sanitize())
		params = append(params, fmt.Sprintf("$%d::%s", i+1, types[k]))
	}
	order := strings.Join(cols, ", ")
	where := fmt.Sprintf("(%s) > (%s)", order, strings.Join(params, ", "))
	if len(key) == 1 {
		where = cols[0] + " > " + params[0]
	}
	sel := "*"
	if commitTime {
		// Last, after the row's columns (readChunk takes it from there).
		sel = "*, pg_xact_commit_timestamp(xmin)"
	}
	first = fmt.Sprintf("SELECT %s FROM %s WHERE true%s ORDER BY %s LIMIT %d", sel, quoteQualified(table), cond, order, limit)
	next = fmt.Sprintf("SELECT %s FROM %s WHERE %s%s ORDER BY %s LIMIT %d", sel, quoteQualified(table), where, cond, order, limit)
	return first, next, nil
}

// keyArgs splits the text of a last key (see readChunk) into the query
// arguments of keysetQueries' next page.
func keyArgs(last string, n int) ([]any, error) {
	parts, err := capture.SplitKey(last, n)
	if err != nil {
		return nil, err
	}
	args := make([]any, n)
	for i, p := range parts {
		args[i] = p
	}
	return args, nil
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

// tracksCommitTimes says whether the database records commit times
// (track_commit_timestamp): pg_xact_commit_timestamp fails without.
func tracksCommitTimes(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (bool, error) {
	var on bool
	if err := q.QueryRow(ctx, `SELECT current_setting('track_commit_timestamp')::bool`).Scan(&on); err != nil {
		return false, fmt.Errorf("read track_commit_timestamp: %w", err)
	}
	return on, nil
}
