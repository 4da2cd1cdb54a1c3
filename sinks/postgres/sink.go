package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgcatalog"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

var _ pipeline.Sink = (*Sink)(nil)

// Config configures a Sink.
type Config struct {
	// Flow names the flow; the applied position is kept per flow.
	Flow string
	// Source is the system the flow reads from.
	Source string
	// System is the target system's name in the mapping ("erp").
	System string
	DSN    string
	// Origin is the replication origin the session is bound to
	// ("duplex_to_erp"). The capture of this database skips it.
	Origin  string
	Mapping *transform.Mapping
	Logger  *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Flow == "" || c.System == "" || c.Source == "" {
		errs = append(errs, errors.New("sink: flow, source and system are required"))
	}
	if c.DSN == "" {
		errs = append(errs, fmt.Errorf("sink %s: dsn is empty", c.System))
	}
	if c.Origin == "" {
		errs = append(errs, fmt.Errorf("sink %s: replication origin is empty", c.System))
	}
	if c.Mapping == nil {
		errs = append(errs, fmt.Errorf("sink %s: no mapping", c.System))
	}
	return errors.Join(errs...)
}

// Sink writes into one PostgreSQL database. It is used by one goroutine.
type Sink struct {
	cfg     Config
	log     *slog.Logger
	conn    *pgx.Conn
	catalog *transform.Catalog
	order   []*transform.Entity // parents before children
	stmts   map[string]string
	// release: entities whose source-assigned unique values were seen to
	// move (a unique violation); from then on stale holders are cleared
	// before each write (releaseUnique).
	release map[string]bool
	// isolate: write row by row under savepoints, to name the event a
	// set-based statement failed on (only after such a failure).
	isolate bool
	shared  map[string]map[string]string // entity -> column -> shared field
}

// New returns a Sink. It connects lazily, on the first Apply.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sink{cfg: cfg, log: cfg.Logger.With(slog.String("sink", cfg.System), slog.String("flow", cfg.Flow)), stmts: map[string]string{}}
	order, err := entityOrder(cfg.Mapping, cfg.System)
	if err != nil {
		return nil, err
	}
	s.order = order
	s.shared = map[string]map[string]string{}
	for _, e := range order {
		cols := map[string]string{}
		for _, f := range e.SharedFields(cfg.System) {
			cols[e.Tables[cfg.System].Columns[f].Column] = f
		}
		s.shared[e.Name] = cols
	}
	return s, nil
}

// entityOrder sorts the entities stored in system so that an entity comes
// after every entity it refers to.
func entityOrder(m *transform.Mapping, system string) ([]*transform.Entity, error) {
	var out []*transform.Entity
	state := map[string]int{}
	var visit func(e *transform.Entity) error
	visit = func(e *transform.Entity) error {
		switch state[e.Name] {
		case 1:
			return fmt.Errorf("sink %s: entity %s is part of a reference cycle", system, e.Name)
		case 2:
			return nil
		}
		state[e.Name] = 1
		t := e.Tables[system]
		for _, f := range e.Fields {
			if c := t.Columns[f.Name]; c != nil && c.Ref != nil && c.Ref.Entity != e.Name {
				if err := visit(m.Entity(c.Ref.Entity)); err != nil {
					return err
				}
			}
		}
		state[e.Name] = 2
		out = append(out, e)
		return nil
	}
	for _, e := range m.Entities {
		if e.Tables[system] != nil {
			if err := visit(e); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// Close ends the session.
func (s *Sink) Close(ctx context.Context) {
	if s.conn != nil {
		_ = s.conn.Close(ctx)
		s.conn = nil
	}
}

// connect opens the session, creates duplex's schema, binds the
// replication origin and reads the catalog.
func (s *Sink) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(s.cfg.DSN)
	if err != nil {
		return &permanentErr{fmt.Errorf("sink %s: parse dsn: %w", s.cfg.System, err)}
	}
	cfg.RuntimeParams["application_name"] = "duplex-" + s.cfg.Flow
	// Nothing may block an apply silently: a lock held elsewhere fails
	// the batch (retried) instead of hanging the flow.
	cfg.RuntimeParams["lock_timeout"] = "30s"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("sink %s: connect: %w", s.cfg.System, err)
	}
	fail := func(what string, err error) error {
		_ = conn.Close(ctx)
		return fmt.Errorf("sink %s: %s: %w", s.cfg.System, what, err)
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fail("prepare duplex schema", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, s.cfg.Origin); err != nil {
		return fail("create replication origin "+s.cfg.Origin, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, s.cfg.Origin); err != nil {
		return fail("bind replication origin "+s.cfg.Origin, err)
	}
	cat, err := pgcatalog.Read(ctx, conn, s.cfg.Mapping.Tables(s.cfg.System))
	if err != nil {
		return fail("read catalog", err)
	}
	// A mapping that does not fit stops the flow (retried, visibly) until
	// the table or the mapping is fixed; it is not the events' fault.
	if err := s.cfg.Mapping.CheckTarget(s.cfg.System, s.cfg.Source, cat); err != nil {
		return fail("mapping does not fit the database", err)
	}
	s.conn, s.catalog, s.stmts = conn, cat, map[string]string{}
	s.log.Info("sink session started", slog.String("origin", s.cfg.Origin))
	return nil
}

type permanentErr struct{ error }

func (e *permanentErr) Unwrap() error   { return e.error }
func (e *permanentErr) Permanent() bool { return true }

// Position returns the flow's applied position as recorded in the target
// (pgstate.Applied).
func Position(ctx context.Context, q pgstate.Querier, flow string) (transform.Position, error) {
	return pgstate.Applied(ctx, q, flow)
}

// Apply implements pipeline.Sink.
func (s *Sink) Apply(ctx context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.conn = nil
		if err := s.connect(ctx); err != nil {
			return pipeline.ApplyResult{}, classify(err, -1, -1)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	res, err := s.apply(actx, txs)
	if err != nil {
		if s.conn != nil && s.conn.IsClosed() {
			s.conn = nil
		}
		return pipeline.ApplyResult{}, err
	}
	return res, nil
}

// pendingRow is the folded last change of one key in a batch.
type pendingRow struct {
	row     *transform.Row
	tx, ev  int // where the last change came from
	deleted bool
	source  string
	// at holds, per shared column, the source commit time of the write
	// whose value the row carries; from, when set, the system that made
	// it (a copied row carries recorded versions), else source.
	at   map[string]time.Time
	from map[string]string
	// redo: the change comes late (a held entity read again, a retried
	// dead letter); what duplex wrote to the row meanwhile is not a local
	// write newer than it.
	redo bool
	// ver holds, per shared column, the version to record once the row
	// is written: the incoming write's when it won, else the local one.
	ver map[string]version
}

// sourceOf is the system whose write a shared column's value is.
func (p *pendingRow) sourceOf(col string) string {
	if s, ok := p.from[col]; ok {
		return s
	}
	return p.source
}

type entityBatch struct {
	truncate bool
	keys     []string // in first-seen order
	rows     map[string]*pendingRow
}

func (s *Sink) apply(ctx context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	res, err := s.applyOnce(ctx, txs)
	if unattributed(err) {
		// A set-based statement failed on some row: apply again, row by
		// row for the failing kind of statement, to name the event.
		s.isolate = true
		res, err = s.applyOnce(ctx, txs)
		s.isolate = false
	}
	return res, err
}

func (s *Sink) applyOnce(ctx context.Context, txs []*transform.Tx) (res pipeline.ApplyResult, err error) {
	tx, applied, err := s.begin(ctx)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	seen := applied.LSN
	last, err := s.write(ctx, tx, txs, applied.LSN, &seen, &res)
	if err != nil {
		return res, err
	}
	if last == nil {
		return res, tx.Commit(ctx)
	}
	return res, s.finish(ctx, tx, last)
}

// unattributed says err is a permanent failure of the data that names no
// event: a set-based statement failed on one of its rows.
func unattributed(err error) bool {
	var ae *pipeline.ApplyError
	return errors.As(err, &ae) && ae.Kind == pipeline.Permanent && ae.Event < 0
}

// execRows runs a statement over rows (args holds one array per column,
// a value per row). Normally all rows at once; in isolate mode row by row,
// each under a savepoint, so that a failure names its row's event.
func (s *Sink) execRows(ctx context.Context, tx pgx.Tx, sql string, rows []*pendingRow, args []any, what func(n int) string) error {
	if !s.isolate || len(rows) == 1 {
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			ei := -1
			if len(rows) == 1 {
				ei = rows[0].ev
			}
			return classify(fmt.Errorf("sink %s: %s: %w", s.cfg.System, what(len(rows)), err), singleTx(rows), ei)
		}
		return nil
	}
	one := make([]any, len(args))
	for ri, p := range rows {
		for ci, a := range args {
			one[ci] = a.([]*string)[ri : ri+1]
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT duplex_row"); err != nil {
			return classify(fmt.Errorf("sink %s: savepoint: %w", s.cfg.System, err), -1, -1)
		}
		if _, err := tx.Exec(ctx, sql, one...); err != nil {
			_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_row")
			return classify(fmt.Errorf("sink %s: %s: %w", s.cfg.System, what(1), err), p.tx, p.ev)
		}
		if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT duplex_row"); err != nil {
			return classify(fmt.Errorf("sink %s: release savepoint: %w", s.cfg.System, err), -1, -1)
		}
	}
	return nil
}

// begin opens the target transaction and reads the flow's applied position.
func (s *Sink) begin(ctx context.Context) (pgx.Tx, transform.Position, error) {
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return nil, transform.Position{}, classify(fmt.Errorf("sink %s: begin: %w", s.cfg.System, err), -1, -1)
	}
	applied, err := Position(ctx, tx, s.cfg.Flow)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, transform.Position{}, classify(err, -1, -1)
	}
	return tx, applied, nil
}

// write writes the changes of txs not yet applied (applied is the flow's
// recorded position, seen the highest position met so far in this target
// transaction) and returns the last transaction it wrote, nil if none.
func (s *Sink) write(ctx context.Context, tx pgx.Tx, txs []*transform.Tx, applied capture.LSN, seen *capture.LSN, res *pipeline.ApplyResult) (*transform.Tx, error) {
	batches := map[string]*entityBatch{}
	var last *transform.Tx
	for ti, t := range txs {
		redo := false
		if t.Snapshot {
			// Snapshot chunks share the consistent point as their LSN:
			// applied while nothing after that point is, skipped once a
			// later change is (a replay must not bring old rows back).
			if t.CommitLSN < applied || t.CommitLSN < *seen {
				res.Skipped += len(t.Events)
				continue
			}
			*seen = max(*seen, t.CommitLSN)
			if last == nil || t.CommitLSN >= last.CommitLSN {
				last = t
			}
		} else {
			if t.CommitLSN <= *seen {
				if !t.Redo {
					res.Skipped += len(t.Events)
					continue
				}
				// Read again after a held entity was fixed: only its
				// events (marked Redo) are new here.
				redo = true
			} else {
				*seen, last = t.CommitLSN, t
			}
		}
		for ei := range t.Events {
			ev := &t.Events[ei]
			if redo && !ev.Redo {
				res.Skipped++
				continue
			}
			row, err := s.cfg.Mapping.Denormalize(ev, s.cfg.System)
			if err != nil {
				return nil, &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: ti, Event: ei, Err: fmt.Errorf("event %s: %w", ev.ID, err)}
			}
			b := batches[ev.Entity]
			if b == nil {
				b = &entityBatch{rows: map[string]*pendingRow{}}
				batches[ev.Entity] = b
			}
			s.fold(b, row, ti, ei, ev)
			res.Applied++
		}
	}
	if last == nil && len(batches) == 0 {
		return nil, nil
	}
	// Truncates first, children before parents; then upserts, parents
	// before children; then deletes, children before parents.
	for i := len(s.order) - 1; i >= 0; i-- {
		e := s.order[i]
		if b := batches[e.Name]; b != nil && b.truncate {
			t := e.Tables[s.cfg.System]
			if _, err := tx.Exec(ctx, "DELETE FROM "+quoteTable(t)); err != nil {
				return nil, classify(fmt.Errorf("sink %s: truncate %s: %w", s.cfg.System, t.QualifiedTable(), err), -1, -1)
			}
		}
	}
	for _, e := range s.order {
		b := batches[e.Name]
		if b == nil {
			continue
		}
		n, err := s.resolveShared(ctx, tx, e, b)
		if err != nil {
			return nil, err
		}
		res.Conflicts += n
		if err := s.upsert(ctx, tx, e, b); err != nil {
			return nil, err
		}
		if err := s.recordVersions(ctx, tx, e, b); err != nil {
			return nil, err
		}
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		e := s.order[i]
		if b := batches[e.Name]; b != nil {
			if err := s.delete(ctx, tx, e, b); err != nil {
				return nil, err
			}
		}
	}
	return last, nil
}

// finish records last as the flow's applied position, sets the replication
// origin's progress and commits.
func (s *Sink) finish(ctx context.Context, tx pgx.Tx, last *transform.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, $2)`, last.CommitLSN.String(), last.CommitTime); err != nil {
		return classify(fmt.Errorf("sink %s: origin xact setup: %w", s.cfg.System, err), -1, -1)
	}
	pos := transform.Position{LSN: last.CommitLSN, CommitTime: last.CommitTime, Xid: last.Xid}
	if err := pgstate.WriteApplied(ctx, tx, s.cfg.Flow, last.Source, pos); err != nil {
		return classify(fmt.Errorf("sink %s: %w", s.cfg.System, err), -1, -1)
	}
	if err := tx.Commit(ctx); err != nil {
		return classify(fmt.Errorf("sink %s: commit: %w", s.cfg.System, err), -1, -1)
	}
	return nil
}

// BeginParts implements pipeline.PartSink: one source transaction too large
// to hold whole is applied chunk by chunk inside one target transaction,
// committed with its last chunk, so the target still sees it atomically.
func (s *Sink) BeginParts(ctx context.Context) (pipeline.PartSession, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.conn = nil
		if err := s.connect(ctx); err != nil {
			return nil, classify(err, -1, -1)
		}
	}
	tx, applied, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	return &partSession{s: s, tx: tx, applied: applied.LSN, seen: applied.LSN}, nil
}

type partSession struct {
	s             *Sink
	tx            pgx.Tx
	applied, seen capture.LSN
	last          *transform.Tx
}

// Part writes one chunk. A chunk of a transaction already applied is
// skipped.
func (p *partSession) Part(ctx context.Context, chunk *transform.Tx) (pipeline.ApplyResult, error) {
	// A savepoint per part: a set-based statement failing on some row is
	// undone alone and the part written again row by row, to name the
	// event (the whole transaction is still abandoned afterwards).
	if _, err := p.tx.Exec(ctx, "SAVEPOINT duplex_part"); err != nil {
		p.fail(ctx)
		return pipeline.ApplyResult{}, classify(fmt.Errorf("sink %s: savepoint: %w", p.s.cfg.System, err), -1, -1)
	}
	var res pipeline.ApplyResult
	seen := p.applied // chunks of one transaction share its LSN
	last, err := p.s.write(ctx, p.tx, []*transform.Tx{chunk}, p.applied, &seen, &res)
	if unattributed(err) {
		if _, rerr := p.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_part"); rerr == nil {
			p.s.isolate = true
			res, seen = pipeline.ApplyResult{}, p.applied
			last, err = p.s.write(ctx, p.tx, []*transform.Tx{chunk}, p.applied, &seen, &res)
			p.s.isolate = false
		}
	}
	if err != nil {
		p.fail(ctx)
		return res, err
	}
	if _, err := p.tx.Exec(ctx, "RELEASE SAVEPOINT duplex_part"); err != nil {
		p.fail(ctx)
		return res, classify(fmt.Errorf("sink %s: release savepoint: %w", p.s.cfg.System, err), -1, -1)
	}
	if last != nil {
		p.last = last
	}
	return res, nil
}

// Commit records the position of the transaction and commits.
func (p *partSession) Commit(ctx context.Context, last *transform.Tx) error {
	if last.CommitLSN <= p.applied {
		return p.tx.Commit(ctx)
	}
	if err := p.s.finish(ctx, p.tx, last); err != nil {
		p.fail(ctx)
		return err
	}
	return nil
}

// Rollback abandons the transaction.
func (p *partSession) Rollback(ctx context.Context) { p.fail(ctx) }

func (p *partSession) fail(ctx context.Context) {
	_ = p.tx.Rollback(context.WithoutCancel(ctx))
	if p.s.conn != nil && p.s.conn.IsClosed() {
		p.s.conn = nil
	}
}

// fold merges a change into the batch: the last change of a key wins, and
// an upsert that leaves some columns out keeps what an earlier upsert of
// the same key in the batch wrote to them.
func (s *Sink) fold(b *entityBatch, row *transform.Row, ti, ei int, ev *transform.Event) {
	if row.Op == transform.OpTruncate {
		b.truncate = true
		b.keys = nil
		b.rows = map[string]*pendingRow{}
		return
	}
	prev := b.rows[row.Key]
	if prev == nil {
		b.keys = append(b.keys, row.Key)
	}
	p := &pendingRow{row: row, tx: ti, ev: ei, deleted: row.Op == transform.OpDelete, source: ev.Source, redo: ev.Redo}
	shared := s.sharedColumns(row.Entity)
	for _, v := range row.Values {
		if f := shared[v.Column]; f != "" {
			if p.at == nil {
				p.at = map[string]time.Time{}
			}
			p.at[v.Column] = ev.Pos.CommitTime
			if fv, ok := ev.Versions[f]; ok {
				p.at[v.Column] = fv.At
				if p.from == nil {
					p.from = map[string]string{}
				}
				p.from[v.Column] = fv.Source
			}
		}
	}
	if prev != nil && !prev.deleted && !p.deleted {
		merged := *row
		merged.Values = append([]transform.ColValue(nil), row.Values...)
		for _, v := range prev.row.Values {
			if !slices.ContainsFunc(merged.Values, func(x transform.ColValue) bool { return x.Column == v.Column }) {
				merged.Values = append(merged.Values, v)
				if t, ok := prev.at[v.Column]; ok {
					if p.at == nil {
						p.at = map[string]time.Time{}
					}
					p.at[v.Column] = t
					if f, ok := prev.from[v.Column]; ok {
						if p.from == nil {
							p.from = map[string]string{}
						}
						p.from[v.Column] = f
					}
				}
			}
		}
		slices.SortFunc(merged.Values, func(a, b transform.ColValue) int { return strings.Compare(a.Column, b.Column) })
		p.row = &merged
	}
	b.rows[row.Key] = p
}

// sharedColumns maps the target columns of an entity's shared (owner
// both) fields to their field names. Computed once per entity at New: it
// is asked for every folded row.
func (s *Sink) sharedColumns(e *transform.Entity) map[string]string {
	return s.shared[e.Name]
}

func (s *Sink) upsert(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	t := e.Tables[s.cfg.System]
	groups := map[string][]*pendingRow{}
	var sigs []string
	for _, k := range b.keys {
		p := b.rows[k]
		if p.deleted {
			continue
		}
		ensureKey(p.row, t)
		sig := p.row.Signature()
		if groups[sig] == nil {
			sigs = append(sigs, sig)
		}
		groups[sig] = append(groups[sig], p)
	}
	for _, sig := range sigs {
		rows := groups[sig]
		if err := s.resolveRefs(ctx, tx, e, rows); err != nil {
			return err
		}
		if err := s.checkGuards(ctx, tx, e, t, rows); err != nil {
			return err
		}
		cols := rows[0].row.Values
		args := make([]any, len(cols))
		for ci := range cols {
			arr := make([]*string, len(rows))
			for ri, p := range rows {
				v := &p.row.Values[ci]
				if !v.Null {
					txt := v.Text
					arr[ri] = &txt
				}
			}
			args[ci] = arr
		}
		if s.release[e.Name] {
			if err := s.releaseUnique(ctx, tx, e, t, rows, args); err != nil {
				return err
			}
		}
		sql, err := s.writeSQL(e, t, sig, cols)
		if err != nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: rows[0].tx, Event: rows[0].ev, Err: err}
		}
		what := func(n int) string {
			return fmt.Sprintf("upsert %d rows into %s (entity %s)", n, t.QualifiedTable(), e.Name)
		}
		if err := s.execRows(ctx, tx, sql, rows, args, what); err != nil {
			if isUniqueViolation(err) && !s.release[e.Name] && s.movable(e, t, cols) {
				// A value the source assigns moved between rows: retry with
				// stale holders cleared first.
				if s.release == nil {
					s.release = map[string]bool{}
				}
				s.release[e.Name] = true
				s.log.Info("unique values assigned by the source moved between rows; clearing stale holders from now on", slog.String("entity", e.Name))
				var ae *pipeline.ApplyError
				errors.As(err, &ae)
				return &pipeline.ApplyError{Kind: pipeline.Transient, Tx: -1, Event: -1, RetryAfter: time.Millisecond, Err: ae.Err}
			}
			return err
		}
		if !s.canInsert(t, cols) {
			if err := s.checkUpdated(ctx, tx, e, t, rows); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkGuards refuses rows whose target row holds another value than a
// guard requires (an amount in USD next to a CRM currency of EUR).
func (s *Sink) checkGuards(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, rows []*pendingRow) error {
	byCol := map[string][]*pendingRow{}
	for _, p := range rows {
		for _, g := range p.row.Guards {
			byCol[g.Column] = append(byCol[g.Column], p)
		}
	}
	if len(byCol) == 0 {
		return nil
	}
	kt, err := s.castType(t, t.KeyColumn)
	if err != nil {
		return err
	}
	for col, ps := range byCol {
		ct, err := s.castType(t, col)
		if err != nil {
			return err
		}
		keys, vals := make([]string, len(ps)), make([]string, len(ps))
		for i, p := range ps {
			keys[i] = p.row.Key
			for _, g := range p.row.Guards {
				if g.Column == col {
					vals[i] = g.Text
				}
			}
		}
		q := fmt.Sprintf("SELECT u.k, t.%s::text FROM unnest($1::text[], $2::text[]) AS u(k, v) JOIN %s AS t ON t.%s = u.k::%s WHERE t.%s IS DISTINCT FROM u.v::%s",
			pgx.Identifier{col}.Sanitize(), quoteTable(t), pgx.Identifier{t.KeyColumn}.Sanitize(), kt, pgx.Identifier{col}.Sanitize(), ct)
		r, err := tx.Query(ctx, q, keys, vals)
		if err != nil {
			return classify(fmt.Errorf("sink %s: check %s of %s: %w", s.cfg.System, col, e.Name, err), -1, -1)
		}
		type bad struct {
			k string
			v *string
		}
		found, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (bad, error) {
			var b bad
			return b, row.Scan(&b.k, &b.v)
		})
		if err != nil {
			return classify(fmt.Errorf("sink %s: check %s of %s: %w", s.cfg.System, col, e.Name, err), -1, -1)
		}
		for _, b := range found {
			for i, p := range ps {
				if p.row.Key == b.k {
					return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
						Err: fmt.Errorf("entity %s key %s: an amount in %s cannot be written next to %s %q in %s", e.Name, b.k, vals[i], col, deref(b.v), t.QualifiedTable())}
				}
			}
		}
	}
	return nil
}

// checkUpdated handles the rows an update-only write could not find. Rows
// of an entity born in another system (that owns its key) are skipped:
// the row was deleted here, or never made it; there is nothing to update.
// Rows that the event's source owns should exist: a missing one cannot be
// created without the columns the event lacks, and that is an error.
func (s *Sink) checkUpdated(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, rows []*pendingRow) error {
	kf := e.Field(e.Key)
	if kf.Owner != rows[0].source && kf.Owner != transform.OwnerBoth {
		return nil
	}
	kt, err := s.castType(t, t.KeyColumn)
	if err != nil {
		return err
	}
	keys := make([]string, len(rows))
	for i, p := range rows {
		keys[i] = p.row.Key
	}
	q := fmt.Sprintf("SELECT u.k FROM unnest($1::text[]) AS u(k) WHERE NOT EXISTS (SELECT 1 FROM %s AS t WHERE t.%s = u.k::%s)",
		quoteTable(t), pgx.Identifier{t.KeyColumn}.Sanitize(), kt)
	r, err := tx.Query(ctx, q, keys)
	if err != nil {
		return classify(fmt.Errorf("sink %s: check rows of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	missing, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return classify(fmt.Errorf("sink %s: check rows of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	if len(missing) == 0 {
		return nil
	}
	for _, p := range rows {
		if p.row.Key == missing[0] {
			var need []string
			for name, ci := range s.catalog.Tables[t.QualifiedTable()].Columns {
				if ci.NotNull && !ci.HasDefault && !slices.ContainsFunc(p.row.Values, func(c transform.ColValue) bool { return c.Column == name }) {
					need = append(need, name)
				}
			}
			slices.Sort(need)
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
				Err: fmt.Errorf("entity %s key %s: no row in %s to update, and the event lacks %v to create one", e.Name, p.row.Key, t.QualifiedTable(), need)}
		}
	}
	return nil
}

// singleTx returns the batch index of the transaction all rows come from,
// or -1 when they come from several.
func singleTx(rows []*pendingRow) int {
	ti := rows[0].tx
	for _, r := range rows {
		if r.tx != ti {
			return -1
		}
	}
	return ti
}

func ensureKey(r *transform.Row, t *transform.TableMap) {
	for _, v := range r.Values {
		if v.Column == t.KeyColumn {
			return
		}
	}
	r.Values = append(r.Values, transform.ColValue{Column: t.KeyColumn, Text: r.Key})
	slices.SortFunc(r.Values, func(a, b transform.ColValue) int { return strings.Compare(a.Column, b.Column) })
}

func (s *Sink) castType(t *transform.TableMap, column string) (string, error) {
	ti := s.catalog.Tables[t.QualifiedTable()]
	if ti == nil || ti.Columns[column] == nil {
		return "", fmt.Errorf("sink %s: column %s of %s is not in the catalog", s.cfg.System, column, t.QualifiedTable())
	}
	return ti.Columns[column].CastType, nil
}

// releaseUnique clears, in other rows, the values these rows are about to
// take in a nullable unique column that holds a field the flow's source
// assigns (a customer number the ERP hands out): the source owns the
// value, so a row still holding it is stale and gets its own number later.
// Without this, numbers that moved between rows (an ERP restored from a
// backup numbers its customers anew) would collide on the unique index.
func (s *Sink) releaseUnique(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, rows []*pendingRow, args []any) error {
	ti := s.catalog.Tables[t.QualifiedTable()]
	cols := rows[0].row.Values
	var keys []*string
	for ci, c := range cols {
		if c.Column == t.KeyColumn {
			keys = args[ci].([]*string)
		}
	}
	for ci, c := range cols {
		info := ti.Columns[c.Column]
		if c.Column == t.KeyColumn || !ti.UniqueColumns[c.Column] || info == nil || info.NotNull || !s.assigned(e, t, c.Column) {
			continue
		}
		kt, err := s.castType(t, t.KeyColumn)
		if err != nil {
			return err
		}
		ct, err := s.castType(t, c.Column)
		if err != nil {
			return err
		}
		id := pgx.Identifier{c.Column}.Sanitize()
		// Every other row holding a value: those outside the batch and
		// those inside it that take another one (numbers swapped between
		// rows would otherwise collide within the statement).
		tag, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s AS t SET %s = NULL FROM unnest($1::text[], $2::text[]) AS u(v, k)
			WHERE u.v IS NOT NULL AND t.%s = u.v::%s AND t.%s IS DISTINCT FROM u.k::%s`,
			quoteTable(t), id, id, ct, pgx.Identifier{t.KeyColumn}.Sanitize(), kt), args[ci], keys)
		if err != nil {
			return classify(fmt.Errorf("sink %s: release values of unique column %s.%s: %w", s.cfg.System, t.QualifiedTable(), c.Column, err), singleTx(rows), -1)
		}
		if n := tag.RowsAffected(); n > 0 {
			s.log.Info("unique value moved: cleared in the rows that held it until they get their own",
				slog.String("entity", e.Name), slog.String("column", c.Column), slog.Int64("rows", n))
		}
	}
	return nil
}

// movable says whether some of the columns are nullable unique columns
// holding fields the source assigns.
func (s *Sink) movable(e *transform.Entity, t *transform.TableMap, cols []transform.ColValue) bool {
	ti := s.catalog.Tables[t.QualifiedTable()]
	for _, c := range cols {
		if ci := ti.Columns[c.Column]; c.Column != t.KeyColumn && ti.UniqueColumns[c.Column] && ci != nil && !ci.NotNull && s.assigned(e, t, c.Column) {
			return true
		}
	}
	return false
}

// assigned says whether a column holds a field owned by the flow's source
// alone.
func (s *Sink) assigned(e *transform.Entity, t *transform.TableMap, column string) bool {
	for name, cm := range t.Columns {
		if cm.Column == column && cm.Ref == nil {
			if f := e.Field(name); f != nil && f.Owner == s.cfg.Source && name != e.Key {
				return true
			}
		}
	}
	return false
}

// comparable returns expr as something IS DISTINCT FROM can compare:
// types without an equality operator (json, xml, geometric types and
// arrays of them) are compared by their text form.
func (s *Sink) comparable(t *transform.TableMap, column, expr string) string {
	ci := s.catalog.Tables[t.QualifiedTable()].Columns[column]
	if ci == nil {
		return expr
	}
	switch strings.TrimPrefix(ci.Type, "_") {
	case "json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle":
		return expr + "::text"
	}
	return expr
}

// canInsert says whether rows with these columns can be inserted: every
// NOT NULL column without a default is among them. A flow that carries
// only the fields its source owns often cannot create a row (the ERP's
// write-back of customer_no to a CRM account): it updates existing rows.
func (s *Sink) canInsert(t *transform.TableMap, cols []transform.ColValue) bool {
	ti := s.catalog.Tables[t.QualifiedTable()]
	for name, ci := range ti.Columns {
		if ci.NotNull && !ci.HasDefault && !slices.ContainsFunc(cols, func(c transform.ColValue) bool { return c.Column == name }) {
			return false
		}
	}
	return true
}

// writeSQL returns the statement that writes rows with these columns:
// an upsert when they can create the row, else an update of existing rows.
func (s *Sink) writeSQL(e *transform.Entity, t *transform.TableMap, sig string, cols []transform.ColValue) (string, error) {
	if q, ok := s.stmts[e.Name+"|"+sig]; ok {
		return q, nil
	}
	if !s.canInsert(t, cols) {
		q, err := s.updateSQL(t, cols)
		if err != nil {
			return "", err
		}
		s.stmts[e.Name+"|"+sig] = q
		return q, nil
	}
	return s.upsertSQL(e, t, sig, cols)
}

// updateSQL updates existing rows from unnest, leaving rows already equal
// untouched; keys absent from the table are left out.
func (s *Sink) updateSQL(t *transform.TableMap, cols []transform.ColValue) (string, error) {
	var unnest, alias, set, cmpT, cmpU []string
	var keyExpr string
	for i, c := range cols {
		ct, err := s.castType(t, c.Column)
		if err != nil {
			return "", err
		}
		id := pgx.Identifier{c.Column}.Sanitize()
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		alias = append(alias, fmt.Sprintf("v%d", i))
		val := fmt.Sprintf("u.v%d::%s", i, ct)
		if c.Column == t.KeyColumn {
			keyExpr = "t." + id + " = " + val
			continue
		}
		set = append(set, id+" = "+val)
		cmpT = append(cmpT, s.comparable(t, c.Column, "t."+id))
		cmpU = append(cmpU, s.comparable(t, c.Column, "("+val+")"))
	}
	if len(set) == 0 {
		return "SELECT 1 WHERE false", nil
	}
	return fmt.Sprintf("UPDATE %s AS t SET %s FROM unnest(%s) AS u(%s) WHERE %s AND (%s, NULL) IS DISTINCT FROM (%s, NULL)",
		quoteTable(t), strings.Join(set, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "), keyExpr,
		strings.Join(cmpT, ", "), strings.Join(cmpU, ", ")), nil
}

func (s *Sink) upsertSQL(e *transform.Entity, t *transform.TableMap, sig string, cols []transform.ColValue) (string, error) {
	var names, sel, unnest, alias, set, cmpT, cmpE []string
	for i, c := range cols {
		ct, err := s.castType(t, c.Column)
		if err != nil {
			return "", err
		}
		id := pgx.Identifier{c.Column}.Sanitize()
		names = append(names, id)
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		alias = append(alias, fmt.Sprintf("v%d", i))
		sel = append(sel, fmt.Sprintf("u.v%d::%s", i, ct))
		if c.Column != t.KeyColumn {
			set = append(set, id+" = EXCLUDED."+id)
			cmpT = append(cmpT, s.comparable(t, c.Column, "t."+id))
			cmpE = append(cmpE, s.comparable(t, c.Column, "EXCLUDED."+id))
		}
	}
	q := fmt.Sprintf("INSERT INTO %s AS t (%s) SELECT %s FROM unnest(%s) AS u(%s) ON CONFLICT (%s) ",
		quoteTable(t), strings.Join(names, ", "), strings.Join(sel, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "),
		pgx.Identifier{t.KeyColumn}.Sanitize())
	if len(set) == 0 {
		q += "DO NOTHING"
	} else {
		q += fmt.Sprintf("DO UPDATE SET %s WHERE (%s) IS DISTINCT FROM (%s)", strings.Join(set, ", "), strings.Join(cmpT, ", "), strings.Join(cmpE, ", "))
		if len(set) == 1 {
			q = strings.Replace(q, "WHERE ("+cmpT[0]+") IS DISTINCT FROM ("+cmpE[0]+")", "WHERE "+cmpT[0]+" IS DISTINCT FROM "+cmpE[0], 1)
		}
	}
	s.stmts[e.Name+"|"+sig] = q
	return q, nil
}

// resolveRefs replaces canonical keys in reference columns by the values
// of the referenced rows in the target (for example a customer's
// customer_no found by its crm_account_id).
func (s *Sink) resolveRefs(ctx context.Context, tx pgx.Tx, e *transform.Entity, rows []*pendingRow) error {
	for ci, c := range rows[0].row.Values {
		if c.Ref == nil {
			continue
		}
		re := s.cfg.Mapping.Entity(c.Ref.Entity)
		rt := re.Tables[s.cfg.System]
		keys := map[string]string{}
		var want []string
		for _, p := range rows {
			v := p.row.Values[ci]
			if !v.Null {
				if _, ok := keys[v.Text]; !ok {
					keys[v.Text] = ""
					want = append(want, v.Text)
				}
			}
		}
		if len(want) == 0 {
			continue
		}
		matchCol := rt.Columns[c.Ref.MatchField(re)].Column
		kt, err := s.castType(rt, matchCol)
		if err != nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: rows[0].tx, Event: rows[0].ev, Err: err}
		}
		q := fmt.Sprintf("SELECT u.k, r.%s::text FROM unnest($1::text[]) AS u(k) JOIN %s AS r ON r.%s = u.k::%s",
			pgx.Identifier{c.Ref.Column}.Sanitize(), quoteTable(rt), pgx.Identifier{matchCol}.Sanitize(), kt)
		found, err := tx.Query(ctx, q, want)
		if err != nil {
			return classify(fmt.Errorf("sink %s: resolve %s references: %w", s.cfg.System, re.Name, err), -1, -1)
		}
		for found.Next() {
			var k string
			var v *string
			if err := found.Scan(&k, &v); err != nil {
				found.Close()
				return classify(fmt.Errorf("sink %s: resolve %s references: %w", s.cfg.System, re.Name, err), -1, -1)
			}
			if v != nil {
				keys[k] = *v
			}
		}
		if err := found.Err(); err != nil {
			return classify(fmt.Errorf("sink %s: resolve %s references: %w", s.cfg.System, re.Name, err), -1, -1)
		}
		for _, p := range rows {
			v := &p.row.Values[ci]
			if v.Null {
				continue
			}
			got := keys[v.Text]
			if got == "" {
				return &pipeline.ApplyError{Kind: pipeline.Waiting, Tx: p.tx, Event: p.ev,
					Err: fmt.Errorf("entity %s key %s: referenced %s with %s %s has not arrived in %s yet", e.Name, p.row.Key, re.Name, c.Ref.MatchField(re), v.Text, s.cfg.System)}
			}
			v.Text, v.Ref = got, nil
		}
	}
	return nil
}

func (s *Sink) delete(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	t := e.Tables[s.cfg.System]
	var keys []string
	var from []*pendingRow
	for _, k := range b.keys {
		if p := b.rows[k]; p.deleted {
			keys = append(keys, k)
			from = append(from, p)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	kt, err := s.castType(t, t.KeyColumn)
	if err != nil {
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: from[0].tx, Event: from[0].ev, Err: err}
	}
	q := fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1::text[]::%s[])", quoteTable(t), pgx.Identifier{t.KeyColumn}.Sanitize(), kt)
	arr := make([]*string, len(keys))
	for i := range keys {
		arr[i] = &keys[i]
	}
	return s.execRows(ctx, tx, q, from, []any{arr}, func(n int) string {
		return fmt.Sprintf("delete %d rows from %s (entity %s)", n, t.QualifiedTable(), e.Name)
	})
}

func quoteTable(t *transform.TableMap) string {
	return pgx.Identifier{t.Schema(), t.Name()}.Sanitize()
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// classify maps an error to the pipeline's kinds: integrity and data
// errors are permanent; connection loss, shutdown, serialization failures,
// lock timeouts and anything unknown are transient.
func classify(err error, ti, ei int) error {
	var ae *pipeline.ApplyError
	if errors.As(err, &ae) {
		return err
	}
	kind := pipeline.Transient
	var pe *pgconn.PgError
	var p interface{ Permanent() bool }
	switch {
	case errors.As(err, &pe):
		switch {
		case strings.HasPrefix(pe.Code, "23"), strings.HasPrefix(pe.Code, "22"):
			kind = pipeline.Permanent
		}
	case errors.As(err, &p) && p.Permanent():
		kind = pipeline.Permanent
	case pgconn.Timeout(err), isNetErr(err):
		kind = pipeline.Transient
	}
	return &pipeline.ApplyError{Kind: kind, Tx: ti, Event: ei, Err: err}
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}
