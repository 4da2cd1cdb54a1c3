// Unique values the source assigns that moved between rows: stale holders
// released before the write.

package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// releaseUnique clears, in other rows, the values these rows are about to
// take in a nullable unique column that holds a field the flow's source
// assigns (a customer number the ERP hands out): the source owns the
// value, so a row still holding it is stale and gets its own number later.
// Without this, numbers that moved between rows (an ERP restored from a
// backup numbers its customers anew) would collide on the unique index.
func (s *Sink) releaseUnique(ctx context.Context, tx pgx.Tx, e *transform.Entity, t *transform.TableMap, rows []*pendingRow, args []any) error {
	ti := s.catalog.Tables[t.QualifiedTable()]
	cols := rows[0].row.Values
	// The rows' own key columns, to tell them from other rows.
	var keyArgs, keyTypes []string
	var keyVals []any
	for _, kc := range t.KeyColumns() {
		for ci, c := range cols {
			if c.Column == kc {
				kt, err := s.castType(t, kc)
				if err != nil {
					return err
				}
				keyArgs = append(keyArgs, fmt.Sprintf("$%d::text[]", len(keyVals)+2))
				keyTypes = append(keyTypes, fmt.Sprintf("u.k%d::%s", len(keyVals), kt))
				keyVals = append(keyVals, args[ci])
			}
		}
	}
	var keyCols, keyAlias []string
	for i, kc := range t.KeyColumns() {
		keyCols = append(keyCols, "t."+pgx.Identifier{kc}.Sanitize())
		keyAlias = append(keyAlias, fmt.Sprintf("k%d", i))
	}
	for ci, c := range cols {
		info := ti.Columns[c.Column]
		if isKeyColumn(t, c.Column) || c.InsertOnly || !ti.UniqueColumns[c.Column] || info == nil || info.NotNull || !s.assigned(e, t, c.Column) {
			continue
		}
		ct, err := s.castType(t, c.Column)
		if err != nil {
			return err
		}
		id := pgx.Identifier{c.Column}.Sanitize()
		// Every other row holding a value: those outside the batch and
		// those inside it that take another one (numbers swapped between
		// rows would otherwise collide within the statement).
		tag, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s AS t SET %s = NULL FROM unnest($1::text[], %s) AS u(v, %s)
			WHERE u.v IS NOT NULL AND t.%s = u.v::%s AND (%s) IS DISTINCT FROM (%s)`,
			quoteTable(t), id, strings.Join(keyArgs, ", "), strings.Join(keyAlias, ", "), id, ct,
			strings.Join(keyCols, ", ")+", NULL", strings.Join(keyTypes, ", ")+", NULL"), append([]any{args[ci]}, keyVals...)...)
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
		if ci := ti.Columns[c.Column]; !isKeyColumn(t, c.Column) && !c.InsertOnly && ti.UniqueColumns[c.Column] && ci != nil && !ci.NotNull && s.assigned(e, t, c.Column) {
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
			if f := e.Field(name); f != nil && f.Owner == s.cfg.Source && !e.IsKey(name) {
				return true
			}
		}
	}
	return false
}
