// Keys as the target compares them: two source keys that one target key
// column holds as one value (citext, char(n), numeric, a nondeterministic
// collation) are one row there.

package postgres

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

var (
	canonicalInt  = regexp.MustCompile(`^(0|-?[1-9][0-9]*)$`)
	canonicalUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// exactColumn says whether a key column holds two texts as one value only
// when they are the same text in its canonical form: integers, uuid, and
// text and varchar under a deterministic collation (PostgreSQL compares
// those byte by byte). Other types (citext, char(n), which ignores
// trailing spaces, numeric, where 1.0 = 1.00, …) may hold distinct texts
// as one key.
func (s *Sink) exactColumn(t *transform.TableMap, column string) bool {
	ti := s.catalog.Tables[t.QualifiedTable()]
	if ti == nil || ti.Columns[column] == nil {
		return false
	}
	switch ti.Columns[column].Type {
	case "int2", "int4", "int8", "uuid":
		return true
	case "text", "varchar":
		return !ti.Columns[column].Nondeterministic
	}
	return false
}

// exactText says whether text is in the canonical form of a column that
// exactColumn accepts: then text equality is key equality.
func (s *Sink) exactText(t *transform.TableMap, column, text string) bool {
	switch s.catalog.Tables[t.QualifiedTable()].Columns[column].Type {
	case "int2", "int4", "int8":
		return canonicalInt.MatchString(text)
	case "uuid":
		return canonicalUUID.MatchString(text)
	}
	return true
}

// sameKeys returns, for each key (one text per key column of cols), the
// index of the first key the target holds as the same value, by the key
// columns' own equality (GROUP BY casts to their types and collations),
// or nil when all keys are distinct there. Keys of exact columns in
// canonical form need no query.
func (s *Sink) sameKeys(ctx context.Context, tx pgx.Tx, t *transform.TableMap, cols []string, keys [][]string) ([]int, error) {
	if len(keys) < 2 {
		return nil, nil
	}
	exact := true
	for ci, c := range cols {
		if !s.exactColumn(t, c) {
			exact = false
			break
		}
		for _, k := range keys {
			if !s.exactText(t, c, k[ci]) {
				exact = false
				break
			}
		}
	}
	if exact {
		return nil, nil
	}
	var unnest, alias, group []string
	args := make([]any, len(cols))
	for ci, c := range cols {
		ct, err := s.castType(t, c)
		if err != nil {
			return nil, err
		}
		arr := make([]string, len(keys))
		for ki, k := range keys {
			arr[ki] = k[ci]
		}
		args[ci] = arr
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", ci+1))
		alias = append(alias, fmt.Sprintf("k%d", ci))
		g := fmt.Sprintf("(u.k%d::%s)", ci, ct)
		if coll := s.catalog.Tables[t.QualifiedTable()].Columns[c].Collation; coll != "" {
			g += " COLLATE " + coll
		}
		group = append(group, g)
	}
	q := fmt.Sprintf("SELECT array_agg(u.i ORDER BY u.i) FROM unnest(%s) WITH ORDINALITY AS u(%s, i) GROUP BY %s HAVING count(*) > 1",
		strings.Join(unnest, ", "), strings.Join(alias, ", "), strings.Join(group, ", "))
	r, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sink %s: compare keys of %s as the target does: %w", s.cfg.System, t.QualifiedTable(), err)
	}
	groups, err := pgx.CollectRows(r, pgx.RowTo[[]int64])
	if err != nil {
		return nil, fmt.Errorf("sink %s: compare keys of %s as the target does: %w", s.cfg.System, t.QualifiedTable(), err)
	}
	if len(groups) == 0 {
		return nil, nil
	}
	same := make([]int, len(keys))
	for i := range same {
		same[i] = i
	}
	for _, g := range groups {
		for _, i := range g {
			same[i-1] = int(g[0] - 1)
		}
	}
	return same, nil
}

// checkHolders refuses an upsert whose target row is held under another
// key text that the key column holds as the same value (a CRM contact
// 'Ann@x.com' when the target's citext key already holds 'ann@x.com'),
// unless this batch deleted that key: then the source changed the key's
// text and the row takes the new one. Otherwise two source keys land on
// one target row, and writing one over the other would lose a row without
// a word. Only for key columns that are not exact (exactColumn); a
// char(n) key cannot tell 'a' from 'a ' even here, as the stored value
// has lost the difference.
func (s *Sink) checkHolders(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, cols []string, rows []*pendingRow) error {
	var unnest, alias, on, stored, incoming []string
	args := make([]any, len(cols))
	for ci, c := range cols {
		ct, err := s.castType(t, c)
		if err != nil {
			return err
		}
		arr := make([]string, len(rows))
		for ri, p := range rows {
			arr[ri] = keyTexts(p.row, cols)[ci]
		}
		args[ci] = arr
		id := pgx.Identifier{c}.Sanitize()
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", ci+1))
		alias = append(alias, fmt.Sprintf("k%d", ci))
		on = append(on, fmt.Sprintf("t.%s = u.k%d::%s", id, ci, ct))
		// Compared byte by byte (COLLATE "C"): a nondeterministic
		// collation would call them equal.
		stored = append(stored, "t."+id+`::text COLLATE "C"`)
		incoming = append(incoming, fmt.Sprintf(`(u.k%d::%s)::text COLLATE "C"`, ci, ct))
	}
	var show []string
	for _, c := range cols {
		show = append(show, "t."+pgx.Identifier{c}.Sanitize()+"::text")
	}
	q := fmt.Sprintf("SELECT u.i, ARRAY[%s] FROM unnest(%s) WITH ORDINALITY AS u(%s, i) JOIN %s AS t ON %s WHERE (%s, NULL) IS DISTINCT FROM (%s, NULL)",
		strings.Join(show, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "), quoteTable(t), strings.Join(on, " AND "),
		strings.Join(stored, ", "), strings.Join(incoming, ", "))
	r, err := tx.Query(ctx, q, args...)
	if err != nil {
		return classify(fmt.Errorf("sink %s: check the keys %s holds for %s: %w", s.cfg.System, t.QualifiedTable(), e.Name, err), singleTx(rows), -1)
	}
	type holder struct {
		i    int64
		keys []string
	}
	found, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (holder, error) {
		var h holder
		return h, row.Scan(&h.i, &h.keys)
	})
	if err != nil {
		return classify(fmt.Errorf("sink %s: check the keys %s holds for %s: %w", s.cfg.System, t.QualifiedTable(), e.Name, err), singleTx(rows), -1)
	}
	for _, h := range found {
		p := rows[h.i-1]
		held := strings.Join(h.keys, ", ")
		if slices.Contains(p.released, held) {
			continue
		}
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
			Err: fmt.Errorf("entity %s: two source keys land on one target row: %s and %s (held by %s) are one value of key column %s, which cannot hold both rows; the %s of %s is refused, the row of %s is kept",
				e.Name, p.srcKey, held, t.QualifiedTable(), strings.Join(cols, ", "), p.row.Op, p.srcKey, held)}
	}
	return nil
}

// exactKeys says whether every key column is exact (exactColumn).
func (s *Sink) exactKeys(t *transform.TableMap, cols []string) bool {
	for _, c := range cols {
		if !s.exactColumn(t, c) {
			return false
		}
	}
	return true
}

// keyTexts returns a row's key as one text per key column (cols, in the
// table's KeyColumns order).
func keyTexts(r *transform.Row, cols []string) []string {
	if len(cols) > 1 && len(r.KeyParts) == len(cols) {
		return r.KeyParts
	}
	return []string{r.Key}
}

// keyColumns are the target table's key columns.
func keyColumns(t *transform.TableMap) []string {
	return t.KeyColumns()
}

// refusePaddedKey refuses a change whose key text ends in a space for a
// key column of type character(n) (bpchar): PostgreSQL pads such values
// with spaces and ignores trailing spaces when it compares them
// (https://www.postgresql.org/docs/current/datatype-character.html), so
// 'AB ' and 'AB' are one value there, and the stored row no longer shows
// which of the two source keys wrote it. Written, it would silently
// overwrite (or delete) the row of the other key, in this batch or in a
// later one; refused, the row of the key without spaces stays, and the
// dead letter names the column and the fix.
func (s *Sink) refusePaddedKey(c change) error {
	t := c.row.Table
	if s.catalog == nil || t == nil {
		return nil
	}
	ti := s.catalog.Tables[t.QualifiedTable()]
	if ti == nil {
		return nil
	}
	cols := keyColumns(t)
	texts := keyTexts(c.row, cols)
	for i, col := range cols {
		ci := ti.Columns[col]
		if ci == nil || ci.Type != "bpchar" || i >= len(texts) || !strings.HasSuffix(texts[i], " ") {
			continue
		}
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: c.ti, Event: c.ei,
			Err: fmt.Errorf("entity %s key %q: key column %s of %s is %s, which pads with spaces and compares without trailing spaces, so it cannot keep this key apart from %q: the %s is refused (a text or varchar key column keeps them apart)",
				c.row.Entity.Name, c.ev.Key, col, t.QualifiedTable(), ci.SQLType, strings.TrimRight(texts[i], " "), c.row.Op)}
	}
	return nil
}
