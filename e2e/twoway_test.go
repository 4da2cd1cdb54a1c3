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
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/workload"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// erpLoop plays the ERP application until stopped: it invoices orders,
// takes payments and edits customers.
type erpLoop struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ops    atomic.Int64
	errs   atomic.Int64
	last   atomic.Value
}

func startERP(t *testing.T, dsn string, edits bool) *erpLoop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &erpLoop{cancel: cancel}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		sim := workload.NewERP(7)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			if conn == nil || conn.IsClosed() {
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					l.errs.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				conn = c
			}
			n1, err1 := sim.InvoiceOpenOrders(ctx, conn, 20)
			n2, err2 := sim.PayInvoices(ctx, conn, 10)
			n3 := 0
			var err3 error
			if edits {
				n3, err3 = sim.EditCustomer(ctx, conn)
			}
			for _, err := range []error{err1, err2, err3} {
				if err != nil && ctx.Err() == nil {
					l.errs.Add(1)
					l.last.Store(err.Error())
					conn.Close(context.Background())
					conn = nil
					break
				}
			}
			l.ops.Add(int64(n1 + n2 + n3))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *erpLoop) stop() { l.cancel(); l.wg.Wait() }

// settleERP invoices and pays what is left, so that the final state does
// not depend on where the loop stopped.
func settleERP(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sim := workload.NewERP(99)
	for {
		n1, err := sim.InvoiceOpenOrders(ctx, conn, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if n1 == 0 {
			return
		}
	}
}

// TestTwoWay_OrderToCash: CRM accounts and orders go to the ERP, the ERP
// numbers them, invoices them and takes payments, and all of it comes back
// to the CRM: both sides agree on every mapped field, in every currency.
func TestTwoWay_OrderToCash(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	l := startLoadWith(t, f.env("CRM_DSN"), 2, 3000, 0, true)
	erp := startERP(t, f.env("ERP_DSN"), true)
	l.waitRows(t, 3000, 2*time.Minute)
	l.stop()
	crm, erpc := f.conn("crm"), f.conn("erp")
	ctx := context.Background()
	// The ERP pays invoices at random: on a loaded machine it may not have
	// paid one yet when the CRM load ends.
	waitFor(t, time.Minute, func() (bool, string) {
		return queryInt(t, erpc, `SELECT count(*) FROM invoices WHERE status = 'paid'`) > 0, "the ERP paid no invoice"
	})
	time.Sleep(time.Second)
	erp.stop()
	settleERP(t, f.env("ERP_DSN"))
	a, b := f.waitBothConverged(2 * time.Minute)
	t.Logf("crm → erp:\n%s\nerp → crm:\n%s", a, b)

	// Every CRM account knows its ERP customer number.
	if n := queryInt(t, crm, `SELECT count(*) FROM accounts WHERE erp_customer_no IS NULL`); n != 0 {
		t.Errorf("%d CRM accounts without erp_customer_no", n)
	}
	// Invoices arrived with their amounts, in several currencies,
	// including JPY and BHD, and the paid ones show as paid.
	rows, err := crm.Query(ctx, `SELECT currency, count(*), sum(amount)::text, sum(paid_amount)::text, count(*) FILTER (WHERE status = 'paid') FROM invoices GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	type sums struct {
		n            int64
		amount, paid string
		paidN        int64
	}
	crmSums := map[string]sums{}
	for rows.Next() {
		var cur string
		var s sums
		if err := rows.Scan(&cur, &s.n, &s.amount, &s.paid, &s.paidN); err != nil {
			t.Fatal(err)
		}
		crmSums[cur] = s
	}
	rows.Close()
	for _, cur := range []string{"JPY", "BHD", "EUR"} {
		if crmSums[cur].n == 0 {
			t.Errorf("no %s invoices reached the CRM: %v", cur, crmSums)
		}
	}
	erows, err := erpc.Query(ctx, `SELECT currency, count(*), sum(amount)::text, sum(paid_amount)::text, count(*) FILTER (WHERE status = 'paid') FROM invoices GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for erows.Next() {
		var cur string
		var s sums
		if err := erows.Scan(&cur, &s.n, &s.amount, &s.paid, &s.paidN); err != nil {
			t.Fatal(err)
		}
		c := crmSums[cur]
		if c.n != s.n || !equalDecimal(c.amount, s.amount) || !equalDecimal(c.paid, s.paid) || c.paidN != s.paidN {
			t.Errorf("%s invoices: CRM %+v, ERP %+v", cur, c, s)
		}
	}
	erows.Close()
	if n := queryInt(t, crm, `SELECT count(*) FROM invoices WHERE status = 'paid'`); n == 0 {
		t.Errorf("no paid invoice in the CRM")
	}
	if n := queryInt(t, crm, `SELECT count(*) FROM orders WHERE erp_order_no IS NULL`); n != 0 {
		t.Errorf("%d CRM orders without erp_order_no", n)
	}
	assertNoDeadLetters(t, f)
}

// TestTwoWay_AmountThatDoesNotFitIsDeadLettered: an ERP invoice of 10.005
// EUR cannot be stored in the CRM's numeric(18,2): it goes to the dead
// letters with the reason, never rounded, and the flow goes on.
func TestTwoWay_AmountThatDoesNotFitIsDeadLettered(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	acc, ord := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'Fine', 'EUR')`, acc)
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 10, 'won', now())`, ord, acc)
	crm := f.conn("crm")
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM orders WHERE id = $1 AND erp_order_no IS NOT NULL`, ord)
		return n == 1, "order has no ERP number yet"
	})
	f.exec("erp", `INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
		SELECT order_no, customer_no, 'EUR', 10.005, 'open', now(), current_date FROM sales_orders WHERE crm_order_id = $1`, ord)
	f.exec("erp", `INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
		SELECT order_no, customer_no, 'EUR', 10.01, 'open', now(), current_date FROM sales_orders WHERE crm_order_id = $1`, ord)
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM invoices WHERE amount = 10.01`)
		return n == 1, "the good invoice has not arrived"
	})
	if n := queryInt(t, crm, `SELECT count(*) FROM invoices WHERE amount <> 10.01`); n != 0 {
		t.Errorf("the 10.005 EUR invoice reached the CRM (%d rows)", n)
	}
	dl := readDeadLetters(t, f.js(), 1)[0]
	if dl.Flow != "to-crm" || dl.Entity != "invoice" {
		t.Errorf("dead letter = %+v", dl)
	}
	for _, want := range []string{"amount", "10.005", "numeric(18,2)"} {
		if !strings.Contains(dl.Error, want) {
			t.Errorf("dead letter error %q lacks %q", dl.Error, want)
		}
	}
}

// countEvents reads the whole DUPLEX stream and counts events per source.
func countEvents(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, ev := range streamEvents(t, js) {
		out[ev.Source]++
	}
	return out
}

// streamEvents reads every event of the DUPLEX stream.
func streamEvents(t *testing.T, js jetstream.JetStream) []transform.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []transform.Event
	if info.State.Msgs == 0 {
		return out
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for read := uint64(0); read < info.State.Msgs; {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			read++
			var tx transform.Tx
			if err := json.Unmarshal(m.Data(), &tx); err != nil {
				t.Fatal(err)
			}
			out = append(out, tx.Events...)
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestTwoWay_NoEcho: 10,000 CRM changes and 10,000 ERP changes put exactly
// 20,000 events on the stream: nothing duplex applied comes back. Running
// the same edits again adds exactly their own 20,000.
func TestTwoWay_NoEcho(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	ctx := context.Background()
	const accounts = 200
	crm := f.conn("crm")
	if _, err := crm.Exec(ctx, `INSERT INTO accounts (id, name, email, currency, credit_limit)
		SELECT gen_random_uuid(), 'acct ' || g, 'a' || g || '@example.com', 'EUR', g FROM generate_series(1, $1::int) g`, accounts); err != nil {
		t.Fatal(err)
	}
	erpc := f.conn("erp")
	waitFor(t, time.Minute, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM accounts WHERE erp_customer_no IS NOT NULL`)
		return n == accounts, fmt.Sprintf("%d of %d accounts have their ERP number", n, accounts)
	})
	js := f.js()
	waitStable := func() map[string]int {
		var last map[string]int
		waitFor(t, time.Minute, func() (bool, string) {
			for _, fl := range []string{"to-erp", "to-crm"} {
				c, err := js.Consumer(ctx, pipeline.StreamName, fl)
				if err != nil {
					return false, err.Error()
				}
				if ci := c.CachedInfo(); ci.NumPending+uint64(ci.NumAckPending) > 0 {
					return false, fmt.Sprintf("%s has %d pending", fl, ci.NumPending+uint64(ci.NumAckPending))
				}
			}
			now := countEvents(t, js)
			stable := last != nil && now["crm"] == last["crm"] && now["erp"] == last["erp"]
			last = now
			return stable, fmt.Sprintf("events %v", now)
		})
		return last
	}
	base := waitStable()
	t.Logf("after seeding %d accounts: %v events (the ERP's numbers coming back)", accounts, base)

	edits := func(round int) {
		var wg sync.WaitGroup
		const n = 10_000
		work := func(dsn, sql string) {
			defer wg.Done()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close(ctx)
			for i := 0; i < n/2; i++ {
				if _, err := c.Exec(ctx, sql, i%accounts, fmt.Sprintf("r%d-%d", round, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}
		wg.Add(4)
		// CRM: names and credit limits; ERP: payment terms. One row, one
		// event each.
		go work(f.env("CRM_DSN"), `UPDATE accounts SET name = $2 WHERE id = (SELECT id FROM accounts ORDER BY id OFFSET $1 LIMIT 1)`)
		go work(f.env("CRM_DSN"), `UPDATE accounts SET credit_limit = length($2) + $1 WHERE id = (SELECT id FROM accounts ORDER BY id OFFSET $1 LIMIT 1)`)
		go work(f.env("ERP_DSN"), `UPDATE customers SET payment_terms = $2 WHERE customer_no = (SELECT customer_no FROM customers ORDER BY customer_no OFFSET $1 LIMIT 1)`)
		go work(f.env("ERP_DSN"), `UPDATE customers SET payment_terms = 'x' || $2 WHERE customer_no = (SELECT customer_no FROM customers ORDER BY customer_no OFFSET $1 LIMIT 1)`)
		wg.Wait()
	}
	edits(1)
	first := waitStable()
	if d := first["crm"] - base["crm"]; d != 10_000 {
		t.Errorf("CRM events: %d, want 10000", d)
	}
	if d := first["erp"] - base["erp"]; d != 10_000 {
		t.Errorf("ERP events: %d, want 10000", d)
	}
	edits(1) // the same edits again
	second := waitStable()
	if d := second["crm"] - first["crm"]; d != 10_000 {
		t.Errorf("second run, CRM events: %d, want 10000", d)
	}
	if d := second["erp"] - first["erp"]; d != 10_000 {
		t.Errorf("second run, ERP events: %d, want 10000", d)
	}
	t.Logf("events: base %v, after 20,000 edits %v, after the same again %v", base, first, second)
	a, b := f.waitBothConverged(time.Minute)
	if !a.Equal() || !b.Equal() {
		t.Errorf("sides differ")
	}
	_ = erpc
}

// TestTwoWay_KillDuplexTwice: duplex is killed with SIGKILL twice during a
// two-way workload and restarted; both sides converge, nothing lost, no
// loop (the stream stops growing once the workload stops).
func TestTwoWay_KillDuplexTwice(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	d := f.startChild()
	f.waitSlot(t)
	const total = 12_000
	l := startLoadWith(t, f.env("CRM_DSN"), 2, total, 0, true)
	erp := startERP(t, f.env("ERP_DSN"), true)
	for i, at := range []int64{total / 3, 2 * total / 3} {
		l.waitRows(t, at, 2*time.Minute)
		d.kill(t)
		t.Logf("kill %d after %d CRM row changes and %d ERP operations", i+1, l.rows.Load(), erp.ops.Load())
		time.Sleep(300 * time.Millisecond)
		d = f.startChild()
	}
	l.waitRows(t, total, 3*time.Minute)
	l.stop()
	erp.stop()
	settleERP(t, f.env("ERP_DSN"))
	a, b := f.waitBothConverged(2 * time.Minute)
	t.Logf("crm → erp:\n%s\nerp → crm:\n%s", a, b)
	js := f.js()
	first := countEvents(t, js)
	time.Sleep(2 * time.Second)
	if again := countEvents(t, js); again["crm"] != first["crm"] || again["erp"] != first["erp"] {
		t.Errorf("the stream keeps growing without changes: %v then %v (a loop)", first, again)
	}
	d.stop(t)
	assertNoDeadLetters(t, f)
}

// TestTwoWay_AccountCreatedWhileERPDown: an account and its orders made in
// the CRM while the ERP is down reach the ERP once it is back, in order,
// and the CRM then learns the ERP's customer and order numbers.
func TestTwoWay_AccountCreatedWhileERPDown(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	f.inProcess()
	ctx := context.Background()
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	acc := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency, credit_limit) VALUES ($1, 'Born while the ERP was down', 'BHD', 100.5)`, acc)
	var orders []uuid.UUID
	for i := 0; i < 5; i++ {
		o := uuid.New()
		orders = append(orders, o)
		f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'BHD', $3, 'won', now())`, o, acc, 10+i)
		f.exec("crm", `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) VALUES ($1, $2, 'SKU', 1, $3)`, uuid.New(), o, 10+i)
	}
	time.Sleep(2 * time.Second)
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	crm := f.conn("crm")
	waitFor(t, time.Minute, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM accounts WHERE id = $1 AND erp_customer_no IS NOT NULL`, acc)
		m := queryInt(t, crm, `SELECT count(*) FROM orders WHERE account_id = $1 AND erp_order_no IS NOT NULL`, acc)
		return n == 1 && m == 5, fmt.Sprintf("account numbered: %d, orders numbered: %d of 5", n, m)
	})
	erpc := f.conn("erp")
	var customerNo int64
	if err := crm.QueryRow(ctx, `SELECT erp_customer_no FROM accounts WHERE id = $1`, acc).Scan(&customerNo); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, erpc, `SELECT count(*) FROM customers WHERE customer_no = $1 AND crm_account_id = $2 AND credit_limit_minor = 100500`, customerNo, acc); n != 1 {
		t.Errorf("the CRM's erp_customer_no %d does not name the ERP customer of %s with 100.500 BHD", customerNo, acc)
	}
	// The orders arrived in the order they were placed.
	rows, err := erpc.Query(ctx, `SELECT crm_order_id FROM sales_orders WHERE customer_no = $1 ORDER BY order_no`, customerNo)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(orders) {
		t.Errorf("ERP orders in order_no order %v, want %v", got, orders)
	}
	f.waitBothConverged(time.Minute)
}
