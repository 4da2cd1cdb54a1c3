package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/pipeline"
)

// TestMirror_InsertUpdateDelete: changes to every CRM table reach the ERP.
func TestMirror_InsertUpdateDelete(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	crm, erp := f.conn("crm"), f.conn("erp")
	ctx := context.Background()
	acc, ord, line := uuid.New(), uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, email, country, currency, credit_limit) VALUES ($1, 'Acme', 'ap@acme.test', 'DE', 'EUR', 1000.50)`, acc)
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 99.90, 'open', now())`, ord, acc)
	f.exec("crm", `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) VALUES ($1, $2, 'SKU-1', 3, 33.3)`, line, ord)
	waitFor(t, 20*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM sales_order_lines l JOIN sales_orders o USING (order_no) JOIN customers c USING (customer_no)
			WHERE l.crm_line_id = $1 AND o.crm_order_id = $2 AND c.crm_account_id = $3`, line, ord, acc)
		return n == 1, "line not in ERP yet"
	})
	var minor int64
	var name string
	if err := erp.QueryRow(ctx, `SELECT credit_limit_minor, name FROM customers WHERE crm_account_id = $1`, acc).Scan(&minor, &name); err != nil {
		t.Fatal(err)
	}
	if minor != 100050 || name != "Acme" {
		t.Errorf("customer = %d %q, want 100050 Acme", minor, name)
	}

	// Updates of each table.
	f.exec("crm", `UPDATE accounts SET name = 'Acme GmbH', credit_limit = 2000 WHERE id = $1`, acc)
	f.exec("crm", `UPDATE orders SET status = 'won', total = 100.00 WHERE id = $1`, ord)
	f.exec("crm", `UPDATE order_lines SET quantity = 4.5 WHERE id = $1`, line)
	waitFor(t, 20*time.Second, func() (bool, string) {
		var qty string
		if err := erp.QueryRow(ctx, `SELECT o.status || ' ' || o.total::text || ' ' || c.name || ' ' || c.credit_limit_minor || ' ' || l.quantity::text
			FROM sales_order_lines l JOIN sales_orders o USING (order_no) JOIN customers c USING (customer_no) WHERE l.crm_line_id = $1`, line).Scan(&qty); err != nil {
			return false, err.Error()
		}
		return qty == "CONFIRMED 100.0000 Acme GmbH 200000 4.500", qty
	})
	// ERP-owned columns are untouched by the flow.
	f.exec("erp", `UPDATE customers SET payment_terms = 'NET60' WHERE crm_account_id = $1`, acc)
	f.exec("crm", `UPDATE accounts SET email = 'billing@acme.test' WHERE id = $1`, acc)
	waitFor(t, 20*time.Second, func() (bool, string) {
		var email, terms string
		_ = erp.QueryRow(ctx, `SELECT email, payment_terms FROM customers WHERE crm_account_id = $1`, acc).Scan(&email, &terms)
		return email == "billing@acme.test" && terms == "NET60", email + " " + terms
	})

	// Deletes.
	f.exec("crm", `DELETE FROM order_lines WHERE id = $1`, line)
	f.exec("crm", `DELETE FROM orders WHERE id = $1`, ord)
	f.exec("crm", `DELETE FROM accounts WHERE id = $1`, acc)
	waitFor(t, 20*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM sales_orders) + (SELECT count(*) FROM sales_order_lines)`)
		return n == 0, fmt.Sprintf("%d rows left in ERP", n)
	})
	if rep := f.compare(); !rep.Equal() {
		t.Errorf("ERP differs from CRM:\n%s", rep)
	}
	_ = crm
}

// TestMirror_OrderIsAtomic: an order with 100 lines is never visible in the
// ERP with only some of its lines.
func TestMirror_OrderIsAtomic(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	ctx := context.Background()
	acc := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'Big', 'USD')`, acc)

	// A reader polls the ERP the whole time and records every line count
	// it sees per order.
	erp := f.conn("erp")
	var stopReader atomic.Bool
	var partial atomic.Int64
	var seen sync.Map
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stopReader.Load() {
			rows, err := erp.Query(ctx, `SELECT o.crm_order_id::text, count(l.line_no) FROM sales_orders o LEFT JOIN sales_order_lines l USING (order_no) GROUP BY 1`)
			if err != nil {
				continue
			}
			for rows.Next() {
				var id string
				var n int64
				_ = rows.Scan(&id, &n)
				seen.Store(id, true)
				if n != 100 {
					partial.Add(1)
				}
			}
			rows.Close()
		}
	}()
	crm := f.conn("crm")
	const orders = 10
	for i := 0; i < orders; i++ {
		tx, err := crm.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ord := uuid.New()
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'USD', 100, 'open', now())`, ord, acc); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 100; j++ {
			if _, err := tx.Exec(ctx, `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) VALUES ($1, $2, $3, 1, 1)`, uuid.New(), ord, fmt.Sprintf("SKU-%d", j)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := 0
		seen.Range(func(_, _ any) bool { n++; return true })
		return n == orders, fmt.Sprintf("reader saw %d of %d orders", n, orders)
	})
	stopReader.Store(true)
	wg.Wait()
	if p := partial.Load(); p > 0 {
		t.Errorf("the reader saw %d order(s) with only part of their 100 lines", p)
	}
	if rep := f.waitConverged(20 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs:\n%s", rep)
	}
}

// TestMirror_MoneyIsExact: amounts arrive to the last digit in every
// currency; a credit limit with more decimals than its currency has goes to
// DUPLEX_DLQ with the reason, and the flow goes on.
func TestMirror_MoneyIsExact(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	ctx := context.Background()
	type acct struct {
		cur, limit string
		minor      int64
	}
	cases := []acct{
		{"EUR", "0.01", 1},
		{"EUR", "1234567890123456.78", 123456789012345678},
		{"USD", "99999999.99", 9999999999},
		{"JPY", "1000", 1000},
		{"JPY", "1234567890123456", 1234567890123456},
		{"BHD", "12.34", 12340},
		{"GBP", "-0.01", -1},
	}
	ids := make([]uuid.UUID, len(cases))
	for i, c := range cases {
		ids[i] = uuid.New()
		f.exec("crm", `INSERT INTO accounts (id, name, currency, credit_limit) VALUES ($1, $2, $3, $4::numeric)`, ids[i], "acct "+c.cur, c.cur, c.limit)
		ord := uuid.New()
		f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, $3, $4::numeric, 'open', now())`, ord, ids[i], c.cur, orderTotal(c.limit))
		f.exec("crm", `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) VALUES ($1, $2, 'X', 0.001, 0.0001)`, uuid.New(), ord)
	}
	// The poison: JPY has no minor unit, so 1000.50 JPY cannot become
	// credit_limit_minor.
	poison := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency, credit_limit) VALUES ($1, 'poison', 'JPY', 1000.50)`, poison)
	after := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency, credit_limit) VALUES ($1, 'after the poison', 'EUR', 5)`, after)

	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, after)
		return n == 1, "account after the poison has not arrived"
	})
	for i, c := range cases {
		var minor int64
		var total string
		if err := erp.QueryRow(ctx, `SELECT c.credit_limit_minor, o.total::text FROM customers c JOIN sales_orders o USING (customer_no) WHERE c.crm_account_id = $1`, ids[i]).Scan(&minor, &total); err != nil {
			t.Fatalf("%s %s: %v", c.limit, c.cur, err)
		}
		if minor != c.minor {
			t.Errorf("credit limit %s %s: ERP minor units %d, want %d", c.limit, c.cur, minor, c.minor)
		}
		if !equalDecimal(total, orderTotal(c.limit)) {
			t.Errorf("order total %s %s: ERP has %s", c.limit, c.cur, total)
		}
	}
	if n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, poison); n != 0 {
		t.Errorf("the poison account reached the ERP")
	}
	if n := queryInt(t, erp, `SELECT count(*) FROM sales_order_lines WHERE quantity = 0.001 AND unit_price = 0.0001`); n != int64(len(cases)) {
		t.Errorf("lines with 0.001 x 0.0001: %d, want %d", n, len(cases))
	}

	// The dead letter names entity, key, field, value and the reason.
	js := f.js()
	dl := readDeadLetters(t, js, 1)[0]
	if dl.Entity != "customer" || dl.Key != poison.String() || dl.Flow != "to-erp" || dl.Event == nil {
		t.Errorf("dead letter = %+v", dl)
	}
	for _, want := range []string{"credit_limit", "1000.5", "JPY", "decimals"} {
		if !strings.Contains(dl.Error, want) {
			t.Errorf("dead letter error %q does not mention %q", dl.Error, want)
		}
	}
}

// orderTotal is the limit when it fits the ERP's numeric(19,4) order
// total (15 integer digits), else 1.
func orderTotal(limit string) string {
	if len(strings.Split(strings.TrimPrefix(limit, "-"), ".")[0]) > 15 {
		return "1"
	}
	return limit
}

func equalDecimal(a, b string) bool {
	trim := func(s string) string {
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		return s
	}
	return trim(a) == trim(b)
}

// readDeadLetters waits for at least n dead letters and returns them.
func readDeadLetters(t *testing.T, js jetstream.JetStream, n int) []pipeline.DeadLetter {
	t.Helper()
	ctx := context.Background()
	var out []pipeline.DeadLetter
	waitFor(t, 30*time.Second, func() (bool, string) {
		s, err := js.Stream(ctx, pipeline.DLQStream)
		if err != nil {
			return false, err.Error()
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		if info.State.Msgs < uint64(n) {
			return false, fmt.Sprintf("%d dead letters, want %d", info.State.Msgs, n)
		}
		out = out[:0]
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			var dl pipeline.DeadLetter
			if err := json.Unmarshal(m.Data, &dl); err != nil {
				t.Fatalf("dead letter %d: %v", seq, err)
			}
			out = append(out, dl)
		}
		return true, ""
	})
	return out
}
