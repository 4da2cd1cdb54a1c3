// Writing folded rows: grouped by column set, references resolved, guards
// checked, one set-based statement per group.

package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

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
		if cols := keyColumns(t); !s.exactKeys(t, cols) {
			if err := s.checkHolders(ctx, tx, e, t, cols, rows); err != nil {
				return err
			}
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
		sql, err := s.writeSQL(e, t, sig, rows[0].row)
		if err != nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: rows[0].tx, Event: rows[0].ev, Err: err}
		}
		what := func(n int) string {
			return fmt.Sprintf("upsert %d rows into %s (entity %s)", n, t.QualifiedTable(), e.Name)
		}
		changed, err := s.execRows(ctx, tx, sql, rows, args, what)
		if err != nil {
			if col, ok := notNullViolation(err); ok && s.staleNotNull(t, col, cols) {
				// The table changed since the catalog was read (a NOT NULL
				// column added, a DEFAULT dropped): read it again and
				// retry, so rows that exist are updated (canInsert).
				s.log.Info("target column is NOT NULL without a default since the catalog was read; reading it again",
					slog.String("table", t.QualifiedTable()), slog.String("column", col))
				var ae *pipeline.ApplyError
				errors.As(err, &ae)
				return &pipeline.ApplyError{Kind: pipeline.Transient, Tx: -1, Event: -1, RetryAfter: time.Millisecond, Err: ae.Err}
			}
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
		if !s.insertable(e, t, rows[0].row) && changed < int64(len(rows)) {
			// Some rows were not changed: equal already, or not there.
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
	match, err := s.keyMatch(t, "t", "u", "k")
	if err != nil {
		return err
	}
	n := len(t.KeyColumns())
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
		args, err := keyArrays(t, keys)
		if err != nil {
			return err
		}
		un, alias := keyUnnest(n, 2, "k")
		q := fmt.Sprintf("SELECT %s, t.%s::text FROM unnest($1::text[], %s) AS u(v, %s) JOIN %s AS t ON %s WHERE t.%s IS DISTINCT FROM u.v::%s",
			keySelect(n, "u", "k"), pgx.Identifier{col}.Sanitize(), un, alias, quoteTable(t), match, pgx.Identifier{col}.Sanitize(), ct)
		r, err := tx.Query(ctx, q, append([]any{vals}, args...)...)
		if err != nil {
			return classify(fmt.Errorf("sink %s: check %s of %s: %w", s.cfg.System, col, e.Name, err), -1, -1)
		}
		type bad struct {
			k string
			v *string
		}
		found, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (bad, error) {
			var b bad
			dest, key := scanKey(n)
			err := row.Scan(append(dest, &b.v)...)
			b.k = key()
			return b, err
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
// Rows with a field the change left unchanged and whose value is unknown
// (an unchanged TOASTed value the capture could not find) are not created
// either: the row would hold NULL where the source holds a value, so the
// event is refused with the reason (a dead letter), or skipped like any
// update of a row born here.
func (s *Sink) checkUpdated(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, rows []*pendingRow) error {
	ownKey := e.KeyOwner() == s.cfg.System
	if ko := e.KeyOwner(); ko != rows[0].source && ko != transform.OwnerBoth && !ownKey {
		return nil
	}
	match, err := s.keyMatch(t, "t", "u", "k")
	if err != nil {
		return err
	}
	keys := make([]string, len(rows))
	for i, p := range rows {
		keys[i] = p.row.Key
	}
	args, err := keyArrays(t, keys)
	if err != nil {
		return err
	}
	n := len(t.KeyColumns())
	un, alias := keyUnnest(n, 1, "k")
	q := fmt.Sprintf("SELECT %s FROM unnest(%s) AS u(%s) WHERE NOT EXISTS (SELECT 1 FROM %s AS t WHERE %s)",
		keySelect(n, "u", "k"), un, alias, quoteTable(t), match)
	r, err := tx.Query(ctx, q, args...)
	if err != nil {
		return classify(fmt.Errorf("sink %s: check rows of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	missing, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (string, error) {
		dest, key := scanKey(n)
		err := row.Scan(dest...)
		return key(), err
	})
	if err != nil {
		return classify(fmt.Errorf("sink %s: check rows of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	if len(missing) == 0 {
		return nil
	}
	if ownKey {
		// The target owns the key: a streamed change of a row it does
		// not have (deleted here while the change was on its way) is
		// left out, since the delete travels the other way too; said at
		// INFO, with the keys, since a row not yet visible here would
		// look the same. A row copied from the other system (its
		// snapshot or a backfill) is a row that system has and the
		// owner does not: one the other system created (issue 11, case
		// 10). It is refused, never created here and never dropped
		// silently.
		var left []string
		for _, k := range missing {
			for _, p := range rows {
				if p.row.Key != k {
					continue
				}
				if p.copied {
					return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
						Err: fmt.Errorf("copied by %s's snapshot or a backfill, the row is not in %s: %w", p.source, s.cfg.System,
							&transform.OwnershipError{System: p.source, Table: e.Tables[p.source].QualifiedTable(), Entity: e.Name, Key: p.row.Key, Owner: s.cfg.System, Op: "insert"})}
				}
				left = append(left, k)
			}
		}
		if len(left) > 0 {
			shown := left[:min(len(left), 10)]
			s.log.Info("changes of rows this system owns and does not have were left out (deleted here while the change was on its way)",
				slog.String("entity", e.Name), slog.String("table", t.QualifiedTable()), slog.Int("rows", len(left)), slog.Any("keys", shown))
		}
		return nil
	}
	for _, p := range rows {
		if p.row.Key == missing[0] && len(p.row.Unknown) > 0 {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
				Err: fmt.Errorf("entity %s key %s: no row in %s to update, and the change left %v unchanged (unchanged TOAST) without their values: neither the old row (REPLICA IDENTITY FULL) nor the source row, read again by key, gave them (deleted since?), so the row is not created with them NULL",
					e.Name, p.row.Key, t.QualifiedTable(), p.row.Unknown)}
		}
		if p.row.Key == missing[0] {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
				Err: fmt.Errorf("entity %s key %s: no row in %s to update, and the event lacks %v to create one (NOT NULL without a default; give a value with default: in the mapping's %s table, or a DEFAULT in the table)",
					e.Name, p.row.Key, t.QualifiedTable(), s.lacking(t, p.row.Values), s.cfg.System)}
		}
	}
	return nil
}

// ensureKey adds the key columns' values to the columns a row writes,
// where the row does not write them already.
func ensureKey(r *transform.Row, t *transform.TableMap) {
	added := false
	for i, kc := range t.KeyColumns() {
		if slices.ContainsFunc(r.Values, func(v transform.ColValue) bool { return v.Column == kc }) {
			continue
		}
		txt := r.Key
		if len(r.KeyParts) > i {
			txt = r.KeyParts[i]
		}
		r.Values = append(r.Values, transform.ColValue{Column: kc, Text: txt})
		added = true
	}
	if added {
		slices.SortFunc(r.Values, func(a, b transform.ColValue) int { return strings.Compare(a.Column, b.Column) })
	}
}

// staleNotNull says whether a NOT NULL violation on column col of an
// insert that writes no value to col (neither the event nor a default: of
// the mapping) means the catalog is out of date: it shows the column as
// absent, nullable or with a default. The session is
// then marked for a new catalog (Apply reconnects). A second violation
// with the column described as it was at the last re-read is not stale
// (a DEFAULT that yields NULL, a trigger): that one is the data's.
func (s *Sink) staleNotNull(t *transform.TableMap, col string, cols []transform.ColValue) bool {
	if t.Default[col] != nil || slices.ContainsFunc(cols, func(c transform.ColValue) bool { return c.Column == col }) {
		return false // the NULL came from the event or the mapping
	}
	var now transform.ColumnInfo
	if ci := s.catalog.Tables[t.QualifiedTable()].Columns[col]; ci != nil {
		now = *ci
	}
	if now.NotNull && !now.HasDefault {
		return false
	}
	k := t.QualifiedTable() + "." + col
	if prev, ok := s.reread[k]; ok && prev == now {
		return false
	}
	if s.reread == nil {
		s.reread = map[string]transform.ColumnInfo{}
	}
	s.reread[k] = now
	s.stale = true
	return true
}
