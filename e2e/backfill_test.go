package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/cli"
)

// TestBackfill_OnlineWhileLiveUpdates: the ERP's copy of the customers is
// damaged behind duplex's back (as if restored from an old backup). `duplex
// backfill --flow to-erp --table accounts` re-reads the CRM's accounts
// while 5,000 live updates hit the same rows. The ERP ends equal to the CRM
// in every carried field, so no row was left older than its latest live
// update, and the backfill re-read every row.
func TestBackfill_OnlineWhileLiveUpdates(t *testing.T) {
	const accounts, updates = 2000, 5000
	f := newFixture(t, fixtureOptions{})
	f.exec("crm", fmt.Sprintf(`INSERT INTO accounts (id, name, email, country, currency, credit_limit)
		SELECT gen_random_uuid(), 'acct ' || g, 'a' || g || '@example.com', 'DE', 'EUR', g * 10.01 FROM generate_series(1, %d) g`, accounts))
	f.inProcess()
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Fatalf("not converged before the backfill:\n%s", rep)
	}
	// Damage the ERP's copy of fields the CRM owns. The ERP does not
	// publish them, so nothing travels back.
	f.exec("erp", `UPDATE customers SET name = 'stale', country = 'XX', credit_limit_minor = 0`)
	if rep := f.compare(); rep.Equal() {
		t.Fatal("the damage did not show in the comparison")
	}

	ctx := context.Background()
	crm := f.conn("crm")
	rows, err := crm.Query(ctx, `SELECT id::text FROM accounts`)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()

	// Live updates, from a connection of their own, for the whole backfill.
	var wg sync.WaitGroup
	wg.Add(1)
	updErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		conn := f.conn("crm")
		for i := 0; i < updates; i++ {
			id := ids[rand.IntN(len(ids))]
			if _, err := conn.Exec(ctx, `UPDATE accounts SET name = $2, credit_limit = $3, updated_at = now() WHERE id = $1`,
				id, fmt.Sprintf("live %d", i), fmt.Sprintf("%d.%02d", i, i%100)); err != nil {
				updErr <- err
				return
			}
			if i%50 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()

	t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	var stdout, stderr bytes.Buffer
	code := cli.MainIO([]string{"backfill", "--config", f.cfgPath, "--flow", "to-erp", "--table", "accounts", "--chunk", "200"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("duplex backfill exited %d:\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), fmt.Sprintf("done: %d rows re-read", accounts)) {
		t.Errorf("backfill output does not report %d rows re-read:\n%s", accounts, stdout.String())
	}
	wg.Wait()
	select {
	case err := <-updErr:
		t.Fatalf("live updates: %v", err)
	default:
	}
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs from the CRM after the backfill:\n%s", rep)
	}
	// The capture left rows to the live changes between watermarks (the
	// updates ran during the backfill); the backfill is recorded done.
	var status string
	var n int64
	if err := crm.QueryRow(ctx, `SELECT status, rows FROM duplex.backfills ORDER BY id DESC LIMIT 1`).Scan(&status, &n); err != nil {
		t.Fatal(err)
	}
	if status != "done" || n != accounts {
		t.Errorf("duplex.backfills: status %s, rows %d; want done, %d", status, n, accounts)
	}
}

// TestBackfill_RefusesUnknownTableAndBadCondition: the command names what
// is wrong before anything is requested.
func TestBackfill_RefusesUnknownTableAndBadCondition(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--flow", "to-erp", "--table", "nope"}, `table "nope" is not mapped for crm`},
		{[]string{"--flow", "sideways", "--table", "accounts"}, `no flow "sideways"`},
		{[]string{"--flow", "to-erp", "--table", "accounts", "--where", "no_such_column > 1"}, `no_such_column`},
	} {
		var stdout, stderr bytes.Buffer
		code := cli.MainIO(append([]string{"backfill", "--config", f.cfgPath, "--no-wait"}, c.args...), &stdout, &stderr)
		if code == 0 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("backfill %v: exit %d, stderr %q; want an error naming %q", c.args, code, stderr.String(), c.want)
		}
	}
}
