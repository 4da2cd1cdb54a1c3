// SQL generation: upsert and update statements from unnest of text
// arrays, cast to the column types read from the catalog; generated once
// per entity and column set.

package postgres

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

func (s *Sink) castType(t *transform.TableMap, column string) (string, error) {
	ti := s.catalog.Tables[t.QualifiedTable()]
	if ti == nil || ti.Columns[column] == nil {
		return "", fmt.Errorf("sink %s: column %s of %s is not in the catalog", s.cfg.System, column, t.QualifiedTable())
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

// createsRows says whether this sink may create rows of the entity with
// these columns: they can make a row (canInsert), and the entity's key is
// not owned by the target itself. An entity lives and dies in the system
// that owns its key: a row of it there was made there, so another
// system's write to a row the target no longer has (deleted there while
// the write was on its way, or the target restored from an older backup)
// is not a new row; it updates existing rows only, and one that is gone
// is left gone (checkUpdated).
func (s *Sink) createsRows(e *transform.Entity, t *transform.TableMap, cols []transform.ColValue) bool {
	return e.KeyOwner() != s.cfg.System && s.canInsert(t, cols)
}

// writeSQL returns the statement that writes rows with these columns:
// an upsert when they can create the row (createsRows), else an update
// of existing rows.
func (s *Sink) writeSQL(e *transform.Entity, t *transform.TableMap, sig string, cols []transform.ColValue) (string, error) {
	if q, ok := s.stmts[e.Name+"|"+sig]; ok {
		return q, nil
	}
	if !s.createsRows(e, t, cols) {
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
