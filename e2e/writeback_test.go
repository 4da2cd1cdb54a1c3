package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// TestTwoWay_WriteBackOfAnOrderDecodedBeforeItWasVisible: the CRM's
// walsender decodes a transaction as soon as its commit record is
// flushed, before the committing backend leaves the proc array and its
// rows become visible to other sessions. Here that window is held open:
// the order's transaction commits against a synchronous standby that
// never answers, until the test cancels the wait. Handed on at once, the
// order reached the ERP, whose write-back (order_no, fulfilment_status)
// came back to the CRM while the order was not yet visible there: the
// update found no row and was left out as if the order had been deleted,
// and the order kept erp_order_no NULL for good, with no error anywhere
// (seen as a flake of TestOps_RestoreERPFromDumpThenReplay under CPU
// load). The capture now hands a transaction on only once it is visible.
func TestTwoWay_WriteBackOfAnOrderDecodedBeforeItWasVisible(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true, settings: map[string]string{
		"synchronous_standby_names": "nobody",
		"synchronous_commit":        "local", // only the held session waits
	}})
	ctx := context.Background()
	f.inProcess()
	crm, erp := f.conn("crm"), f.conn("erp")
	acc, ord := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, country, currency) VALUES ($1, 'Held', 'DE', 'EUR')`, acc)
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, crm, `SELECT count(*) FROM accounts WHERE id = $1 AND erp_customer_no IS NOT NULL`, acc) == 1, "the account got no customer number"
	})

	held := f.conn("crm")
	var pid int
	if err := held.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := held.Exec(ctx, fmt.Sprintf(`SET synchronous_commit = on;
			INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ('%s', '%s', 'EUR', 10.00, 'open', now())`, ord, acc))
		committed <- err
	}()
	waitFor(t, 20*time.Second, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'`, pid)
		return n == 1, "the order's commit does not wait for the synchronous standby"
	})
	// Keep the order invisible in the CRM while whatever duplex does with
	// it can happen: at most 3 s (the capture waits up to 10 s for a
	// transaction to become visible); when the ERP got the order, until
	// its write-back was applied to the CRM.
	if f.heldUntilWrittenBack(t, erp, ord, 3*time.Second) {
		t.Logf("the ERP got the order while it was not visible in the CRM")
	}
	if _, err := crm.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	if err := <-committed; err != nil {
		t.Fatalf("the order's transaction: %v", err)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		var crmNo, erpNo *int64
		_ = crm.QueryRow(ctx, `SELECT erp_order_no FROM orders WHERE id = $1`, ord).Scan(&crmNo)
		_ = erp.QueryRow(ctx, `SELECT order_no FROM sales_orders WHERE crm_order_id = $1`, ord).Scan(&erpNo)
		return crmNo != nil && erpNo != nil && *crmNo == *erpNo, fmt.Sprintf("CRM order %s has erp_order_no %v, the ERP's sales order %v", ord, deref(crmNo), deref(erpNo))
	})
}

// heldUntilWrittenBack waits until the ERP has the sales order of ord
// and the to-crm flow applied everything the ERP's capture published up
// to it (its write-back included), and reports whether the ERP got it;
// or, when the ERP does not get it within d, returns false after d.
func (f *fixture) heldUntilWrittenBack(t *testing.T, erp *pgx.Conn, ord uuid.UUID, d time.Duration) bool {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(d)
	for queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord) == 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	var wal string
	if err := erp.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&wal); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		ok := queryInt(t, erp, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::pg_lsn`, "duplex_erp_"+f.id, wal) == 1
		return ok, "the ERP's capture did not confirm the sales order's transaction"
	})
	js := f.js()
	waitFor(t, 30*time.Second, func() (bool, string) {
		c, err := js.Consumer(ctx, "DUPLEX", "to-crm")
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0, fmt.Sprintf("to-crm: %d pending, %d unacknowledged", ci.NumPending, ci.NumAckPending)
	})
	return true
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
