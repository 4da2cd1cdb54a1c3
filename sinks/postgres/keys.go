// Keys of one or several columns in generated SQL: rows are matched to
// their target rows by every key column.

package postgres

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// isKeyColumn says whether column is one of the table's key columns.
func isKeyColumn(t *transform.TableMap, column string) bool {
	return slices.Contains(t.KeyColumns(), column)
}

// keyMatch is the SQL that matches target rows (alias ta) to key values
// given as text in unnest columns of alias ua named <prefix>0, <prefix>1,
// … (one per key column, in KeyColumns order): "ta.a = ua.k0::int8 AND
// ta.b = ua.k1::text".
func (s *Sink) keyMatch(t *transform.TableMap, ta, ua, prefix string) (string, error) {
	var conds []string
	for i, kc := range t.KeyColumns() {
		kt, err := s.castType(t, kc)
		if err != nil {
			return "", err
		}
		conds = append(conds, fmt.Sprintf("%s.%s = %s.%s%d::%s", ta, pgx.Identifier{kc}.Sanitize(), ua, prefix, i, kt))
	}
	return strings.Join(conds, " AND "), nil
}

// keyUnnest returns the unnest arguments and column aliases of a key of
// n columns whose arrays are parameters $from, $from+1, …: "$1::text[],
// $2::text[]" and "k0, k1".
func keyUnnest(n, from int, prefix string) (args, alias string) {
	var a, l []string
	for i := range n {
		a = append(a, fmt.Sprintf("$%d::text[]", from+i))
		l = append(l, fmt.Sprintf("%s%d", prefix, i))
	}
	return strings.Join(a, ", "), strings.Join(l, ", ")
}

// keyArrays turns row keys (the text of their key columns joined by
// capture.JoinKey, see transform.Row) into one text array per key column,
// the query arguments of keyUnnest.
func keyArrays(t *transform.TableMap, keys []string) ([]any, error) {
	n := len(t.KeyColumns())
	arrs := make([][]string, n)
	for i := range arrs {
		arrs[i] = make([]string, len(keys))
	}
	for ri, k := range keys {
		parts, err := capture.SplitKey(k, n)
		if err != nil {
			return nil, err
		}
		for i, p := range parts {
			arrs[i][ri] = p
		}
	}
	out := make([]any, n)
	for i := range arrs {
		out[i] = arrs[i]
	}
	return out, nil
}

// keySelect is the SQL list of the key parts of unnest alias ua, for
// reading them back: "ua.k0, ua.k1".
func keySelect(n int, ua, prefix string) string {
	var l []string
	for i := range n {
		l = append(l, fmt.Sprintf("%s.%s%d", ua, prefix, i))
	}
	return strings.Join(l, ", ")
}

// scanKey scans n key parts and returns them joined like a row key.
func scanKey(n int) ([]any, func() string) {
	parts := make([]string, n)
	dest := make([]any, n)
	for i := range parts {
		dest[i] = &parts[i]
	}
	return dest, func() string { return capture.JoinKey(parts) }
}
