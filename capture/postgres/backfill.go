package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgexpr"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// Online backfill re-reads one table while streaming goes on, with the
// watermark method of Netflix's DBLog: for each chunk the capture writes a
// low watermark (a transactional logical message), selects the chunk, and
// writes a high watermark. Reading its own slot, it drops from the chunk
// every row whose key a transaction committed between the two watermarks
// changed (that change, newer than the chunk or as new, comes through the
// slot anyway), and hands the rest on at the high watermark's position, so
// every change committed after it follows the chunk. A live change is
// never overwritten by an older copy of its row.

const backfillPrefix = "duplex.backfill"

// Backfill is a backfill request and its progress, as kept in the source
// database's duplex.backfills (pgstate.Backfill).
type Backfill = pgstate.Backfill

// MaxBackfillChunk bounds the rows of one backfill chunk: a chunk is read
// into memory and handed on as one transaction.
const MaxBackfillChunk = 100_000

// RequestBackfill records a backfill of table ("schema.table") for the
// capture of slot; a running capture starts it within a second, or the next
// one that starts. chunkRows is 1 to MaxBackfillChunk (0: 500). filter,
// when not empty, is a condition on the table's rows: it must be one
// boolean expression of package pgexpr's grammar over the table's columns,
// and the database must accept it (EXPLAIN SELECT 1 FROM table WHERE
// (filter), sent alone through the extended protocol, which carries one
// statement only, inside a READ ONLY transaction that is rolled back).
// Only its canonical form is recorded and ever sent again. Nothing is
// recorded when it is refused.
func RequestBackfill(ctx context.Context, conn *pgx.Conn, slot, table, filter string, chunkRows int) (int64, error) {
	if chunkRows == 0 {
		chunkRows = 500
	}
	if chunkRows < 1 || chunkRows > MaxBackfillChunk {
		return 0, fmt.Errorf("backfill of %s: chunk of %d rows; want 1 to %d", table, chunkRows, MaxBackfillChunk)
	}
	cond, err := backfillCondition(ctx, conn, table, filter)
	if err != nil {
		return 0, fmt.Errorf("backfill of %s: %w", table, err)
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return 0, fmt.Errorf("backfill of %s: %w", table, err)
	}
	return pgstate.RequestBackfill(ctx, conn, slot, table, quoteQualified(table), cond, chunkRows)
}

// backfillCondition parses filter over the columns of table and has the
// database plan it, read-only; it returns the canonical condition ("" for
// none). The table must exist either way.
func backfillCondition(ctx context.Context, conn *pgx.Conn, table, filter string) (string, error) {
	rows, err := conn.Query(ctx, `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, quoteQualified(table))
	if err != nil {
		return "", fmt.Errorf("table: %w", err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("table: %w", err)
	}
	if filter == "" {
		return "", nil
	}
	cond, err := pgexpr.Parse(filter, table, cols)
	if err != nil {
		return "", fmt.Errorf("the condition %q is refused: %w", filter, err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return "", err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // read-only: nothing to keep
	// ExecParams is the extended protocol: Parse refuses more than one
	// statement.
	if _, err := tx.Conn().PgConn().ExecParams(ctx, "EXPLAIN SELECT 1 FROM "+quoteQualified(table)+" WHERE ("+cond+")", nil, nil, nil, nil).Close(); err != nil {
		return "", fmt.Errorf("the condition %q is not valid: %w", filter, err)
	}
	return cond, nil
}

// BackfillByID reads a backfill's state.
func BackfillByID(ctx context.Context, conn *pgx.Conn, id int64) (*Backfill, error) {
	return pgstate.BackfillByID(ctx, conn, id)
}

// backfillRun is the backfill a replication session is performing.
type backfillRun struct {
	job   Backfill
	key   []string // key columns
	nonce string
	chunk int
	first string // queries of the first and the next chunks
	next  string
	// withTime: the queries read each row's commit time (CommitTimes).
	withTime bool

	phase   int // one of the phase constants
	rows    []capture.Change
	lastKey string
	at      time.Time       // server time when the chunk was read
	changed map[string]bool // keys changed between the watermarks
	emit    bool            // the high watermark's transaction is being read
}

const (
	bfIdle   = iota // next chunk to read
	bfLow           // chunk read, waiting for the low watermark in the slot
	bfWindow        // between the watermarks
)

func (b *backfillRun) mark(chunk int, w string) string {
	return fmt.Sprintf("%d:%s:%d:%s", b.job.ID, b.nonce, chunk, w)
}

// backfillStep advances the session's backfill outside of transactions:
// looks for a request about once a second, and reads the next chunk
// between two watermarks when the previous one was handed on.
func (ss *session) backfillStep(ctx context.Context) error {
	if ss.inTx {
		return nil
	}
	if ss.bf == nil {
		if time.Since(ss.bfPolled) < time.Second {
			return nil
		}
		ss.bfPolled = time.Now()
		return ss.pollBackfill(ctx)
	}
	if ss.bf.phase != bfIdle {
		return nil
	}
	return ss.readBackfillChunk(ctx)
}

func (ss *session) queryConn(ctx context.Context) (*pgx.Conn, error) {
	if ss.q != nil && !ss.q.IsClosed() {
		return ss.q, nil
	}
	q, err := pgx.Connect(ctx, ss.src.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("capture %s: connect: %w", ss.src.cfg.System, redact(err))
	}
	if err := pgstate.Ensure(ctx, q); err != nil {
		_ = q.Close(ctx)
		return nil, fmt.Errorf("capture %s: %w", ss.src.cfg.System, err)
	}
	ss.q = q
	return q, nil
}

func (ss *session) pollBackfill(ctx context.Context) error {
	s := ss.src
	q, err := ss.queryConn(ctx)
	if err != nil {
		return err
	}
	id, ok, err := pgstate.PendingBackfill(ctx, q, s.cfg.Slot)
	if err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	if !ok {
		return nil
	}
	job, err := BackfillByID(ctx, q, id)
	if err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	key := s.cfg.Keys[job.Table]
	if len(key) == 0 || !slices.Contains(s.cfg.Tables, job.Table) {
		return ss.failBackfill(ctx, job, fmt.Errorf("table %s is not mapped for %s", job.Table, s.cfg.System))
	}
	// The recorded condition is read again as if it came from the
	// command line: a row of duplex.backfills written by other means
	// than RequestBackfill runs nothing outside the grammar.
	filter, err := backfillCondition(ctx, q, job.Table, job.Filter)
	if err != nil {
		return ss.failBackfill(ctx, job, err)
	}
	cond := ""
	if filter != "" {
		cond = " AND (" + filter + ")"
	}
	tracks, err := tracksCommitTimes(ctx, q)
	if err != nil {
		return fmt.Errorf("capture %s: backfill %d: %w", s.cfg.System, id, err)
	}
	withTime := s.cfg.CommitTimes[job.Table] && tracks
	first, next, err := keysetQueries(ctx, q, job.Table, key, cond, job.ChunkRows, withTime)
	if err != nil {
		return ss.failBackfill(ctx, job, fmt.Errorf("key columns %v: %w", key, err))
	}
	nonce := make([]byte, 4)
	_, _ = rand.Read(nonce)
	b := &backfillRun{job: *job, key: key, nonce: hex.EncodeToString(nonce), first: first, next: next, withTime: withTime}
	if job.LastKey != nil {
		b.lastKey = *job.LastKey
	}
	if err := pgstate.StartBackfill(ctx, q, id); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.log.Info("backfill started", slog.Int64("backfill", id), slog.String("table", job.Table), slog.String("where", job.Filter),
		slog.Int64("estimate", job.Estimate), slog.Bool("resumed", job.LastKey != nil))
	ss.bf = b
	return nil
}

func (ss *session) failBackfill(ctx context.Context, job *Backfill, cause error) error {
	s := ss.src
	s.log.Error("backfill failed", slog.Int64("backfill", job.ID), slog.String("table", job.Table), slog.Any("error", cause))
	ss.bf = nil
	q, err := ss.queryConn(ctx)
	if err != nil {
		return err
	}
	if err := pgstate.FailBackfill(ctx, q, job.ID, cause.Error()); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	return nil
}

// readBackfillChunk writes the low watermark, reads the chunk, and writes
// the high watermark.
func (ss *session) readBackfillChunk(ctx context.Context) error {
	b, s := ss.bf, ss.src
	q, err := ss.queryConn(ctx)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, backfillPrefix, b.mark(b.chunk, "L")); err != nil {
		return fmt.Errorf("capture %s: backfill %d: low watermark: %w", s.cfg.System, b.job.ID, err)
	}
	if err := q.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&b.at); err != nil {
		return fmt.Errorf("capture %s: backfill %d: %w", s.cfg.System, b.job.ID, err)
	}
	// The chunk is read in a READ ONLY transaction: whatever the
	// condition calls cannot write.
	tx, err := q.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("capture %s: backfill %d: %w", s.cfg.System, b.job.ID, err)
	}
	var r pgx.Rows
	if b.lastKey == "" && b.job.LastKey == nil {
		r, err = tx.Query(ctx, b.first, pgx.QueryResultFormats{pgx.TextFormatCode})
	} else {
		var args []any
		if args, err = keyArgs(b.lastKey, len(b.key)); err == nil {
			r, err = tx.Query(ctx, b.next, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
		}
	}
	if err != nil {
		_ = tx.Rollback(ctx)
		return ss.failBackfill(ctx, &b.job, fmt.Errorf("read chunk: %w", err))
	}
	rows, lastKey, err := s.readChunk(r, b.job.Table, b.key, b.withTime)
	if err != nil {
		_ = tx.Rollback(ctx)
		return ss.failBackfill(ctx, &b.job, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("capture %s: backfill %d: read chunk: %w", s.cfg.System, b.job.ID, err)
	}
	b.rows, b.changed = rows, map[string]bool{}
	if len(rows) > 0 {
		b.lastKey = lastKey
	}
	if s.afterBackfillRead != nil {
		s.afterBackfillRead(b.job.ID, b.chunk)
	}
	if _, err := q.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, backfillPrefix, b.mark(b.chunk, "H")); err != nil {
		return fmt.Errorf("capture %s: backfill %d: high watermark: %w", s.cfg.System, b.job.ID, err)
	}
	b.phase = bfLow
	return nil
}

// backfillMessage follows the watermarks of the current chunk in the slot.
func (ss *session) backfillMessage(msg *pglogrepl.LogicalDecodingMessage) {
	b := ss.bf
	if b == nil || msg.Prefix != backfillPrefix {
		return
	}
	switch string(msg.Content) {
	case b.mark(b.chunk, "L"):
		if b.phase == bfLow {
			b.phase = bfWindow
		}
	case b.mark(b.chunk, "H"):
		if b.phase == bfWindow {
			b.emit = true
		}
	}
}

// backfillSaw notes a live change of the table being backfilled between
// the watermarks.
func (ss *session) backfillSaw(ch *capture.Change) {
	b := ss.bf
	if b == nil || b.phase != bfWindow || ch.Schema+"."+ch.Table != b.job.Table {
		if b != nil && b.phase == bfWindow && ch.Op == capture.Truncate && slices.Contains(ch.Tables, b.job.Table) {
			for _, r := range b.rows {
				b.changed[b.keyText(r.New)] = true
			}
		}
		return
	}
	for _, row := range []capture.Row{ch.New, ch.Old} {
		if k, ok := b.keyOf(row); ok {
			b.changed[k] = true
		}
	}
}

// keyOf is the text of a row's key (every key column's value, joined by
// capture.JoinKey); ok is false when the row lacks a key column (an
// update's old row that pgoutput did not send).
func (b *backfillRun) keyOf(row capture.Row) (string, bool) {
	parts := make([]string, len(b.key))
	for i, k := range b.key {
		v, ok := row[k]
		if !ok {
			return "", false
		}
		parts[i] = fmt.Sprint(v)
	}
	return capture.JoinKey(parts), true
}

func (b *backfillRun) keyText(row capture.Row) string {
	k, _ := b.keyOf(row)
	return k
}

// backfillEmit hands on the chunk at the high watermark's position (the
// commit of the watermark's transaction), without the rows changed between
// the watermarks, waits until it is durable, and records the progress.
func (ss *session) backfillEmit(ctx context.Context, end capture.LSN) error {
	b, s := ss.bf, ss.src
	b.emit = false
	kept := b.rows[:0]
	for _, r := range b.rows {
		if !b.changed[b.keyText(r.New)] {
			kept = append(kept, r)
		}
	}
	dropped := len(b.rows) - len(kept)
	if len(kept) > 0 {
		info := capture.TxInfo{System: s.cfg.System, CommitLSN: ss.tx.CommitLSN, EndLSN: end, CommitTime: b.at, Snapshot: true}
		s.mu.Lock()
		s.lastEmitEnd = max(s.lastEmitEnd, end)
		s.mu.Unlock()
		if err := ss.h.Chunk(ctx, &capture.Chunk{Tx: info, Index: 0, Last: true, Changes: kept}); err != nil {
			return err
		}
		// The chunk counts as done only once it is durable; otherwise
		// the session ends and the backfill resumes from its last
		// recorded key.
		if err := ss.h.Drain(ctx); err != nil {
			return fmt.Errorf("capture %s: backfill %d chunk not recorded: %w", s.cfg.System, b.job.ID, err)
		}
	}
	done := len(b.rows) < b.job.ChunkRows
	b.job.Rows += int64(len(b.rows))
	q, err := ss.queryConn(ctx)
	if err != nil {
		return err
	}
	if err := pgstate.BackfillProgress(ctx, q, b.job.ID, b.lastKey, b.job.Rows, done); err != nil {
		return fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.log.Debug("backfill chunk", slog.Int64("backfill", b.job.ID), slog.Int("chunk", b.chunk), slog.Int("rows", len(kept)),
		slog.Int("left_to_live_changes", dropped), slog.String("position", ss.tx.CommitLSN.String()))
	b.rows, b.changed = nil, nil
	b.chunk++
	b.phase = bfIdle
	if done {
		s.log.Info("backfill done", slog.Int64("backfill", b.job.ID), slog.String("table", b.job.Table), slog.Int64("rows", b.job.Rows))
		ss.bf = nil
	}
	return nil
}
