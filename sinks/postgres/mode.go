// Write modes: set-based over the whole batch, transaction by transaction,
// or change by change in source order (after a unique violation).

package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
)

// writeMode is how write applies a batch.
type writeMode int

const (
	// set folds the whole batch to the last change per key and writes it
	// with one statement per entity and column set: the normal mode.
	set writeMode = iota
	// perTx writes each source transaction alone, set-based, under a
	// savepoint; one that fails on a unique violation is rolled back to
	// it and written again change by change (inOrder). Used after the
	// batch failed on a unique violation.
	perTx
	// inOrder writes each change alone, in source order: the unique
	// indexes see the same sequence of row states as in the source, so a
	// value swapped between rows, or freed by a delete and taken by an
	// insert, fits as it did there.
	inOrder
)

// writePerTx writes the changes one source transaction at a time.
func (s *Sink) writePerTx(ctx context.Context, tx pgx.Tx, changes []change, conflicts *int) error {
	for i := 0; i < len(changes); {
		j := i + 1
		for j < len(changes) && changes[j].ti == changes[i].ti {
			j++
		}
		one := changes[i:j]
		i = j
		if _, err := tx.Exec(ctx, "SAVEPOINT duplex_tx"); err != nil {
			return classify(fmt.Errorf("sink %s: savepoint: %w", s.cfg.System, err), -1, -1)
		}
		n := 0
		err := s.writeSet(ctx, tx, one, &n)
		if uniqueFailure(err) && len(one) > 1 {
			if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_tx"); rerr != nil {
				return classify(fmt.Errorf("sink %s: rollback to savepoint: %w", s.cfg.System, rerr), -1, -1)
			}
			n = 0
			err = s.writeInOrder(ctx, tx, one, &n)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT duplex_tx"); err != nil {
			return classify(fmt.Errorf("sink %s: release savepoint: %w", s.cfg.System, err), -1, -1)
		}
		*conflicts += n
	}
	return nil
}

// writeInOrder writes the changes one at a time, in source order. A
// change that still violates a unique index conflicts with a row the
// source never had next to it (a real conflict): the error, like any
// permanent one here, names that change's event, which the pipeline
// dead-letters.
func (s *Sink) writeInOrder(ctx context.Context, tx pgx.Tx, changes []change, conflicts *int) error {
	for i := range changes {
		err := s.writeSet(ctx, tx, changes[i:i+1], conflicts)
		var ae *pipeline.ApplyError
		if errors.As(err, &ae) && ae.Kind == pipeline.Permanent && ae.Event < 0 {
			return &pipeline.ApplyError{Kind: pipeline.Permanent, Tx: changes[i].ti, Event: changes[i].ei, Err: ae.Err}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
