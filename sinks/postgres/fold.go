// Folding a batch to the last change per key.

package postgres

import (
	"slices"
	"strings"
	"time"

	"github.com/duplex-cdc/duplex/transform"
)

// pendingRow is the folded last change of one key in a batch.
type pendingRow struct {
	row     *transform.Row
	tx, ev  int // where the last change came from
	deleted bool
	source  string
	// at holds, per shared column, the source commit time of the write
	// whose value the row carries; from, when set, the system that made
	// it (a copied row carries recorded versions), else source.
	at   map[string]time.Time
	from map[string]string
	// redo: the change comes late (a held entity read again, a retried
	// dead letter); what duplex wrote to the row meanwhile is not a local
	// write newer than it.
	redo bool
	// ver holds, per shared column, the version to record once the row
	// is written: the incoming write's when it won, else the local one.
	ver map[string]version
}

// sourceOf is the system whose write a shared column's value is.
func (p *pendingRow) sourceOf(col string) string {
	if s, ok := p.from[col]; ok {
		return s
	}
	return p.source
}

type entityBatch struct {
	truncate bool
	keys     []string // in first-seen order
	rows     map[string]*pendingRow
}

// fold merges a change into the batch: the last change of a key wins, and
// an upsert that leaves some columns out keeps what an earlier upsert of
// the same key in the batch wrote to them.
func (s *Sink) fold(b *entityBatch, row *transform.Row, ti, ei int, ev *transform.Event) {
	if row.Op == transform.OpTruncate {
		b.truncate = true
		b.keys = nil
		b.rows = map[string]*pendingRow{}
		return
	}
	prev := b.rows[row.Key]
	if prev == nil {
		b.keys = append(b.keys, row.Key)
	}
	p := &pendingRow{row: row, tx: ti, ev: ei, deleted: row.Op == transform.OpDelete, source: ev.Source, redo: ev.Redo}
	shared := s.sharedColumns(row.Entity)
	for _, v := range row.Values {
		if f := shared[v.Column]; f != "" {
			if p.at == nil {
				p.at = map[string]time.Time{}
			}
			p.at[v.Column] = ev.Pos.CommitTime
			if fv, ok := ev.Versions[f]; ok {
				p.at[v.Column] = fv.At
				if p.from == nil {
					p.from = map[string]string{}
				}
				p.from[v.Column] = fv.Source
			}
		}
	}
	if prev != nil && !prev.deleted && !p.deleted {
		merged := *row
		merged.Values = append([]transform.ColValue(nil), row.Values...)
		merged.Unknown = nil
		for _, v := range prev.row.Values {
			i := slices.IndexFunc(merged.Values, func(x transform.ColValue) bool { return x.Column == v.Column })
			if i >= 0 && merged.Values[i].InsertOnly && !v.InsertOnly {
				// The earlier change wrote it and the later left it
				// unchanged: the written value is the row's value.
				merged.Values[i] = v
				continue
			}
			if i < 0 {
				merged.Values = append(merged.Values, v)
				if t, ok := prev.at[v.Column]; ok {
					if p.at == nil {
						p.at = map[string]time.Time{}
					}
					p.at[v.Column] = t
					if f, ok := prev.from[v.Column]; ok {
						if p.from == nil {
							p.from = map[string]string{}
						}
						p.from[v.Column] = f
					}
				}
			}
		}
		slices.SortFunc(merged.Values, func(a, b transform.ColValue) int { return strings.Compare(a.Column, b.Column) })
		// A field unknown to the later change is known when the earlier
		// one wrote (or carried) it.
		for _, f := range append(slices.Clone(row.Unknown), prev.row.Unknown...) {
			if c := row.Table.Columns[f]; !slices.Contains(merged.Unknown, f) &&
				(c == nil || !slices.ContainsFunc(merged.Values, func(x transform.ColValue) bool { return x.Column == c.Column })) {
				merged.Unknown = append(merged.Unknown, f)
			}
		}
		p.row = &merged
	}
	b.rows[row.Key] = p
}
