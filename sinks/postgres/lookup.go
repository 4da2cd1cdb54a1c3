// References: canonical keys replaced by the referenced rows' values in
// the target.

package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// resolveRefs replaces canonical keys in reference columns by the values
// of the referenced rows in the target (for example a customer's
// customer_no found by its crm_account_id).
func (s *Sink) resolveRefs(ctx context.Context, tx pgx.Tx, e *transform.Entity, rows []*pendingRow) error {
	if !slices.ContainsFunc(rows[0].row.Values, func(v transform.ColValue) bool { return v.Ref != nil }) {
		return nil
	}
	// A row may be the change's own, which every attempt at the batch
	// folds again: the resolved values go into a copy, so that an attempt
	// rolled back to its savepoint (writePerTx, then writeInOrder) looks
	// each reference up again. Resolved in place, the retry kept the
	// value read in the rolled-back attempt (a parent inserted there, and
	// again with a new serial in the retry): the foreign-key check then
	// refused a valid transaction.
	for _, p := range rows {
		row := *p.row
		row.Values = slices.Clone(row.Values)
		p.row = &row
	}
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
		// The canonical value is the referenced row's key (or match
		// fields): one value, or several joined by capture.JoinKey.
		mfs := c.Ref.MatchFields(re)
		var conds []string
		for i, mf := range mfs {
			mc := rt.Columns[mf].Column
			kt, err := s.castType(rt, mc)
			if err != nil {
				return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: rows[0].tx, Event: rows[0].ev, Err: err}
			}
			conds = append(conds, fmt.Sprintf("r.%s = u.k%d::%s", pgx.Identifier{mc}.Sanitize(), i, kt))
		}
		args := make([]any, len(mfs))
		parts := make([][]string, len(mfs))
		for _, k := range want {
			ps, err := capture.SplitKey(k, len(mfs))
			if err != nil {
				for _, p := range rows {
					if v := p.row.Values[ci]; !v.Null && v.Text == k {
						return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: p.tx, Event: p.ev,
							Err: fmt.Errorf("entity %s key %s: reference to %s: %w", e.Name, p.row.Key, re.Name, err)}
					}
				}
				return err
			}
			for i := range ps {
				parts[i] = append(parts[i], ps[i])
			}
		}
		for i := range parts {
			args[i] = parts[i]
		}
		un, alias := keyUnnest(len(mfs), 1, "k")
		q := fmt.Sprintf("SELECT %s, r.%s::text FROM unnest(%s) AS u(%s) JOIN %s AS r ON %s",
			keySelect(len(mfs), "u", "k"), pgx.Identifier{c.Ref.Column}.Sanitize(), un, alias, quoteTable(rt), strings.Join(conds, " AND "))
		found, err := tx.Query(ctx, q, args...)
		if err != nil {
			return classify(fmt.Errorf("sink %s: resolve %s references: %w", s.cfg.System, re.Name, err), -1, -1)
		}
		for found.Next() {
			var v *string
			dest, key := scanKey(len(mfs))
			if err := found.Scan(append(dest, &v)...); err != nil {
				found.Close()
				return classify(fmt.Errorf("sink %s: resolve %s references: %w", s.cfg.System, re.Name, err), -1, -1)
			}
			if v != nil {
				keys[key()] = *v
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
					Err: fmt.Errorf("entity %s key %s: referenced %s with %s %s has not arrived in %s yet", e.Name, p.row.Key, re.Name, transform.Names(mfs), v.Text, s.cfg.System)}
			}
			v.Text, v.Ref = got, nil
		}
	}
	return nil
}
