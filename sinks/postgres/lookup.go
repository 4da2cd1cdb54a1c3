// References: canonical keys replaced by the referenced rows' values in
// the target.

package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

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
