package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestLargeTx_AtomicInPartsAcrossAKill: one CRM transaction of 40,001 rows
// (an order and its 40,000 lines, 81 chunks on the stream) is applied part
// by part inside one ERP transaction. duplex is killed while the ERP
// transaction is open and started again. A reader polling the ERP the whole
// time sees either none of the lines or all of them, and the systems end
// equal.
func TestLargeTx_AtomicInPartsAcrossAKill(t *testing.T) {
	const lines = 40_000
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	acc, ord := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'Big', 'USD')`, acc)

	erp := f.conn("erp")
	var stop atomic.Bool
	var partial atomic.Int64
	var counts sync.Map
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			var n int64
			if err := erp.QueryRow(ctx, `SELECT count(*) FROM sales_order_lines l JOIN sales_orders o USING (order_no) WHERE o.crm_order_id = $1`, ord).Scan(&n); err != nil {
				continue
			}
			counts.Store(n, true)
			if n != 0 && n != lines {
				partial.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	c := f.startChild()
	waitFor(t, 30*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(c.log)
		return strings.Contains(string(b), `msg="replication started" source=crm`), "the CRM capture has not started streaming"
	})
	f.exec("crm", `BEGIN;
INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ('`+ord.String()+`', '`+acc.String()+`', 'USD', 40000, 'open', now());
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
	SELECT gen_random_uuid(), '`+ord.String()+`', 'SKU-' || i, 1, 1.00 FROM generate_series(1, `+strconv.Itoa(lines)+`) i;
COMMIT`)
	// Kill duplex once it is applying the transaction in parts.
	waitFor(t, 60*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(c.log)
		return strings.Contains(string(b), "large transaction: applying"), "duplex has not started the large transaction"
	})
	time.Sleep(300 * time.Millisecond)
	c.kill(t)
	c2 := f.startChild()
	defer c2.stop(t)

	waitFor(t, 120*time.Second, func() (bool, string) {
		_, done := counts.Load(int64(lines))
		return done, "the ERP does not show the lines yet"
	})
	stop.Store(true)
	wg.Wait()
	if p := partial.Load(); p > 0 {
		var seen []int64
		counts.Range(func(k, _ any) bool { seen = append(seen, k.(int64)); return true })
		t.Errorf("a reader saw part of the transaction %d times (line counts seen: %v)", p, seen)
	}
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs:\n%s", rep)
	}
	b, _ := os.ReadFile(c2.log)
	if !strings.Contains(string(b), "large transaction applied") {
		t.Errorf("the restarted duplex did not apply the transaction in parts; its log:\n%s", tail(string(b), 30))
	}
}

// TestLargeTx_PoisonEventIsDeadLetteredAndTheRestApplied: one line of a
// 6,001-row transaction is refused by the ERP. The transaction, applied in
// parts, is rolled back, read again without that line, and committed: the
// line is dead-lettered with the reason, the other 6,000 rows arrive
// together, and a reader never sees part of them.
func TestLargeTx_PoisonEventIsDeadLetteredAndTheRestApplied(t *testing.T) {
	const lines = 6000
	f := newFixture(t, fixtureOptions{})
	f.exec("erp", `ALTER TABLE sales_order_lines ADD CONSTRAINT no_poison CHECK (sku <> 'POISON')`)
	var logs syncBuffer
	f.logTo = &logs
	f.inProcessLevel(slog.LevelInfo)
	ctx := context.Background()
	acc, ord := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'Big', 'USD')`, acc)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, acc) == 1, "account not in the ERP"
	})
	var partial atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		reader := f.conn("erp")
		for !stop.Load() {
			var n int64
			if err := reader.QueryRow(ctx, `SELECT count(*) FROM sales_order_lines l JOIN sales_orders o USING (order_no) WHERE o.crm_order_id = $1`, ord).Scan(&n); err == nil && n != 0 && n != lines {
				partial.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	f.exec("crm", `BEGIN;
INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ('`+ord.String()+`', '`+acc.String()+`', 'USD', 6001, 'open', now());
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
	SELECT gen_random_uuid(), '`+ord.String()+`', CASE WHEN i = 3000 THEN 'POISON' ELSE 'SKU-' || i END, 1, 1.00 FROM generate_series(1, `+strconv.Itoa(lines+1)+`) i;
COMMIT`)
	waitFor(t, 60*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM sales_order_lines l JOIN sales_orders o USING (order_no) WHERE o.crm_order_id = $1`, ord)
		return n == lines, fmt.Sprintf("%d of %d lines in the ERP", n, lines)
	})
	stop.Store(true)
	wg.Wait()
	if p := partial.Load(); p > 0 {
		t.Errorf("a reader saw part of the transaction %d times", p)
	}
	dls := readDeadLetters(t, f.js(), 1)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want only the poisoned line's", len(dls))
	}
	dl := dls[0]
	if dl.Flow != "to-erp" || dl.Entity != "order_line" || !strings.Contains(dl.Error, "no_poison") || dl.Event == nil || dl.Event.Data["sku"] != "POISON" {
		t.Errorf("dead letter = %+v", dl)
	}
	if !strings.Contains(logs.String(), "large transaction applied") {
		t.Errorf("the transaction was not applied in parts")
	}
}
