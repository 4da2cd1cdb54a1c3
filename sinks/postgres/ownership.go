// Ownership at the target: edits of owned fields reported by the other
// system (enforce: owner), and sequences kept past replicated keys
// (sequence: follow).

package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgexpr"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// violation notes an event that reports edits, in its source, of fields
// another system owns (Event.Violated). When this target owns one of them
// and the entity says enforce: owner, the row's key is kept for a re-read
// (reread). It returns true when the event carries nothing to write (only
// the key): the caller leaves it out of the batch.
func (s *Sink) violation(ev *transform.Event, row *transform.Row, reread map[string][]string) bool {
	e := s.cfg.Mapping.Entity(ev.Entity)
	if e == nil {
		return false
	}
	if e.Enforce == transform.EnforceOwner && slices.ContainsFunc(ev.Violated, func(f string) bool {
		fd := e.Field(f)
		return fd != nil && fd.Owner == s.cfg.System
	}) && !slices.Contains(reread[e.Name], row.Key) {
		reread[e.Name] = append(reread[e.Name], row.Key)
	}
	for f := range ev.Data {
		if !e.IsKey(f) {
			return false
		}
	}
	return true
}

// reassert has the rows whose owned fields the other system edited read
// again from this database, the owner: it records, in the same
// transaction, an online backfill of those keys for this database's
// capture (duplex.backfills, slot cfg.Slot). The capture copies the rows
// with the watermark method and the flow into the other system writes the
// owner's current values back, under its replication origin, so the other
// system's capture does not report that write again: nothing loops.
func (s *Sink) reassert(ctx context.Context, tx pgx.Tx, reread map[string][]string) error {
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range reread {
			if !yield(k) {
				return
			}
		}
	}) {
		keys := reread[name]
		e := s.cfg.Mapping.Entity(name)
		t := e.Tables[s.cfg.System]
		if s.cfg.Slot == "" {
			s.log.Warn("ownership violation not enforced: no capture of this system is configured to re-read the owner's values",
				slog.String("entity", name), slog.Int("rows", len(keys)))
			continue
		}
		kcs := t.KeyColumns()
		cols := make([]string, len(kcs))
		for i, kc := range kcs {
			cols[i] = pgx.Identifier{kc}.Sanitize()
		}
		lits := make([]string, len(keys))
		for i, k := range keys {
			parts, err := capture.SplitKey(k, len(kcs))
			if err != nil {
				return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: -1, Event: -1, Err: fmt.Errorf("sink %s: enforce ownership of %s key %s: %w", s.cfg.System, name, k, err)}
			}
			for j, p := range parts {
				parts[j] = "'" + strings.ReplaceAll(p, "'", "''") + "'"
			}
			if len(kcs) == 1 {
				lits[i] = parts[0]
				continue
			}
			// A composite key as column = value pairs: the backfill's
			// condition grammar (internal/pgexpr) has no row
			// constructors, so (a, b) IN ((…)) would be refused there.
			for j := range parts {
				parts[j] = cols[j] + " = " + parts[j]
			}
			lits[i] = "(" + strings.Join(parts, " AND ") + ")"
		}
		// One re-read per condition of at most pgexpr.MaxLength bytes,
		// the longest the capture accepts: a longer one would be refused
		// there and the owner's values never written back.
		sep, open, closing := " OR ", "", ""
		if len(kcs) == 1 {
			sep, open, closing = ", ", cols[0]+" IN (", ")"
		}
		var ids []int64
		for start := 0; start < len(lits); {
			end, size := start+1, len(open)+len(lits[start])+len(closing)
			for end < len(lits) && size+len(sep)+len(lits[end]) <= pgexpr.MaxLength {
				size += len(sep) + len(lits[end])
				end++
			}
			filter := open + strings.Join(lits[start:end], sep) + closing
			id, err := pgstate.RequestBackfill(ctx, tx, s.cfg.Slot, t.QualifiedTable(), quoteTable(t), filter, 500)
			if err != nil {
				return classify(fmt.Errorf("sink %s: enforce ownership of %s: %w", s.cfg.System, name, err), -1, -1)
			}
			ids = append(ids, id)
			start = end
		}
		shown := keys
		if len(shown) > 5 {
			shown = shown[:5]
		}
		s.log.Info("ownership enforced: the owner's rows are read again so that their values go back to the system that edited them",
			slog.String("entity", name), slog.String("table", t.QualifiedTable()), slog.Int("rows", len(keys)), slog.Any("keys", shown), slog.Any("backfills", ids))
	}
	return nil
}

// followSequence, for an entity with sequence: follow whose key another
// system owns, moves the sequence of this table's key column past the
// highest key written (setval; only ever forward), so that this system's
// own inserts do not take replicated keys. setval is not transactional:
// a concurrent nextval here may still hand out a key below it.
func (s *Sink) followSequence(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	if e.Sequence != transform.SequenceFollow || e.KeyOwner() == s.cfg.System || e.KeyOwner() == transform.OwnerBoth {
		return nil
	}
	var top *big.Int
	var from *pendingRow
	for _, k := range b.keys {
		p := b.rows[k]
		if p.deleted {
			continue
		}
		n, ok := new(big.Int).SetString(strings.TrimSpace(p.row.Key), 10)
		if ok && (top == nil || n.Cmp(top) > 0) {
			top, from = n, p
		}
	}
	if top == nil {
		return nil
	}
	t := e.Tables[s.cfg.System]
	seq, known := s.sequences[e.Name]
	if !known {
		var name *string
		if err := tx.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, $2)`, quoteTable(t), t.KeyColumn).Scan(&name); err != nil {
			return classify(fmt.Errorf("sink %s: sequence of %s.%s: %w", s.cfg.System, t.QualifiedTable(), t.KeyColumn, err), -1, -1)
		}
		if name != nil {
			seq = *name
		} else {
			s.log.Warn("sequence: follow: the key column has no sequence of its own (serial or identity); nothing to move",
				slog.String("entity", e.Name), slog.String("table", t.QualifiedTable()), slog.String("column", t.KeyColumn))
		}
		if s.sequences == nil {
			s.sequences = map[string]string{}
		}
		s.sequences[e.Name] = seq
	}
	if seq == "" {
		return nil
	}
	// pg_get_serial_sequence returns the name quoted as needed.
	q := `SELECT setval($1::regclass, $2::bigint) FROM ` + seq + ` WHERE last_value < $2::bigint OR (last_value = $2::bigint AND NOT is_called)`
	if _, err := tx.Exec(ctx, q, seq, top.String()); err != nil {
		return classify(fmt.Errorf("sink %s: sequence: follow: move %s past key %s of %s: %w", s.cfg.System, seq, top, t.QualifiedTable(), err), from.tx, from.ev)
	}
	return nil
}
