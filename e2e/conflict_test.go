package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// write runs one statement in its own transaction and returns the commit
// timestamp PostgreSQL recorded for it.
func write(ctx context.Context, t *testing.T, c *pgx.Conn, sql string, args ...any) time.Time {
	t.Helper()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT txid_current()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var at time.Time
	if err := c.QueryRow(ctx, `SELECT pg_xact_commit_timestamp($1::xid)`, xid).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// TestTwoWay_ConcurrentEditsConverge: rounds of simultaneous edits of the
// same customers on both sides converge to the later write of the shared
// email on both sides; the ERP's payment terms and the CRM's name, edited
// at the same time, both survive; conflicts are counted.
func TestTwoWay_ConcurrentEditsConverge(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stop := f.inProcess()
	ctx := context.Background()
	const customers = 20
	crm, erp := f.conn("crm"), f.conn("erp")
	if _, err := crm.Exec(ctx, `INSERT INTO accounts (id, name, email, currency) SELECT gen_random_uuid(), 'c' || g, 'start' || g || '@example.com', 'EUR' FROM generate_series(1, $1::int) g`, customers); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM accounts WHERE erp_customer_no IS NOT NULL`)
		return n == customers, fmt.Sprintf("%d of %d numbered", n, customers)
	})
	rows, err := crm.Query(ctx, `SELECT id::text FROM accounts ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}

	type last struct {
		value string
		at    time.Time
		sys   string
	}
	winner := map[string]last{}
	note := func(id, value, sys string, at time.Time) {
		w, ok := winner[id]
		// The later commit wins; on a tie the CRM (first in systems).
		if !ok || at.After(w.at) || (at.Equal(w.at) && sys == "crm") {
			winner[id] = last{value, at, sys}
		}
	}
	var mu sync.Mutex
	round := func(r int, wantTerms bool) {
		var wg sync.WaitGroup
		wg.Add(2)
		crmW, erpW := f.conn("crm"), f.conn("erp")
		go func() {
			defer wg.Done()
			for i, id := range ids {
				email := fmt.Sprintf("crm-r%d-%d@example.com", r, i)
				at := write(ctx, t, crmW, `UPDATE accounts SET email = $2, name = $3 WHERE id = $1`, id, email, fmt.Sprintf("name r%d", r))
				mu.Lock()
				note(id, email, "crm", at)
				mu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			for i, id := range ids {
				email := fmt.Sprintf("erp-r%d-%d@example.com", r, i)
				at := write(ctx, t, erpW, `UPDATE customers SET email = $2, payment_terms = $3 WHERE crm_account_id = $1`, id, email, fmt.Sprintf("NET%d", r))
				mu.Lock()
				note(id, email, "erp", at)
				mu.Unlock()
			}
		}()
		wg.Wait()
	}
	for r := 1; r <= 10; r++ {
		round(r, true)
	}
	f.waitBothConverged(time.Minute)
	check := func(phase string, rounds int) {
		t.Helper()
		for _, id := range ids {
			var ce, ee, terms, cterms, name string
			if err := crm.QueryRow(ctx, `SELECT email, payment_terms, name FROM accounts WHERE id = $1`, id).Scan(&ce, &cterms, &name); err != nil {
				t.Fatal(err)
			}
			if err := erp.QueryRow(ctx, `SELECT email, payment_terms FROM customers WHERE crm_account_id = $1`, id).Scan(&ee, &terms); err != nil {
				t.Fatal(err)
			}
			w := winner[id]
			if ce != w.value || ee != w.value {
				t.Errorf("%s: customer %s email: CRM %q, ERP %q; the later write was %q (%s at %s)", phase, id, ce, ee, w.value, w.sys, w.at.Format(time.RFC3339Nano))
			}
			if want := fmt.Sprintf("NET%d", rounds); terms != want || cterms != want {
				t.Errorf("%s: customer %s payment_terms ERP %q CRM %q, want %q", phase, id, terms, cterms, want)
			}
			if want := fmt.Sprintf("name r%d", rounds); name != want {
				t.Errorf("%s: customer %s name %q, want %q", phase, id, name, want)
			}
		}
	}
	check("live rounds", 10)
	conflicts := int64(0)
	for _, st := range f.app.Flows {
		conflicts += st.Snapshot().Conflicts
	}
	t.Logf("10 live rounds on %d customers: %d conflicts counted", customers, conflicts)

	// One more round with duplex stopped: every customer is then edited on
	// both sides before either edit travels, so each is exactly one
	// conflict.
	stop()
	round(11, true)
	f.inProcess()
	f.waitBothConverged(time.Minute)
	check("offline round", 11)
	offline := int64(0)
	for _, st := range f.app.Flows {
		offline += st.Snapshot().Conflicts
	}
	if offline != customers {
		t.Errorf("offline round: %d conflicts counted, want %d (one per customer)", offline, customers)
	}
}
