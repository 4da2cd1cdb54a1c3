// SQL generation: upsert and update statements from unnest of text
// arrays, cast to the column types read from the catalog; generated once
// per entity and column set.

package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgcatalog"
	"github.com/duplex-cdc/duplex/transform"
)

// castType is the type a column's values are cast to. A column the
// session's catalog does not know (added to the target after the session
// read it, or dropped from it) is a transient error that marks the
// catalog stale: the next attempt starts a session that reads it again,
// so a column added meanwhile is found, and one really gone keeps the
// flow retrying with its lag visible until the column is back (as the
// soak's "mapped column dropped then restored" fault does).
func (s *Sink) castType(t *transform.TableMap, column string) (string, error) {
	ti := s.catalog.Tables[t.QualifiedTable()]
	if ti == nil || ti.Columns[column] == nil {
		s.stale = true
		return "", fmt.Errorf("sink %s: column %s of %s is not in the catalog read at the session's start (reading it again)", s.cfg.System, column, t.QualifiedTable())
	}
	return ti.Columns[column].CastType, nil
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
// NOT NULL column without a default is among them or has a default: in
// the mapping. A flow that carries only the fields its source owns often
// cannot create a row (the ERP's write-back of customer_no to a CRM
// account): it updates existing rows.
func (s *Sink) canInsert(t *transform.TableMap, cols []transform.ColValue) bool {
	return len(s.lacking(t, cols)) == 0
}

// lacking lists, sorted, the NOT NULL columns without a default (in the
// table or the mapping) that an insert of these columns leaves empty.
func (s *Sink) lacking(t *transform.TableMap, cols []transform.ColValue) []string {
	var out []string
	for name, ci := range s.catalog.Tables[t.QualifiedTable()].Columns {
		if ci.NotNull && !ci.HasDefault && t.Default[name] == nil && !slices.ContainsFunc(cols, func(c transform.ColValue) bool { return c.Column == name }) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// defaultExprs returns, sorted by column, the columns with a default: in
// the mapping that an insert of these columns does not write, and the SQL
// of each value: a constant as a literal, an expression as written, both
// cast to the column's type.
func (s *Sink) defaultExprs(t *transform.TableMap, cols []transform.ColValue) (names, exprs []string, err error) {
	for _, col := range slices.Sorted(maps.Keys(t.Default)) {
		if slices.ContainsFunc(cols, func(c transform.ColValue) bool { return c.Column == col }) {
			continue
		}
		ct, err := s.castType(t, col)
		if err != nil {
			return nil, nil, err
		}
		d := t.Default[col]
		names = append(names, pgx.Identifier{col}.Sanitize())
		if d.Value != nil {
			exprs = append(exprs, quoteLiteral(*d.Value)+"::"+ct)
		} else {
			exprs = append(exprs, "("+d.SQL+")::"+ct)
		}
	}
	return names, exprs, nil
}

// quoteLiteral quotes s as an SQL string constant. The escape-string form
// (E'...') reads backslashes the same whatever standard_conforming_strings
// says, so nothing in s can end the literal.
func quoteLiteral(s string) string {
	return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

// insertable says whether rows of this shape can be created: the
// entity's key is not owned by the target itself, and they know every
// value (no Unknown unchanged field) and give every NOT NULL column one
// (canInsert). An entity lives and dies in the system that owns its key:
// a row of it there was made there, so another system's write to a row
// the target no longer has (deleted there while the write was on its
// way, or the target restored from an older backup) is not a new row; it
// updates existing rows only, and one that is gone is left gone
// (checkUpdated).
func (s *Sink) insertable(e *transform.Entity, t *transform.TableMap, r *transform.Row) bool {
	return e.KeyOwner() != s.cfg.System && len(r.Unknown) == 0 && s.canInsert(t, r.Values)
}

// writeSQL returns the statement that writes rows of this shape (r is
// one of them; sig their signature): an upsert when they can create the
// row, else an update of existing rows.
func (s *Sink) writeSQL(e *transform.Entity, t *transform.TableMap, sig string, r *transform.Row) (string, error) {
	cols := r.Values
	if q, ok := s.stmts[e.Name+"|"+sig]; ok {
		return q, nil
	}
	if !s.insertable(e, t, r) {
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
	var unnest, alias, set, cmpT, cmpU, keyExpr []string
	for i, c := range cols {
		ct, err := s.castType(t, c.Column)
		if err != nil {
			return "", err
		}
		id := pgx.Identifier{c.Column}.Sanitize()
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		alias = append(alias, fmt.Sprintf("v%d", i))
		val := fmt.Sprintf("u.v%d::%s", i, ct)
		if isKeyColumn(t, c.Column) {
			keyExpr = append(keyExpr, "t."+id+" = "+val)
			if !s.exactColumn(t, c.Column) {
				// The key's text may change within one value (citext
				// 'Ann@x.com' for 'ann@x.com'): the row takes the new one.
				set = append(set, id+" = "+val)
				cmpT = append(cmpT, "t."+id+`::text COLLATE "C"`)
				cmpU = append(cmpU, "("+val+`)::text COLLATE "C"`)
			}
			continue
		}
		if c.InsertOnly {
			continue // an unchanged value: a row that exists keeps its own
		}
		set = append(set, id+" = "+val)
		cmpT = append(cmpT, s.comparable(t, c.Column, "t."+id))
		cmpU = append(cmpU, s.comparable(t, c.Column, "("+val+")"))
	}
	if len(set) == 0 {
		// Nothing but the key (a conflict dropped every value): a
		// statement that writes nothing, taking the key's parameter.
		return fmt.Sprintf("SELECT 1 FROM unnest(%s) WHERE false", strings.Join(unnest, ", ")), nil
	}
	return fmt.Sprintf("UPDATE %s AS t SET %s FROM unnest(%s) AS u(%s) WHERE %s AND (%s, NULL) IS DISTINCT FROM (%s, NULL)",
		quoteTable(t), strings.Join(set, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "), strings.Join(keyExpr, " AND "),
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
		switch {
		case c.InsertOnly:
			// an unchanged value: a row that exists keeps its own
		case !isKeyColumn(t, c.Column):
			set = append(set, id+" = EXCLUDED."+id)
			cmpT = append(cmpT, s.comparable(t, c.Column, "t."+id))
			cmpE = append(cmpE, s.comparable(t, c.Column, "EXCLUDED."+id))
		case !s.exactColumn(t, c.Column):
			// The key's text may change within one value (citext
			// 'Ann@x.com' for 'ann@x.com'): the row takes the new one.
			set = append(set, id+" = EXCLUDED."+id)
			cmpT = append(cmpT, "t."+id+`::text COLLATE "C"`)
			cmpE = append(cmpE, "EXCLUDED."+id+`::text COLLATE "C"`)
		}
	}
	// Defaults of the mapping fill what a new row lacks; a row that
	// exists keeps its values (they are not in the SET list).
	dn, de, err := s.defaultExprs(t, cols)
	if err != nil {
		return "", err
	}
	names, sel = append(names, dn...), append(sel, de...)
	var conflict []string
	for _, kc := range t.KeyColumns() {
		conflict = append(conflict, pgx.Identifier{kc}.Sanitize())
	}
	q := fmt.Sprintf("INSERT INTO %s AS t (%s) SELECT %s FROM unnest(%s) AS u(%s) ON CONFLICT (%s) ",
		quoteTable(t), strings.Join(names, ", "), strings.Join(sel, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "),
		strings.Join(conflict, ", "))
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

func quoteTable(t *transform.TableMap) string {
	return pgx.Identifier{t.Schema(), t.Name()}.Sanitize()
}

// CheckDefaults checks the default: values of the mapping's tables in
// system against its database: each constant must be valid input for its
// column's type and each SQL expression must plan (EXPLAIN, so nothing is
// evaluated and no sequence moves). cat is the system's catalog. A
// default that fails here would fail every insert that uses it; the error
// names table, column and PostgreSQL's reason.
func CheckDefaults(ctx context.Context, q pgcatalog.Querier, m *transform.Mapping, system string, cat *transform.Catalog) error {
	var errs []error
	for _, e := range m.Entities {
		t := e.Tables[system]
		if t == nil || len(t.Default) == 0 {
			continue
		}
		ti := cat.Tables[t.QualifiedTable()]
		if ti == nil {
			continue
		}
		for _, col := range slices.Sorted(maps.Keys(t.Default)) {
			ci := ti.Columns[col]
			if ci == nil {
				continue // transform's check names it
			}
			d := t.Default[col]
			expr := "(" + d.SQL + ")::" + ci.CastType
			if d.Value != nil {
				expr = quoteLiteral(*d.Value) + "::" + ci.CastType
			}
			r, err := q.Query(ctx, "EXPLAIN (COSTS OFF) SELECT "+expr)
			if err == nil {
				for r.Next() {
				}
				r.Close()
				err = r.Err()
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s table %s (entity %s): default for column %s %s: %w", system, t.QualifiedTable(), e.Name, col, ci.SQLType, err))
			}
		}
	}
	return errors.Join(errs...)
}
