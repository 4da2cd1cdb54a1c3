// Foreign keys, checked by duplex: the sink applies with
// session_replication_role = replica, as PostgreSQL's own apply worker
// does, so that ordinary triggers (and rules) of the target do not fire on
// replicated rows. Foreign keys are triggers too in PostgreSQL, so they
// are not checked in that mode
// (https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-SESSION-REPLICATION-ROLE):
// the sink checks them itself at the end of each target transaction, like
// a deferred constraint, and performs their ON DELETE actions.

package postgres

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// foreignKey is one foreign key constraint of, or into, a mapped table.
type foreignKey struct {
	name                  string
	child, parent         string // "schema.table"
	childSQL, parentSQL   string // quoted
	childCols, parentCols []string
	types                 []string // of the parent columns, without modifier
	onDelete              string   // pg_constraint.confdeltype: a, r, c, n, d
}

// readForeignKeys reads the foreign keys whose referencing or referenced
// table is one of tables ("schema.table"); the clones a partitioned
// table's constraint has on its partitions are left out.
func readForeignKeys(ctx context.Context, conn *pgx.Conn, tables []string) ([]foreignKey, error) {
	rows, err := conn.Query(ctx, `
SELECT c.conname, cn.nspname || '.' || cc.relname, quote_ident(cn.nspname) || '.' || quote_ident(cc.relname),
       pn.nspname || '.' || pc.relname, quote_ident(pn.nspname) || '.' || quote_ident(pc.relname),
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT format_type(a.atttypid, NULL) FROM unnest(c.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
       c.confdeltype::text
FROM pg_constraint c
JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0
  AND (cn.nspname || '.' || cc.relname = ANY($1) OR pn.nspname || '.' || pc.relname = ANY($1))
ORDER BY 1`, tables)
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (foreignKey, error) {
		var fk foreignKey
		err := r.Scan(&fk.name, &fk.child, &fk.childSQL, &fk.parent, &fk.parentSQL, &fk.childCols, &fk.parentCols, &fk.types, &fk.onDelete)
		return fk, err
	})
}

// match is "a.x = b.y AND …" over the key's columns; cast, when set,
// casts b's side (a text array element) to the parent column's type.
func (fk *foreignKey) match(a string, acols []string, b string, bcols []string, cast bool) string {
	parts := make([]string, len(acols))
	for i := range acols {
		rhs := b + "." + pgx.Identifier{bcols[i]}.Sanitize()
		if cast {
			rhs += "::" + fk.types[i]
		}
		parts[i] = a + "." + pgx.Identifier{acols[i]}.Sanitize() + " = " + rhs
	}
	return strings.Join(parts, " AND ")
}

// vcols names the columns of the unnest of referenced values: v1, v2, ….
func vcols(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("v%d", i+1)
	}
	return out
}

// unnestOf is "unnest($1::text[], …) WITH ORDINALITY AS u(v1, …, i)".
func unnestOf(n int) string {
	args := make([]string, n)
	for i := range args {
		args[i] = fmt.Sprintf("$%d::text[]", i+1)
	}
	return fmt.Sprintf("unnest(%s) WITH ORDINALITY AS u(%s, i)", strings.Join(args, ", "), strings.Join(vcols(n), ", "))
}

// refSet is the values rows about to be deleted from fk.parent hold in the
// columns fk references, each with the pendingRow whose delete removes it.
type refSet struct {
	fk   *foreignKey
	vals [][]*string // per column
	from []*pendingRow
	// via names the delete that led here (an entity's key, or a cascade).
	via []string
}

func (r *refSet) args() []any {
	out := make([]any, len(r.vals))
	for i, v := range r.vals {
		out[i] = v
	}
	return out
}

// referencedByDeletes reads, before the deletes, what the rows to be
// deleted hold in the columns that foreign keys reference.
func (s *Sink) referencedByDeletes(ctx context.Context, tx pgx.Tx, batches map[string]*entityBatch) ([]*refSet, error) {
	var out []*refSet
	for _, e := range s.order {
		b := batches[e.Name]
		if b == nil {
			continue
		}
		t := e.Tables[s.cfg.System]
		var keys []string
		for _, k := range b.keys {
			if b.rows[k].deleted {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		for i := range s.fks {
			fk := &s.fks[i]
			if fk.parent != t.QualifiedTable() {
				continue
			}
			match, err := s.keyMatch(t, "p", "u", "k")
			if err != nil {
				return nil, err
			}
			args, err := keyArrays(t, keys)
			if err != nil {
				return nil, err
			}
			un, alias := keyUnnest(len(t.KeyColumns()), 1, "k")
			cols := make([]string, len(fk.parentCols))
			for j, c := range fk.parentCols {
				cols[j] = "p." + pgx.Identifier{c}.Sanitize() + "::text"
			}
			q := fmt.Sprintf("SELECT u.n::text, %s FROM %s p JOIN unnest(%s) WITH ORDINALITY AS u(%s, n) ON %s",
				strings.Join(cols, ", "), fk.parentSQL, un, alias, match)
			rs, err := s.collectRefs(ctx, tx, fk, q, args, func(n string) (*pendingRow, string) {
				key := keyAt(keys, n)
				return b.rows[key], fmt.Sprintf("entity %s key %s", e.Name, key)
			})
			if err != nil {
				return nil, err
			}
			if rs != nil {
				out = append(out, rs)
			}
		}
	}
	return out, nil
}

// collectRefs runs q, whose rows are (tag, referenced column values…), into a
// refSet; who maps a tag to the delete it comes from.
func (s *Sink) collectRefs(ctx context.Context, tx pgx.Tx, fk *foreignKey, q string, args []any, who func(string) (*pendingRow, string)) (*refSet, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, classify(fmt.Errorf("sink %s: foreign key %s: read what deleted rows of %s hold: %w", s.cfg.System, fk.name, fk.parent, err), -1, -1)
	}
	rs := &refSet{fk: fk, vals: make([][]*string, len(fk.parentCols))}
	n := len(fk.parentCols)
	for rows.Next() {
		dst := make([]*string, n+1)
		ptrs := make([]any, n+1)
		for i := range dst {
			ptrs[i] = &dst[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return nil, classify(fmt.Errorf("sink %s: foreign key %s: %w", s.cfg.System, fk.name, err), -1, -1)
		}
		if slices.Contains(dst[1:], nil) {
			continue // MATCH SIMPLE: a NULL references nothing
		}
		p, via := who(*dst[0])
		for i := range n {
			rs.vals[i] = append(rs.vals[i], dst[i+1])
		}
		rs.from = append(rs.from, p)
		rs.via = append(rs.via, via)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("sink %s: foreign key %s: %w", s.cfg.System, fk.name, err), -1, -1)
	}
	if len(rs.from) == 0 {
		return nil, nil
	}
	return rs, nil
}

// checkForeignKeys checks, after the batch's writes, every foreign key of
// a table it wrote rows to (the parent exists) and every foreign key into
// a table it deleted rows from (no child is left referencing a deleted
// row): a violation is a permanent error of the event that made it,
// worded as PostgreSQL words it. A child left behind by a delete gets its
// constraint's ON DELETE action (CASCADE, SET NULL, SET DEFAULT) instead,
// as PostgreSQL would have performed it.
func (s *Sink) checkForeignKeys(ctx context.Context, tx pgx.Tx, batches map[string]*entityBatch, refs []*refSet) error {
	for _, e := range s.order {
		b := batches[e.Name]
		if b == nil {
			continue
		}
		if err := s.checkParents(ctx, tx, e, b); err != nil {
			return err
		}
	}
	for _, rs := range refs {
		if err := s.checkChildren(ctx, tx, rs, 0); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) checkParents(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	t := e.Tables[s.cfg.System]
	var keys []string
	for _, k := range b.keys {
		// A copied row (snapshot, backfill) may refer to a row a later
		// chunk copies: a table's chunks go in key order, so a row whose
		// parent has a higher key (a self-reference) or lives in a table
		// copied later (a cycle) comes first. The source held them
		// consistent at the copy's snapshot, so the target is consistent
		// once the copy completes; PostgreSQL's own table
		// synchronization copies with session_replication_role = replica
		// and checks nothing either.
		if p := b.rows[k]; !p.deleted && !p.copied {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	for i := range s.fks {
		fk := &s.fks[i]
		if fk.child != t.QualifiedTable() {
			continue
		}
		match, err := s.keyMatch(t, "c", "u", "k")
		if err != nil {
			return err
		}
		args, err := keyArrays(t, keys)
		if err != nil {
			return err
		}
		un, alias := keyUnnest(len(t.KeyColumns()), 1, "k")
		var notNull, vals []string
		for _, c := range fk.childCols {
			notNull = append(notNull, "c."+pgx.Identifier{c}.Sanitize()+" IS NOT NULL")
			vals = append(vals, "c."+pgx.Identifier{c}.Sanitize()+"::text")
		}
		q := fmt.Sprintf("SELECT u.n::text, concat_ws(', ', %s) FROM %s c JOIN unnest(%s) WITH ORDINALITY AS u(%s, n) ON %s WHERE %s AND NOT EXISTS (SELECT 1 FROM %s p WHERE %s) LIMIT 1",
			strings.Join(vals, ", "), fk.childSQL, un, alias, match,
			strings.Join(notNull, " AND "), fk.parentSQL, fk.match("p", fk.parentCols, "c", fk.childCols, false))
		var n, v string
		err = tx.QueryRow(ctx, q, args...).Scan(&n, &v)
		key := keyAt(keys, n)
		if err == pgx.ErrNoRows {
			continue
		}
		if err != nil {
			return classify(fmt.Errorf("sink %s: check foreign key %s: %w", s.cfg.System, fk.name, err), -1, -1)
		}
		p := b.rows[key]
		if p == nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: -1, Event: -1, Err: fmt.Errorf("sink %s: foreign key %s: key %s", s.cfg.System, fk.name, key)}
		}
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev, Err: fmt.Errorf(
			"entity %s key %s: insert or update on table %s violates foreign key constraint %s: key (%s)=(%s) is not present in table %s (checked by duplex, which applies with session_replication_role = replica)",
			e.Name, key, fk.child, fk.name, strings.Join(fk.childCols, ", "), v, fk.parent)}
	}
	return nil
}

// checkChildren handles the children left referencing rows a batch (or a
// cascade, depth > 0) deleted from rs.fk.parent.
func (s *Sink) checkChildren(ctx context.Context, tx pgx.Tx, rs *refSet, depth int) error {
	fk := rs.fk
	n := len(fk.parentCols)
	u := unnestOf(n)
	// Values still referenced by a child and no longer present in the
	// parent (a row deleted and made again in the batch is fine).
	q := fmt.Sprintf("SELECT u.i FROM %s WHERE EXISTS (SELECT 1 FROM %s c WHERE %s) AND NOT EXISTS (SELECT 1 FROM %s p WHERE %s)",
		u, fk.childSQL, fk.match("c", fk.childCols, "u", vcols(n), true), fk.parentSQL, fk.match("p", fk.parentCols, "u", vcols(n), true))
	rows, err := tx.Query(ctx, q, rs.args()...)
	if err != nil {
		return classify(fmt.Errorf("sink %s: check foreign key %s: %w", s.cfg.System, fk.name, err), -1, -1)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return classify(fmt.Errorf("sink %s: check foreign key %s: %w", s.cfg.System, fk.name, err), -1, -1)
	}
	if len(idx) == 0 {
		return nil
	}
	first := int(idx[0]) - 1
	fail := func(why string) error {
		p := rs.from[first]
		vals := make([]string, n)
		for i := range n {
			vals[i] = *rs.vals[i][first]
		}
		err := fmt.Errorf("%s: update or delete on table %s violates foreign key constraint %s on table %s: key (%s)=(%s) is still referenced from table %s (%s; checked by duplex, which applies with session_replication_role = replica)",
			rs.via[first], fk.parent, fk.name, fk.child, strings.Join(fk.parentCols, ", "), strings.Join(vals, ", "), fk.child, why)
		if p == nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: -1, Event: -1, Err: err}
		}
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev, Err: err}
	}
	if depth >= 8 {
		return fail("ON DELETE actions nested deeper than 8 tables")
	}
	// Only the referenced values still referenced.
	keep := &refSet{fk: fk, vals: make([][]*string, n)}
	for _, i := range idx {
		j := int(i) - 1
		for c := range n {
			keep.vals[c] = append(keep.vals[c], rs.vals[c][j])
		}
		keep.from = append(keep.from, rs.from[j])
		keep.via = append(keep.via, rs.via[j])
	}
	match := fk.match("c", fk.childCols, "u", vcols(n), true)
	switch fk.onDelete {
	case "c": // CASCADE: delete the children, and follow foreign keys into them
		var nested []*refSet
		for i := range s.fks {
			into := &s.fks[i]
			if into.parent != fk.child {
				continue
			}
			cols := make([]string, len(into.parentCols))
			for j, c := range into.parentCols {
				cols[j] = "c." + pgx.Identifier{c}.Sanitize() + "::text"
			}
			q := fmt.Sprintf("SELECT (u.i - 1)::text, %s FROM %s c JOIN %s ON %s", strings.Join(cols, ", "), fk.childSQL, unnestOf(n), match)
			sub, err := s.collectRefs(ctx, tx, into, q, keep.args(), func(tag string) (*pendingRow, string) {
				var j int
				fmt.Sscan(tag, &j)
				return keep.from[j], keep.via[j] + ", cascading to " + fk.child
			})
			if err != nil {
				return err
			}
			if sub != nil {
				nested = append(nested, sub)
			}
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s c USING %s WHERE %s", fk.childSQL, unnestOf(n), match), keep.args()...); err != nil {
			return classify(fmt.Errorf("sink %s: foreign key %s: ON DELETE CASCADE into %s: %w", s.cfg.System, fk.name, fk.child, err), keep.from[0].tx, keep.from[0].ev)
		}
		for _, sub := range nested {
			if err := s.checkChildren(ctx, tx, sub, depth+1); err != nil {
				return err
			}
		}
		return nil
	case "n", "d": // SET NULL, SET DEFAULT
		to := "NULL"
		if fk.onDelete == "d" {
			to = "DEFAULT"
		}
		sets := make([]string, len(fk.childCols))
		for i, c := range fk.childCols {
			sets[i] = pgx.Identifier{c}.Sanitize() + " = " + to
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s c SET %s FROM %s WHERE %s", fk.childSQL, strings.Join(sets, ", "), unnestOf(n), match), keep.args()...); err != nil {
			return classify(fmt.Errorf("sink %s: foreign key %s: ON DELETE SET %s in %s: %w", s.cfg.System, fk.name, to, fk.child, err), keep.from[0].tx, keep.from[0].ev)
		}
		return nil
	}
	return fail("ON DELETE NO ACTION/RESTRICT")
}

// keyAt returns keys[n-1] for the ordinality n (text) of an unnest over
// keys, "" when n is not one.
func keyAt(keys []string, n string) string {
	i, err := strconv.Atoi(n)
	if err != nil || i < 1 || i > len(keys) {
		return ""
	}
	return keys[i-1]
}
