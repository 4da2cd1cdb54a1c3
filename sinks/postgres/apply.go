// The transaction lifecycle: begin (read the applied position), write a
// batch, finish (record the position and the origin's progress, commit).

package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// Position returns the flow's applied position as recorded in the target
// (pgstate.Applied).
func Position(ctx context.Context, q pgstate.Querier, flow string) (transform.Position, error) {
	return pgstate.Applied(ctx, q, flow)
}

func (s *Sink) apply(ctx context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	res, err := s.applyOnce(ctx, txs)
	if uniqueFailure(err) && countEvents(txs) > 1 {
		// Folded to final images, the batch's rows collide on a unique
		// index that the source's own order of writes did not (values
		// swapped between rows, a deleted row's value taken by a new
		// one): apply each transaction alone, and one whose set-based
		// write still fails in source order (mode.go).
		s.mode = perTx
		defer func() { s.mode = set }()
		res, err = s.applyOnce(ctx, txs)
	}
	if unattributed(err) && !isCardinalityViolation(err) {
		// A set-based statement failed on some row: apply again, row by
		// row for the failing kind of statement, to name the event.
		// (Not for SQLSTATE 21000: one row at a time cannot fail that
		// way, and would let a later row overwrite an earlier one.)
		s.isolate = true
		res, err = s.applyOnce(ctx, txs)
		s.isolate = false
	}
	return res, err
}

func (s *Sink) applyOnce(ctx context.Context, txs []*transform.Tx) (res pipeline.ApplyResult, err error) {
	tx, applied, err := s.begin(ctx)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	seen := applied.LSN
	last, err := s.write(ctx, tx, txs, applied.LSN, &seen, &res)
	if err != nil {
		return res, err
	}
	if last == nil {
		return res, tx.Commit(ctx)
	}
	return res, s.finish(ctx, tx, last)
}

// begin opens the target transaction and reads the flow's applied position.
func (s *Sink) begin(ctx context.Context) (pgx.Tx, transform.Position, error) {
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return nil, transform.Position{}, classify(fmt.Errorf("sink %s: begin: %w", s.cfg.System, err), -1, -1)
	}
	applied, err := Position(ctx, tx, s.cfg.Flow)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, transform.Position{}, classify(err, -1, -1)
	}
	return tx, applied, nil
}

// write writes the changes of txs not yet applied (applied is the flow's
// recorded position, seen the highest position met so far in this target
// transaction) and returns the last transaction it wrote, nil if none. How
// it writes them depends on s.mode (mode.go).
func (s *Sink) write(ctx context.Context, tx pgx.Tx, txs []*transform.Tx, applied transform.LSN, seen *transform.LSN, res *pipeline.ApplyResult) (*transform.Tx, error) {
	reread := map[string][]string{} // entity -> keys whose owned fields the source edited
	changes, last, err := s.collect(txs, applied, seen, res, reread)
	if err != nil {
		return nil, err
	}
	if last == nil && len(changes) == 0 && len(reread) == 0 {
		return nil, nil
	}
	if err := s.reassert(ctx, tx, reread); err != nil {
		return nil, err
	}
	switch s.mode {
	case perTx:
		return last, s.writePerTx(ctx, tx, changes, &res.Conflicts)
	case inOrder:
		return last, s.writeInOrder(ctx, tx, changes, &res.Conflicts)
	}
	return last, s.writeSet(ctx, tx, changes, &res.Conflicts)
}

func countEvents(txs []*transform.Tx) int {
	n := 0
	for _, t := range txs {
		n += len(t.Events)
	}
	return n
}

// change is one event of a batch made ready for the target, in source
// order.
type change struct {
	row    *transform.Row
	ti, ei int // transaction and event in the batch
	ev     *transform.Event
	// copied: the row comes from a snapshot or backfill chunk (a row the
	// source has), not from a change it streamed.
	copied bool
}

// collect returns the changes of txs not yet applied, in source order,
// and the last transaction among them.
// An event that only reports an edit its source made to fields another
// system owns (Event.Violated) is not written; reread collects the keys
// whose owner's values must be read again (enforce: owner).
func (s *Sink) collect(txs []*transform.Tx, applied transform.LSN, seen *transform.LSN, res *pipeline.ApplyResult, reread map[string][]string) ([]change, *transform.Tx, error) {
	var changes []change
	var last *transform.Tx
	for ti, t := range txs {
		redo := false
		if t.Snapshot {
			// Snapshot chunks share the consistent point as their LSN:
			// applied while nothing after that point is, skipped once a
			// later change is (a replay must not bring old rows back).
			if t.CommitLSN < applied || t.CommitLSN < *seen {
				res.Skipped += len(t.Events)
				continue
			}
			*seen = max(*seen, t.CommitLSN)
			if last == nil || t.CommitLSN >= last.CommitLSN {
				last = t
			}
		} else {
			if t.CommitLSN <= *seen {
				if !t.Redo {
					res.Skipped += len(t.Events)
					continue
				}
				// Read again after a held entity was fixed: only its
				// events (marked Redo) are new here.
				redo = true
			} else {
				*seen, last = t.CommitLSN, t
			}
		}
		for ei := range t.Events {
			ev := &t.Events[ei]
			if redo && !ev.Redo {
				res.Skipped++
				continue
			}
			row, err := s.cfg.Mapping.Denormalize(ev, s.cfg.System)
			if err != nil {
				return nil, nil, &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: ti, Event: ei, Err: fmt.Errorf("event %s: %w", ev.ID, err)}
			}
			if len(ev.Violated) > 0 && s.violation(ev, row, reread) {
				res.Applied++ // it only reports an edit in its source
				continue
			}
			changes = append(changes, change{row: row, ti: ti, ei: ei, ev: ev, copied: t.Snapshot})
			res.Applied++
		}
	}
	return changes, last, nil
}

// writeSet folds the changes to the last change per target key and
// writes them with set-based statements: truncates first, children before
// parents; then upserts, parents before children; then deletes, children
// before parents.
func (s *Sink) writeSet(ctx context.Context, tx pgx.Tx, changes []change, conflicts *int) error {
	byEntity := map[string][]change{}
	for _, c := range changes {
		byEntity[c.ev.Entity] = append(byEntity[c.ev.Entity], c)
	}
	batches := map[string]*entityBatch{}
	for name, cs := range byEntity {
		b, err := s.foldEntity(ctx, tx, s.cfg.Mapping.Entity(name), cs)
		if err != nil {
			return err
		}
		batches[name] = b
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		e := s.order[i]
		if b := batches[e.Name]; b != nil && b.truncate {
			t := e.Tables[s.cfg.System]
			if _, err := tx.Exec(ctx, "DELETE FROM "+quoteTable(t)); err != nil {
				return classify(fmt.Errorf("sink %s: truncate %s: %w", s.cfg.System, t.QualifiedTable(), err), -1, -1)
			}
		}
	}
	for _, e := range s.order {
		b := batches[e.Name]
		if b == nil {
			continue
		}
		n, err := s.resolveShared(ctx, tx, e, b)
		if err != nil {
			return err
		}
		*conflicts += n
		if err := s.upsert(ctx, tx, e, b); err != nil {
			return err
		}
		if err := s.recordVersions(ctx, tx, e, b); err != nil {
			return err
		}
		if err := s.followSequence(ctx, tx, e, b); err != nil {
			return err
		}
	}
	refs, err := s.referencedByDeletes(ctx, tx, batches)
	if err != nil {
		return err
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		e := s.order[i]
		if b := batches[e.Name]; b != nil {
			if err := s.delete(ctx, tx, e, b); err != nil {
				return err
			}
		}
	}
	if err := s.checkForeignKeys(ctx, tx, batches, refs); err != nil {
		return err
	}
	return nil
}

// finish records last as the flow's applied position, sets the replication
// origin's progress and commits.
func (s *Sink) finish(ctx context.Context, tx pgx.Tx, last *transform.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, $2)`, last.CommitLSN.String(), last.CommitTime); err != nil {
		return classify(fmt.Errorf("sink %s: origin xact setup: %w", s.cfg.System, err), -1, -1)
	}
	pos := transform.Position{LSN: last.CommitLSN, CommitTime: last.CommitTime, Xid: last.Xid}
	if err := pgstate.WriteApplied(ctx, tx, s.cfg.Flow, last.Source, pos); err != nil {
		return classify(fmt.Errorf("sink %s: %w", s.cfg.System, err), -1, -1)
	}
	if err := tx.Commit(ctx); err != nil {
		return classify(fmt.Errorf("sink %s: commit: %w", s.cfg.System, err), -1, -1)
	}
	return nil
}

// AppliedLSN implements pipeline.PositionSink: the commit LSN of the last
// source transaction this flow recorded as applied (0 when none).
func (s *Sink) AppliedLSN(ctx context.Context) (transform.LSN, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.conn = nil
		if err := s.connect(ctx); err != nil {
			return 0, classify(err, -1, -1)
		}
	}
	pos, err := Position(ctx, s.conn, s.cfg.Flow)
	if err != nil {
		return 0, fmt.Errorf("sink %s: %w", s.cfg.System, err)
	}
	return pos.LSN, nil
}
