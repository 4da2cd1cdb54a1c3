package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/internal/redact"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// version is who wrote a field's current value, and when (source commit
// time).
type version struct {
	source string
	at     time.Time
}

// newer says whether v wins over w: the later commit, ties broken by the
// systems' order in the mapping (earlier wins).
func (s *Sink) newer(v, w version) bool {
	if !v.at.Equal(w.at) {
		return v.at.After(w.at)
	}
	return slices.Index(s.cfg.Mapping.Systems, v.source) < slices.Index(s.cfg.Mapping.Systems, w.source)
}

// sharedColumns maps the target columns of an entity's shared (owner
// both) fields to their field names. Computed once per entity at New: it
// is asked for every folded row.
func (s *Sink) sharedColumns(e *transform.Entity) map[string]string {
	return s.shared[e.Name]
}

// resolveShared decides, field by field, whether the incoming values of
// shared fields are newer than what the target holds, and drops those that
// lose (a conflict, logged and counted). What the target holds was written
// either by duplex (its version is in duplex.field_versions, as long as the
// value is still the one duplex wrote) or by a local user (then it is as
// old as the commit of the row's last write, pg_xact_commit_timestamp).
func (s *Sink) resolveShared(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) (int, error) {
	shared := s.sharedColumns(e)
	if len(shared) == 0 {
		return 0, nil
	}
	// Every row the batch writes: a row whose shared value was written
	// locally gets that local version recorded before duplex touches the
	// row (and its xmin) for anything else.
	var keys []string
	for _, k := range b.keys {
		if p := b.rows[k]; !p.deleted {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return 0, nil
	}
	cols := sortedKeys(shared)
	// FOR UPDATE: a local write committing between this read and the
	// write below would otherwise be overwritten on a stale decision.
	have, err := s.readShared(ctx, tx, e, cols, keys, true)
	if err != nil {
		return 0, err
	}
	known := map[string]pgstate.FieldVersion{}
	fvs, err := pgstate.ReadFieldVersions(ctx, tx, e.Name, keys)
	if err != nil {
		return 0, classify(fmt.Errorf("sink %s: %w", s.cfg.System, err), -1, -1)
	}
	for _, fv := range fvs {
		known[fv.Key+"\x00"+fv.Field] = fv
	}
	conflicts := 0
	for _, k := range keys {
		p := b.rows[k]
		cur := have[k]
		if cur == nil {
			// A new row: every incoming value stands.
			for col, at := range p.at {
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = version{source: p.sourceOf(col), at: at}
			}
			continue
		}
		for i, col := range cols {
			field := shared[col]
			var held version
			r, recorded := known[k+"\x00"+field]
			// The value held, as the capture of this database would
			// publish it (see pgstate.FieldHasher and canonicalPrefix for why canonical).
			// A value that has none (not in the enum map, not a
			// currency) was dead-lettered by the capture, never
			// recorded: it is treated as never versioned.
			canon, convErr := s.cfg.Mapping.ColumnCanonical(s.cfg.System, e, field, cur.texts[i])
			switch {
			case recorded && convErr == nil && s.cfg.FieldHash.Holds(r, canon, cur.texts[i]):
				held = version{source: r.Source, at: r.CommitTime}
			case recorded && convErr == nil && !s.cfg.FieldHash.Legacy(r):
				// Changed here since the last recorded version: the capture
				// of this database records that write's version as it reads
				// it from the WAL. Until then its age is unknown, and
				// nothing may overwrite it. Waiting: bounded by the flow's
				// max_wait, after which the event is dead-lettered.
				return conflicts, &pipeline.ApplyError{Kind: pipeline.Waiting, Tx: p.tx, Event: p.ev, RetryAfter: 20 * time.Millisecond,
					Err: fmt.Errorf("entity %s key %s field %s: waiting for the capture of %s to record a local write", e.Name, k, field, s.cfg.System)}
			case cur.local != nil && !p.redo:
				// Never versioned (the row predates duplex), or versioned
				// by an older duplex that hashed another text than this
				// one compares (a legacy row that matches neither the
				// canonical value nor the column's text: no capture will
				// ever record a matching hash for it, so waiting would
				// never end): as old as the row's last commit. A late
				// change (p.redo) is not compared with it: the row's last
				// commit may be duplex's own write of a newer change that
				// did not carry this field.
				held = version{source: s.cfg.System, at: *cur.local}
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = held
			default:
				// Without a commit timestamp the local value's age is
				// unknown; the incoming write is the newest known.
				continue
			}
			at, ok := p.at[col]
			if !ok {
				continue
			}
			in := version{source: p.sourceOf(col), at: at}
			vi := slices.IndexFunc(p.row.Values, func(v transform.ColValue) bool { return v.Column == col })
			incoming := p.row.Values[vi]
			if s.newer(in, held) {
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = in
				continue
			}
			same := (incoming.Null && cur.values[i] == nil) || (!incoming.Null && cur.values[i] != nil && *cur.values[i] == incoming.Text)
			if same {
				continue // the held version stands for the value both agree on
			}
			conflicts++
			// Values cut, and masked for a personal field (redact).
			f := e.Field(field)
			s.log.Info("conflict: the target holds a later write of a shared field; incoming value dropped",
				slog.String("entity", e.Name), slog.String("key", k), slog.String("field", field),
				slog.String("kept", redact.Field(deref(cur.values[i]), f.PII)), slog.String("kept_from", held.source), slog.Time("kept_at", held.at),
				slog.String("dropped", redact.Field(textOf(incoming), f.PII)), slog.String("dropped_from", in.source), slog.Time("dropped_at", in.at))
			row := *p.row
			row.Values = slices.Delete(slices.Clone(row.Values), vi, vi+1)
			p.row = &row
			delete(p.at, col)
		}
	}
	return conflicts, nil
}

// current is what a target row holds in an entity's shared columns.
type current struct {
	// local is the commit time of the row's last write (nil when
	// unknown).
	local *time.Time
	// values are the columns' ::text (compared with the incoming
	// column text); texts their output text, as pgoutput sends it (the
	// canonical value is made from it). nil: NULL.
	values []*string
	texts  []*string
}

// readShared reads the shared columns cols of the rows with keys, locking
// them when forUpdate.
func (s *Sink) readShared(ctx context.Context, tx pgx.Tx, e *transform.Entity, cols, keys []string, forUpdate bool) (map[string]*current, error) {
	t := e.Tables[s.cfg.System]
	match, err := s.keyMatch(t, "t", "u", "k")
	if err != nil {
		return nil, err
	}
	args, err := keyArrays(t, keys)
	if err != nil {
		return nil, err
	}
	n := len(t.KeyColumns())
	un, alias := keyUnnest(n, 1, "k")
	sel := ""
	for _, c := range cols {
		// concat() calls the type's output function, like pgoutput;
		// ::text does not always (it drops a char(n)'s padding).
		id := pgx.Identifier{c}.Sanitize()
		sel += fmt.Sprintf(", t.%s::text, CASE WHEN t.%s IS NULL THEN NULL ELSE concat(t.%s) END", id, id, id)
	}
	lock := ""
	if forUpdate {
		lock = " FOR UPDATE OF t"
	}
	q := fmt.Sprintf(`SELECT %s, pg_xact_commit_timestamp(t.xmin)%s FROM unnest(%s) AS u(%s) JOIN %s AS t ON %s%s`,
		keySelect(n, "u", "k"), sel, un, alias, quoteTable(t), match, lock)
	have := map[string]*current{}
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	for rows.Next() {
		c := &current{values: make([]*string, len(cols)), texts: make([]*string, len(cols))}
		dest, key := scanKey(n)
		dest = append(dest, &c.local)
		for i := range cols {
			dest = append(dest, &c.values[i], &c.texts[i])
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return nil, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
		}
		have[key()] = c
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	return have, nil
}

// recordVersions stores the version of every shared field the batch wrote,
// with the hash of the canonical value now in the row (read back: a
// trigger may have changed what was written).
func (s *Sink) recordVersions(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	shared := s.sharedColumns(e)
	if len(shared) == 0 {
		return nil
	}
	var keys []string
	for _, k := range b.keys {
		if p := b.rows[k]; len(p.ver) > 0 && !p.deleted {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	cols := sortedKeys(shared)
	have, err := s.readShared(ctx, tx, e, cols, keys, false)
	if err != nil {
		return err
	}
	for i, col := range cols {
		w := pgstate.Written{Entity: e.Name, Field: shared[col]}
		for _, k := range keys {
			v, ok := b.rows[k].ver[col]
			cur := have[k]
			if !ok || cur == nil {
				continue
			}
			canon, err := s.cfg.Mapping.ColumnCanonical(s.cfg.System, e, shared[col], cur.texts[i])
			if err != nil {
				// Not a value the capture could publish (a trigger made
				// it so): left unversioned, as the capture leaves it.
				continue
			}
			w.Keys, w.Sources, w.At = append(w.Keys, k), append(w.Sources, v.source), append(w.At, v.at)
			w.Hashes = append(w.Hashes, s.cfg.FieldHash.Hash(canon))
		}
		if len(w.Keys) == 0 {
			continue
		}
		if err := pgstate.RecordWritten(ctx, tx, w); err != nil {
			return classify(fmt.Errorf("sink %s: %w", s.cfg.System, err), -1, -1)
		}
	}
	return nil
}

func deref(p *string) string {
	if p == nil {
		return "NULL"
	}
	return *p
}

func textOf(v transform.ColValue) string {
	if v.Null {
		return "NULL"
	}
	return v.Text
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
