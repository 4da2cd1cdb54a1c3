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
	var q string
	var args []any
	if kcs := t.KeyColumns(); len(kcs) == 1 {
		kt, err := s.castType(t, kcs[0])
		if err != nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: from[0].tx, Event: from[0].ev, Err: err}
		}
		q = fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1::text[]::%s[])", quoteTable(t), pgx.Identifier{kcs[0]}.Sanitize(), kt)
		arr := make([]*string, len(keys))
		for i := range keys {
			arr[i] = &keys[i]
		}
		args = []any{arr}
	} else {
		match, err := s.keyMatch(t, "t", "u", "k")
		if err == nil {
			args, err = keyArrays(t, keys)
		}
		if err != nil {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: from[0].tx, Event: from[0].ev, Err: err}
		}
		un, alias := keyUnnest(len(kcs), 1, "k")
		q = fmt.Sprintf("DELETE FROM %s AS t USING unnest(%s) AS u(%s) WHERE %s", quoteTable(t), un, alias, match)
	}
	_, err := s.execRows(ctx, tx, q, from, args, func(n int) string {
		return fmt.Sprintf("delete %d rows from %s (entity %s)", n, t.QualifiedTable(), e.Name)
	})
	return err
}
