// Running a set-based statement, or row by row under savepoints to name
// the event it failed on.

package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// execRows runs a statement over rows (args holds one array per column,
// a value per row). Normally all rows at once; in isolate mode row by row,
// each under a savepoint, so that a failure names its row's event. It
// returns the rows the statement reports it changed (the command tag).
func (s *Sink) execRows(ctx context.Context, tx pgx.Tx, sql string, rows []*pendingRow, args []any, what func(n int) string) (int64, error) {
	if !s.isolate || len(rows) == 1 {
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			ei := -1
			if len(rows) == 1 {
				ei = rows[0].ev
			}
			return 0, classify(fmt.Errorf("sink %s: %s: %w", s.cfg.System, what(len(rows)), err), singleTx(rows), ei)
		}
		return tag.RowsAffected(), nil
	}
	var changed int64
	one := make([]any, len(args))
	for ri, p := range rows {
		for ci, a := range args {
			one[ci] = a.([]*string)[ri : ri+1]
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT duplex_row"); err != nil {
			return 0, classify(fmt.Errorf("sink %s: savepoint: %w", s.cfg.System, err), -1, -1)
		}
		tag, err := tx.Exec(ctx, sql, one...)
		if err != nil {
			_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_row")
			return 0, classify(fmt.Errorf("sink %s: %s: %w", s.cfg.System, what(1), err), p.tx, p.ev)
		}
		changed += tag.RowsAffected()
		if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT duplex_row"); err != nil {
			return 0, classify(fmt.Errorf("sink %s: release savepoint: %w", s.cfg.System, err), -1, -1)
		}
	}
	return changed, nil
}

// singleTx returns the batch index of the transaction all rows come from,
// or -1 when they come from several.
func singleTx(rows []*pendingRow) int {
	ti := rows[0].tx
	for _, r := range rows {
		if r.tx != ti {
			return -1
		}
	}
	return ti
}
