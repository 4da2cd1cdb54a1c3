package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// visibleWait bounds how long the capture waits for the transaction being
// decoded to become visible to other sessions. PostgreSQL makes a committed
// transaction visible microseconds after its commit record is flushed; a
// transaction still in progress after this long is a server in trouble,
// or one whose commit waits for a synchronous standby that is duplex's own
// slot (synchronous_standby_names = '*'), which cannot confirm what it has
// not read: the capture then goes ahead, with a WARN, and what it reads is
// reported as it is. The replication loop sends no status meanwhile, so
// the bound stays well under the default wal_sender_timeout (60 s).
const visibleWait = 10 * time.Second

// Visibility of a decoded transaction.
//
// The walsender decodes a transaction as soon as its commit record is
// flushed, and the committing backend leaves the proc array (which is what
// makes its changes visible) only after that flush (RecordTransactionCommit,
// then ProcArrayEndTransaction, in PostgreSQL's xact.c). Until then a new
// snapshot of the database does not show what the transaction did. So:
//
//   - a catalog read made while decoding it (the partition a Relation
//     message names, the leaf partitions of a truncated table, unchanged
//     TOAST values) waits until it is visible (decodeConn): read before,
//     a partition created in it and filled at once was "no partition" and
//     its rows were reported as changes of an unmapped table;
//   - a transaction is handed on only once it is visible (waitVisible, at
//     its commit): handed on at once, its changes could reach the other
//     system and come back as that system's write-back (the order number
//     the ERP assigns to a sales order duplex inserted) while the row was
//     not yet visible here, and the update of the row found nothing and
//     was left out as if the row had been deleted (the target owns the
//     key), silently.

// decodeConn returns the query connection for a read the decoding of the
// current transaction needs, once that transaction is visible to a new
// snapshot (waitVisible).
func (ss *session) decodeConn(ctx context.Context) (*pgx.Conn, error) {
	q, err := ss.queryConn(ctx)
	if err != nil {
		return nil, err
	}
	if err := ss.waitVisible(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// waitVisible returns once the transaction being decoded (ss.tx, also
// after its commit was decoded, until the next Begin) is visible to a new
// snapshot of the database, or after visibleWait with a WARN. A snapshot
// that already showed it ended (ss.seen) answers without a query: when the
// capture runs behind, one snapshot answers for many transactions.
func (ss *session) waitVisible(ctx context.Context) error {
	xid := ss.tx.Xid
	if xid == 0 || ss.visibleXid == xid {
		return nil
	}
	if ss.seen.ended(xid) {
		ss.visibleXid = xid
		return nil
	}
	q, err := ss.queryConn(ctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(visibleWait)
	for {
		snap, err := currentSnapshot(ctx, q)
		if err != nil {
			return fmt.Errorf("capture %s: snapshot to see whether transaction %d is visible: %w", ss.src.cfg.System, xid, err)
		}
		ss.seen = snap
		if snap.ended(xid) {
			ss.visibleXid = xid
			return nil
		}
		if time.Now().After(deadline) {
			ss.src.log.Warn("the transaction being decoded is still in progress for other sessions; going on with it anyway",
				"xid", xid, "waited", visibleWait.String())
			ss.visibleXid = xid
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// txSnapshot is what a snapshot (pg_current_snapshot) says of
// transactions: those below xmin had ended, those from xmax on had not,
// and of those between, the ones in xip had not. All IDs are 64-bit
// (xid8).
type txSnapshot struct {
	xmin, xmax uint64
	xip        map[uint64]bool
}

// currentSnapshot reads a snapshot taken now.
func currentSnapshot(ctx context.Context, q *pgx.Conn) (*txSnapshot, error) {
	var text string
	if err := q.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&text); err != nil {
		return nil, err
	}
	return parseSnapshot(text)
}

// parseSnapshot reads the text form of a pg_snapshot,
// "xmin:xmax:xip,xip,…" (PostgreSQL's pg_snapshot_out).
func parseSnapshot(text string) (*txSnapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("snapshot %q: not xmin:xmax:xip", text)
	}
	num := func(s string) (uint64, error) {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n >= 1<<62 {
			return 0, fmt.Errorf("snapshot %q: %q is not a 64-bit transaction ID", text, s)
		}
		return n, nil
	}
	xmin, err := num(parts[0])
	if err != nil {
		return nil, err
	}
	xmax, err := num(parts[1])
	if err != nil {
		return nil, err
	}
	snap := &txSnapshot{xmin: xmin, xmax: xmax, xip: map[uint64]bool{}}
	if parts[2] != "" {
		for _, s := range strings.Split(parts[2], ",") {
			x, err := num(s)
			if err != nil {
				return nil, err
			}
			snap.xip[x] = true
		}
	}
	return snap, nil
}

// ended reports whether the transaction with the 32-bit ID xid had ended
// when the snapshot was taken (false for a nil snapshot). A decoded
// transaction committed, so one that ended is visible to every snapshot
// taken since. An ID too old to widen (before the first normal one) ended
// long ago.
func (s *txSnapshot) ended(xid uint32) bool {
	if s == nil {
		return false
	}
	full, ok := widenXid(s.xmax, xid)
	if !ok {
		return true
	}
	return full < s.xmin || full < s.xmax && !s.xip[full]
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
