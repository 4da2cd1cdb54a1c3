package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// visibleWait bounds how long decodeConn waits for the transaction being
// decoded to become visible to other sessions. PostgreSQL makes a committed
// transaction visible microseconds after its commit record is flushed; a
// transaction still in progress after this long is a server in trouble,
// or one whose commit waits for a synchronous standby that is duplex's own
// slot (synchronous_standby_names = '*'), which cannot confirm what it has
// not read: the read then goes ahead, with a WARN, and what it reads is
// reported as it is. The replication loop sends no status meanwhile, so
// the bound stays well under the default wal_sender_timeout (60 s).
const visibleWait = 10 * time.Second

// decodeConn returns the query connection for a read the decoding of the
// current transaction needs (the partition a Relation message names, the
// leaf partitions of a truncated table, unchanged TOAST values), once that
// transaction is visible to a new snapshot.
//
// The walsender decodes a transaction as soon as its commit record is
// flushed, and the committing backend leaves the proc array (which is what
// makes its changes visible) only after that flush (RecordTransactionCommit,
// then ProcArrayEndTransaction, in PostgreSQL's xact.c). A catalog read
// made in between does not see what the transaction did: a partition
// created in it and filled at once is "no partition" and its rows were
// reported as changes of an unmapped table. pg_xact_status says "in
// progress" for exactly that window, so the read waits for it to end.
func (ss *session) decodeConn(ctx context.Context) (*pgx.Conn, error) {
	q, err := ss.queryConn(ctx)
	if err != nil {
		return nil, err
	}
	// Not only while ss.inTx: the unchanged values of a transaction's
	// last chunk are read once its commit was decoded (ss.tx is still
	// that transaction's until the next Begin).
	xid := ss.tx.Xid
	if xid == 0 || ss.visibleXid == xid {
		return q, nil
	}
	deadline := time.Now().Add(visibleWait)
	for {
		status, err := xactStatus(ctx, q, xid)
		if err != nil {
			return nil, fmt.Errorf("capture %s: status of transaction %d: %w", ss.src.cfg.System, xid, err)
		}
		if status != "in progress" {
			ss.visibleXid = xid
			return q, nil
		}
		if time.Now().After(deadline) {
			ss.src.log.Warn("the transaction being decoded is still in progress for other sessions; reading the catalog anyway",
				"xid", xid, "waited", visibleWait.String())
			ss.visibleXid = xid
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// xactStatus returns pg_xact_status of a 32-bit transaction ID: "in
// progress", "committed", "aborted", or "" when it is too old for the
// server to know.
func xactStatus(ctx context.Context, q *pgx.Conn, xid uint32) (string, error) {
	var next string
	if err := q.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text`).Scan(&next); err != nil {
		return "", err
	}
	xmax, err := strconv.ParseUint(next, 10, 64)
	if err != nil || xmax >= 1<<62 {
		return "", fmt.Errorf("xmax of a snapshot %q: not a 64-bit transaction ID", next)
	}
	full, ok := widenXid(xmax, xid)
	if !ok {
		return "", nil
	}
	var status *string
	if err := q.QueryRow(ctx, `SELECT pg_xact_status($1::text::xid8)`, strconv.FormatUint(full, 10)).Scan(&status); err != nil {
		return "", err
	}
	if status == nil {
		return "", nil
	}
	return *status, nil
}

// widenXid returns the 64-bit transaction ID (xid8) of the 32-bit xid,
// given xmax, the 64-bit xmax of a snapshot taken now: the ID within 2^31
// of xmax on either side, as PostgreSQL widens a 32-bit ID near a known
// 64-bit one (FullTransactionIdFromAllowableAt in transam.h). Either
// side, because the xmax of a snapshot is latestCompletedXid + 1
// (GetSnapshotData in procarray.c): the transaction being decoded has not
// completed for other sessions yet, so while an older transaction still
// runs (any concurrent load) its ID is above xmax. False when the ID
// would come before the first normal transaction ID (3).
func widenXid(xmax uint64, xid uint32) (uint64, bool) {
	full := int64(xmax) + int64(int32(xid-uint32(xmax)))
	if full < 3 {
		return 0, false
	}
	return uint64(full), true
}
