package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestTruncate_RefusedOrPropagatedPerEntity: a TRUNCATE of a table whose
// entity does not propagate truncates (the default) is never silently
// ignored: it is dead-lettered with the reason and the target keeps its
// rows; with `truncate: propagate` the target's rows go too.
func TestTruncate_RefusedOrPropagatedPerEntity(t *testing.T) {
	for _, propagate := range []bool{false, true} {
		name := "refused"
		if propagate {
			name = "propagated"
		}
		t.Run(name, func(t *testing.T) {
			base, err := os.ReadFile("../examples/order-to-cash/mapping.yaml")
			if err != nil {
				t.Fatal(err)
			}
			mapping := string(base)
			if propagate {
				mapping = strings.Replace(mapping, "  - name: order_line\n    key: line_id\n", "  - name: order_line\n    key: line_id\n    truncate: propagate\n", 1)
				if mapping == string(base) {
					t.Fatal("could not set truncate: propagate in the mapping")
				}
			}
			f := newFixture(t, fixtureOptions{mapping: mapping})
			f.inProcess()
			acc, ord := uuid.New(), uuid.New()
			f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'T', 'EUR')`, acc)
			f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 3, 'open', now())`, ord, acc)
			f.exec("crm", `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) SELECT gen_random_uuid(), $1, 'S' || g, 1, 1 FROM generate_series(1, 3) g`, ord)
			erp := f.conn("erp")
			waitFor(t, 30*time.Second, func() (bool, string) {
				return queryInt(t, erp, `SELECT count(*) FROM sales_order_lines`) == 3, "lines not in the ERP"
			})
			f.exec("crm", `TRUNCATE order_lines`)
			after := uuid.New()
			f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'after', 'EUR')`, after)
			waitFor(t, 30*time.Second, func() (bool, string) {
				return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, after) == 1, "the flow stopped after the truncate"
			})
			lines := queryInt(t, erp, `SELECT count(*) FROM sales_order_lines`)
			if propagate {
				if lines != 0 {
					t.Errorf("propagated truncate left %d lines in the ERP", lines)
				}
				return
			}
			if lines != 3 {
				t.Errorf("refused truncate: the ERP has %d lines, want its 3 kept", lines)
			}
			dl := readDeadLetters(t, f.js(), 1)[0]
			if dl.Stage != "capture" || !strings.Contains(dl.Error, "truncate") || !strings.Contains(dl.Error, "order_lines") || !strings.Contains(dl.Error, "truncate: propagate") {
				t.Errorf("dead letter of the refused truncate = %+v", dl)
			}
		})
	}
}
