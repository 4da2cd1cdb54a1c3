// Folding a batch to the last change per key, as the target compares keys.

package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// pendingRow is the folded last change of one key in a batch.
type pendingRow struct {
	row     *transform.Row
	tx, ev  int // where the last change came from
	deleted bool
	source  string
	// srcKey is the canonical key of the source row the change is of;
	// released holds the target key texts of other source keys deleted
	// earlier in the batch that the target holds as this row's key.
	srcKey   string
	released []string
	// at holds, per shared column, the source commit time of the write
	// whose value the row carries; from, when set, the system that made
	// it (a copied row carries recorded versions), else source.
	at   map[string]time.Time
	from map[string]string
	// copied: the last change is a row copied by a snapshot or backfill.
	copied bool
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

// foldEntity folds the changes of one entity, in source order, to the
// last change per key as the target compares keys (sameKeys): the rows of
// two texts a citext or char(n) key column holds as one value are one row
// there. Two source keys that land on one target row while both exist are
// a collision: the later change is refused, naming both.
func (s *Sink) foldEntity(ctx context.Context, tx pgx.Tx, e *transform.Entity, cs []change) (*entityBatch, error) {
	t := e.Tables[s.cfg.System]
	cols := keyColumns(t)
	var texts []string
	var keys [][]string
	index := map[string]int{}
	for _, c := range cs {
		if c.row.Op == transform.OpTruncate {
			continue
		}
		if _, ok := index[c.row.Key]; !ok {
			index[c.row.Key] = len(keys)
			texts = append(texts, c.row.Key)
			keys = append(keys, keyTexts(c.row, cols))
		}
	}
	same, err := s.sameKeys(ctx, tx, t, cols, keys)
	if err != nil {
		return nil, classify(err, singleTxOf(cs), -1)
	}
	b := &entityBatch{rows: map[string]*pendingRow{}}
	for _, c := range cs {
		k := c.row.Key
		if same != nil && c.row.Op != transform.OpTruncate {
			k = texts[same[index[k]]]
		}
		if err := s.fold(b, k, c); err != nil {
			return nil, err
		}
	}
	// Keyed by the text each row writes from here on.
	rows := make(map[string]*pendingRow, len(b.rows))
	for i, k := range b.keys {
		p := b.rows[k]
		b.keys[i] = p.row.Key
		rows[p.row.Key] = p
	}
	b.rows = rows
	return b, nil
}

// singleTxOf returns the batch index of the transaction all changes come
// from, or -1 when they come from several.
func singleTxOf(cs []change) int {
	for _, c := range cs {
		if c.ti != cs[0].ti {
			return -1
		}
	}
	return cs[0].ti
}

// fold merges a change into the batch under key k: the last change of a
// key wins, and an upsert that leaves some columns out keeps what an
// earlier upsert of the same key in the batch wrote to them.
func (s *Sink) fold(b *entityBatch, k string, c change) error {
	row, ti, ei, ev := c.row, c.ti, c.ei, c.ev
	if row.Op != transform.OpTruncate {
		if err := s.refusePaddedKey(c); err != nil {
			return err
		}
	}
	if row.Op == transform.OpTruncate {
		b.truncate = true
		b.keys = nil
		b.rows = map[string]*pendingRow{}
		return nil
	}
	prev := b.rows[k]
	if prev == nil {
		b.keys = append(b.keys, k)
	}
	if prev != nil && !prev.deleted && prev.srcKey != ev.Key {
		t := row.Table
		return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: ti, Event: ei,
			Err: fmt.Errorf("entity %s: two source keys land on one target row: %s and %s are one value of key column %s of %s, which cannot hold both rows; the %s of %s is refused, the row of %s is kept",
				row.Entity.Name, prev.srcKey, ev.Key, strings.Join(t.KeyColumns(), ", "), t.QualifiedTable(), row.Op, ev.Key, prev.srcKey)}
	}
	p := &pendingRow{row: row, tx: ti, ev: ei, deleted: row.Op == transform.OpDelete, source: ev.Source, redo: ev.Redo, srcKey: ev.Key, copied: c.copied}
	if prev != nil {
		p.released = prev.released
		if prev.deleted && prev.srcKey != ev.Key {
			p.released = append(slices.Clip(p.released), strings.Join(keyTexts(prev.row, keyColumns(row.Table)), ", "))
		}
	}
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
	b.rows[k] = p
	return nil
}
