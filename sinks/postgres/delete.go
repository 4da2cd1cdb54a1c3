// Deletes of folded rows.

package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

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
