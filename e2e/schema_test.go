package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/config"
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

// crashCRM crashes the CRM's PostgreSQL (pg_ctl stop -m immediate) and
// starts it again: crash recovery takes each replication slot back to the
// position saved at the last checkpoint, so the slot sends again WAL that
// duplex already handled.
func (f *fixture) crashCRM(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := f.crm.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.crm.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// holds returns the CRM's rows of duplex.held as "entity@since_lsn".
func (f *fixture) holds(t *testing.T) []string {
	t.Helper()
	c := f.conn("crm")
	defer c.Close(context.Background())
	rows, err := c.Query(context.Background(), `SELECT entity || '@' || since_lsn FROM duplex.held ORDER BY entity`)
	if err != nil {
		t.Fatalf("duplex.held: %v", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("duplex.held: %v", err)
	}
	return out
}

// waitCustomer waits until the ERP has the customer of CRM account id.
func (f *fixture) waitCustomer(t *testing.T, id uuid.UUID, why string) {
	t.Helper()
	erp := f.conn("erp")
	defer erp.Close(context.Background())
	waitFor(t, 60*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, id) == 1, why
	})
}

// restoreCountry adds accounts.country back with a value in every row,
// and renames account acc.
func (f *fixture) restoreCountry(acc uuid.UUID, name string) {
	f.exec("crm", `ALTER TABLE accounts ADD COLUMN country char(2)`)
	f.exec("crm", `UPDATE accounts SET country = CASE WHEN id = $1 THEN 'FR' ELSE 'DE' END, name = CASE WHEN id = $1 THEN $2 ELSE name END`, acc, name)
}

// shortLeases lets a duplex started after another was SIGKILLed take over
// within 2 s (ha.lease_ttl) instead of 10.
func (f *fixture) shortLeases(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(f.cfgPath)
	if err == nil {
		err = os.WriteFile(f.cfgPath, append(b, "ha:\n  lease_ttl: 2s\n"...), 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// newAccount inserts a CRM account and returns its id.
func (f *fixture) newAccount(t *testing.T, name string) uuid.UUID {
	t.Helper()
	id := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, country, currency) VALUES ($1, $2, 'DE', 'EUR')`, id, name)
	return id
}

// TestSchema_NotHeldAgainAfterACrashRestart: a mapped column dropped (the
// entity held) and restored (the hold released at the next start),
// followed by a crash restart of the CRM, which makes the slot send that
// WAL again with the relation as it was (without the column): the entity
// is not held again, and every change arrives. A second drop is a new
// one and holds the entity again; after it is restored and released,
// duplex SIGKILLed and the CRM crashed once more, which re-sends both
// ranges, nothing is held and nothing is lost.
func TestSchema_NotHeldAgainAfterACrashRestart(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	f.shortLeases(t)
	d := f.startChild()
	acc := f.newAccount(t, "before the drop")
	f.waitCustomer(t, acc, "account not in the ERP")
	// The slot's position saved from here on is before the drop.
	f.exec("crm", `CHECKPOINT`)

	for round := 1; round <= 2; round++ {
		f.exec("crm", `ALTER TABLE accounts DROP COLUMN country`)
		f.exec("crm", `UPDATE accounts SET name = $2 WHERE id = $1`, acc, fmt.Sprintf("renamed while held %d", round))
		var held []string
		waitFor(t, 30*time.Second, func() (bool, string) {
			held = f.holds(t)
			return len(held) == 1 && strings.HasPrefix(held[0], "customer@"), fmt.Sprintf("round %d: customer not held: %v", round, held)
		})
		if round == 2 {
			// A crash while held, with the first round's released
			// changes sent again before the held ones: one hold, at
			// its first position, and other entities go on.
			f.crashCRM(t)
			ord := uuid.New()
			f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 5, 'open', now())`, ord, acc)
			f.waitCRM(t, "the order did not get its ERP number (orders stopped with the held accounts?)", `SELECT erp_order_no IS NOT NULL FROM orders WHERE id = $1`, ord)
			if h := f.holds(t); len(h) != 1 || h[0] != held[0] {
				t.Fatalf("after a crash restart while held: holds %v, want %v", h, held)
			}
		}
		f.restoreCountry(acc, fmt.Sprintf("restored %d", round))
		if round == 1 {
			d.stop(t)
		} else {
			d.kill(t)
		}
		d = f.startChild()
		f.waitCustomer(t, f.newAccount(t, fmt.Sprintf("after the restart %d", round)), "account after the restart not in the ERP")
		waitFor(t, 30*time.Second, func() (bool, string) {
			h := f.holds(t)
			return len(h) == 0, fmt.Sprintf("round %d: the hold was not released: %v", round, h)
		})
		if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
			t.Fatalf("round %d: ERP differs after the release:\n%s", round, rep)
		}

		// The crash: the slot goes back before the drop(s).
		if round == 2 {
			d.kill(t)
		}
		f.crashCRM(t)
		if round == 2 {
			d = f.startChild()
		}
		f.exec("crm", `UPDATE accounts SET name = $2 WHERE id = $1`, acc, fmt.Sprintf("after the crash %d", round))
		f.waitCustomer(t, f.newAccount(t, fmt.Sprintf("after the crash %d", round)), "account after the crash not in the ERP (the customer entity is held again?)")
		if h := f.holds(t); len(h) != 0 {
			t.Fatalf("round %d: held again after the crash restart: %v", round, h)
		}
		if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
			t.Fatalf("round %d: ERP differs after the crash restart:\n%s", round, rep)
		}
	}
	assertNoDeadLetters(t, f)
}

// waitCRM waits until a query on the CRM returns true.
func (f *fixture) waitCRM(t *testing.T, why, sql string, args ...any) {
	t.Helper()
	c := f.conn("crm")
	defer c.Close(context.Background())
	waitFor(t, 60*time.Second, func() (bool, string) {
		var ok bool
		if err := c.QueryRow(context.Background(), sql, args...).Scan(&ok); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return ok, why
	})
}

// TestSchema_HeldAcrossRestarts: restarts while an entity is held, and
// between the fix and the release of its hold. A CRM crash restart while
// held: the hold persists, once, with its first position, its changes
// stay back and other entities go on. The column
// restored and duplex restarted, the held changes read again, but duplex
// SIGKILLed and the CRM crashed before the hold is released: the next
// start reads them again and releases the hold, and a crash after the
// release holds nothing anew. Every change arrives.
func TestSchema_HeldAcrossRestarts(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	f.shortLeases(t)
	d := f.startChild()
	acc := f.newAccount(t, "before the drop")
	f.waitCustomer(t, acc, "account not in the ERP")
	f.waitCRM(t, "no customer number written back", `SELECT erp_customer_no IS NOT NULL FROM accounts WHERE id = $1`, acc)
	f.exec("crm", `CHECKPOINT`)

	f.exec("crm", `ALTER TABLE accounts DROP COLUMN country`)
	f.exec("crm", `UPDATE accounts SET name = 'held' WHERE id = $1`, acc)
	var first []string
	waitFor(t, 30*time.Second, func() (bool, string) {
		first = f.holds(t)
		return len(first) == 1 && strings.HasPrefix(first[0], "customer@"), fmt.Sprintf("customer not held: %v", first)
	})
	erpName := func() string {
		c := f.conn("erp")
		defer c.Close(context.Background())
		var name string
		if err := c.QueryRow(context.Background(), `SELECT name FROM customers WHERE crm_account_id = $1`, acc).Scan(&name); err != nil {
			t.Fatal(err)
		}
		return name
	}

	// Restart while held: a crash restart of the CRM (the capture
	// session starts again and reads the slot from before the drop).
	f.crashCRM(t)
	ord := uuid.New()
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 5, 'open', now())`, ord, acc)
	f.exec("crm", `UPDATE accounts SET name = 'held, after the crash' WHERE id = $1`, acc)
	f.waitCRM(t, "the order did not get its ERP number (orders stopped with the held accounts?)", `SELECT erp_order_no IS NOT NULL FROM orders WHERE id = $1`, ord)
	if h := f.holds(t); len(h) != 1 || h[0] != first[0] {
		t.Fatalf("after a restart while held: holds %v, want %v", h, first)
	}
	if n := erpName(); n != "before the drop" {
		t.Fatalf("a held change reached the ERP: name %q", n)
	}

	// The fix, and a restart that reads the held changes again. The hold
	// is released once a change committed after the start is durable; the
	// CRM commits none to a published table (only WAL beyond the last
	// one), so the hold stays.
	f.restoreCountry(acc, "restored")
	d.stop(t)
	f.exec("crm", `CREATE TABLE unpublished (x int); INSERT INTO unpublished VALUES (1)`)
	d = f.startChild()
	erp := f.conn("erp")
	waitFor(t, 60*time.Second, func() (bool, string) {
		n := erpName()
		return n == "restored", fmt.Sprintf("held changes not read again: ERP name %q", n)
	})
	if h := f.holds(t); len(h) != 1 || h[0] != first[0] {
		t.Fatalf("released before anything committed after the start (this test needs the hold still there): holds %v", h)
	}
	// Restart between the fix and the release.
	d.kill(t)
	f.crashCRM(t)
	f.startChild()
	f.exec("crm", `UPDATE accounts SET name = 'final' WHERE id = $1`, acc)
	waitFor(t, 60*time.Second, func() (bool, string) {
		h := f.holds(t)
		return len(h) == 0, fmt.Sprintf("the hold was not released: %v", h)
	})
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Fatalf("ERP differs after the release:\n%s", rep)
	}

	// A crash after the release.
	f.crashCRM(t)
	f.waitCustomer(t, f.newAccount(t, "after the last crash"), "account after the crash not in the ERP (the customer entity is held again?)")
	if h := f.holds(t); len(h) != 0 {
		t.Fatalf("held again after the crash restart: %v", h)
	}
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Fatalf("ERP differs after the crash restart:\n%s", rep)
	}
	if n := queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord); n != 1 {
		t.Errorf("order made while held: %d in the ERP, want 1", n)
	}
	assertNoDeadLetters(t, f)
}

// TestSchema_HeldEntitySharedFieldsDoNotStallTheOtherFlow: while the
// customer entity is held in the CRM, a CRM user changes the shared
// field email, then an ERP user changes it again. The CRM's capture does
// not publish the held write but records its version as it reads it, so
// the ERP's later write is applied to the CRM at once instead of waiting
// for the fix until max_wait and being dead-lettered. After the fix the
// held write reaches the ERP, where the later ERP write keeps its place:
// both sides end with the ERP's email.
func TestSchema_HeldEntitySharedFieldsDoNotStallTheOtherFlow(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.tweak = func(c *config.Config) {
		for i := range c.Flows {
			c.Flows[i].MaxWait = 10 * time.Second
		}
	}
	stop := f.inProcess()
	acc := f.newAccount(t, "before the drop")
	f.waitCustomer(t, acc, "account not in the ERP")
	f.waitCRM(t, "no customer number written back", `SELECT erp_customer_no IS NOT NULL FROM accounts WHERE id = $1`, acc)

	f.exec("crm", `ALTER TABLE accounts DROP COLUMN country`)
	f.exec("crm", `UPDATE accounts SET email = 'crm@held.example', name = 'held' WHERE id = $1`, acc)
	waitFor(t, 30*time.Second, func() (bool, string) {
		h := f.holds(t)
		return len(h) == 1, fmt.Sprintf("customer not held: %v", h)
	})
	f.exec("erp", `UPDATE customers SET email = 'erp@later.example' WHERE crm_account_id = $1`, acc)
	f.waitCRM(t, "the ERP's later email did not reach the CRM (waiting for the held capture to record the CRM's write?)",
		`SELECT email = 'erp@later.example' FROM accounts WHERE id = $1`, acc)
	assertNoDeadLetters(t, f)

	stop()
	f.restoreCountry(acc, "restored")
	f.inProcess()
	f.waitCustomer(t, f.newAccount(t, "after the fix"), "account after the fix not in the ERP")
	waitFor(t, 30*time.Second, func() (bool, string) {
		h := f.holds(t)
		return len(h) == 0, fmt.Sprintf("the hold was not released: %v", h)
	})
	f.waitBothConverged(60 * time.Second)
	erp := f.conn("erp")
	var email, name string
	if err := erp.QueryRow(context.Background(), `SELECT email, name FROM customers WHERE crm_account_id = $1`, acc).Scan(&email, &name); err != nil {
		t.Fatal(err)
	}
	if email != "erp@later.example" || name != "restored" {
		t.Errorf("ERP after the fix: email %q, name %q; want the ERP's later email and the CRM's name", email, name)
	}
	assertNoDeadLetters(t, f)
}
