package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestSchema_ColumnAddedAndMappedColumnDropped: a column added to a source
// table and not mapped is ignored; a change of a table whose mapped column
// was dropped is not applied with that field silently missing: it goes to
// the dead letters naming table and column, and other entities go on.
func TestSchema_ColumnAddedAndMappedColumnDropped(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	acc := uuid.New()
	f.exec("crm", `ALTER TABLE accounts ADD COLUMN segment text`)
	f.exec("crm", `INSERT INTO accounts (id, name, currency, segment) VALUES ($1, 'with an unmapped column', 'EUR', 'SMB')`, acc)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, acc) == 1, "account not in the ERP"
	})

	f.exec("crm", `ALTER TABLE order_lines DROP COLUMN sku`)
	ord := uuid.New()
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 5, 'open', now())`, ord, acc)
	f.exec("crm", `INSERT INTO order_lines (id, order_id, quantity, unit_price) VALUES ($1, $2, 1, 5)`, uuid.New(), ord)
	after := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'after the drop', 'USD')`, after)
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, after) == 1, "other entities stopped"
	})
	if n := queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord); n != 1 {
		t.Errorf("the order (its table unchanged) did not arrive")
	}
	dls := readDeadLetters(t, f.js(), 1)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1: %+v", len(dls), dls)
	}
	dl := dls[0]
	if dl.Stage != "capture" || dl.Entity != "order_line" {
		t.Errorf("dead letter = %+v", dl)
	}
	for _, want := range []string{"order_lines", "sku", "dropped"} {
		if !strings.Contains(dl.Error, want) {
			t.Errorf("dead letter error %q lacks %q", dl.Error, want)
		}
	}
	// The reverse flow, which never writes order lines, is not stopped by
	// the CRM's missing column either.
	waitFor(t, 30*time.Second, func() (bool, string) {
		crm := f.conn("crm")
		return queryInt(t, crm, `SELECT count(*) FROM accounts WHERE id = $1 AND erp_customer_no IS NOT NULL`, after) == 1, "to-crm stopped"
	})
	_ = context.Background
}
