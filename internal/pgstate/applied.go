package pgstate

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Applied returns flow's applied position as recorded in the target
// (duplex.applied): LSN, CommitTime and Xid of the last source transaction
// committed there; the zero Position when none was.
func Applied(ctx context.Context, q Querier, flow string) (transform.Position, error) {
	var lsn string
	var p transform.Position
	var xid int64
	err := q.QueryRow(ctx, `SELECT commit_lsn::text, commit_time, xid FROM duplex.applied WHERE flow = $1`, flow).Scan(&lsn, &p.CommitTime, &xid)
	if errors.Is(err, pgx.ErrNoRows) {
		return transform.Position{}, nil
	}
	if err != nil {
		return transform.Position{}, fmt.Errorf("read applied position of %s: %w", flow, err)
	}
	p.Xid = uint32(xid)
	p.LSN, err = capture.ParseLSN(lsn)
	if err != nil {
		return transform.Position{}, fmt.Errorf("read applied position of %s: %w", flow, err)
	}
	return p, nil
}

// WriteApplied records p (LSN, CommitTime, Xid; Index is not kept) as
// flow's applied position, read from source. q is the transaction that
// writes the rows, so that the position commits with them.
func WriteApplied(ctx context.Context, q Querier, flow, source string, p transform.Position) error {
	_, err := q.Exec(ctx, `
INSERT INTO duplex.applied (flow, source, commit_lsn, commit_time, xid, applied_at)
VALUES ($1, $2, $3::text::pg_lsn, $4, $5, now())
ON CONFLICT (flow) DO UPDATE SET source = EXCLUDED.source, commit_lsn = EXCLUDED.commit_lsn,
	commit_time = EXCLUDED.commit_time, xid = EXCLUDED.xid, applied_at = EXCLUDED.applied_at`,
		flow, source, p.LSN.String(), p.CommitTime, int64(p.Xid))
	if err != nil {
		return fmt.Errorf("record applied position of %s: %w", flow, err)
	}
	return nil
}
