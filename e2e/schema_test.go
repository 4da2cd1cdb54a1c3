package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/pipeline"
)

// TestSchema_ColumnAddedDroppedAndReAdded: a column added to a source
// table and not mapped is ignored. When a mapped column (accounts.country)
// is dropped, the entity is held: its changes are neither applied with the
// field silently missing nor dead-lettered, the reason shows in the log,
// the statistics and duplex.held, and other entities go on. After the
// column is added again and duplex restarted, the held changes are applied
// in order and nothing is lost.
func TestSchema_ColumnAddedDroppedAndReAdded(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stop := f.inProcess()
	ctx := context.Background()
	acc := uuid.New()
	f.exec("crm", `ALTER TABLE accounts ADD COLUMN segment text`)
	f.exec("crm", `INSERT INTO accounts (id, name, country, currency, segment) VALUES ($1, 'with an unmapped column', 'DE', 'EUR', 'SMB')`, acc)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, acc) == 1, "account not in the ERP"
	})

	f.exec("crm", `ALTER TABLE accounts DROP COLUMN country`)
	f.exec("crm", `UPDATE accounts SET name = 'renamed while held' WHERE id = $1`, acc)
	born := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'born while held', 'USD')`, born)
	ord := uuid.New()
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 5, 'open', now())`, ord, acc)
	f.exec("crm", `UPDATE accounts SET name = 'renamed twice while held' WHERE id = $1`, acc)
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord) == 1, "orders stopped with the accounts"
	})
	held := f.app.SrcStat["crm"].Snapshot().Held
	if reason := held["customer"]; !strings.Contains(reason, "accounts") || !strings.Contains(reason, "country") {
		t.Errorf("statistics do not show the customer entity held naming table and column: %v", held)
	}
	crm := f.conn("crm")
	var reason string
	if err := crm.QueryRow(ctx, `SELECT reason FROM duplex.held WHERE entity = 'customer'`).Scan(&reason); err != nil {
		t.Fatalf("duplex.held: %v", err)
	}
	var name string
	if err := erp.QueryRow(ctx, `SELECT name FROM customers WHERE crm_account_id = $1`, acc).Scan(&name); err != nil || name != "with an unmapped column" {
		t.Errorf("a held change was applied: name %q (%v)", name, err)
	}
	if n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, born); n != 0 {
		t.Errorf("an account inserted while held reached the ERP")
	}
	if s, err := f.js().Stream(ctx, pipeline.DLQStream); err == nil {
		if info, err := s.Info(ctx); err == nil && info.State.Msgs != 0 {
			t.Errorf("held changes were dead-lettered: %d dead letters", info.State.Msgs)
		}
	}

	// The fix: the column comes back; duplex restarts.
	stop()
	f.exec("crm", `ALTER TABLE accounts ADD COLUMN country char(2)`)
	f.exec("crm", `UPDATE accounts SET country = 'FR' WHERE id = $1`, acc)
	f.inProcess()
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs after the fix:\n%s", rep)
	}
	if err := erp.QueryRow(ctx, `SELECT name FROM customers WHERE crm_account_id = $1`, acc).Scan(&name); err != nil || name != "renamed twice while held" {
		t.Errorf("after the fix: name %q (%v), want the last held rename", name, err)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, crm, `SELECT count(*) FROM duplex.held`) == 0, "the hold was not released after catching up"
	})
	// The reverse flow never stopped.
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, crm, `SELECT count(*) FROM accounts WHERE id = $1 AND erp_customer_no IS NOT NULL`, born) == 1, "to-crm did not number the account born while held"
	})
}
