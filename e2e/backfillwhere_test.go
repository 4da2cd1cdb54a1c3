package e2e

import (
	"context"
	"strings"
	"testing"
)

// TestBackfill_WhereRefusesStatements: duplex backfill --where refuses
// anything but one boolean expression over the table before anything is
// sent, and runs nothing: the rows are all still there and no backfill
// was recorded. A second statement, comments, a subquery reading another
// table, a function with side effects, a parenthesis that would widen the
// daemon's chunk query, and a chunk beyond the bound are refused; a plain
// condition is accepted.
func TestBackfill_WhereRefusesStatements(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.exec("crm", `INSERT INTO accounts (id, name, currency) SELECT gen_random_uuid(), 'a' || g, 'EUR' FROM generate_series(1, 20) g`)
	crm := f.conn("crm")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--where", "true; DELETE FROM accounts"}, "another statement"},
		{[]string{"--where", "true; DELETE FROM accounts; --"}, "another statement"},
		{[]string{"--where", "name = 'x' -- ' OR true"}, "comments"},
		{[]string{"--where", "(SELECT count(*) FROM pg_authid) > 0"}, "subqueries"},
		{[]string{"--where", "pg_terminate_backend(pg_backend_pid()) IS NULL"}, "function pg_terminate_backend is not allowed"},
		{[]string{"--where", "true) OR (true"}, "unexpected"},
		{[]string{"--where", "name = $$x$$"}, "'$'"},
		{[]string{"--where", "country = 'DE'", "--chunk", "1000000"}, "--chunk 1000000"},
		{[]string{"--where", "country = 'DE'", "--chunk", "0"}, "--chunk 0"},
	} {
		code, out := f.duplexCLI(append([]string{"backfill", "--flow", "to-erp", "--table", "accounts", "--no-wait"}, c.args...)...)
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("backfill %q: exit %d, want a refusal naming %q:\n%s", c.args, code, c.want, out)
		}
	}
	var n int
	if err := crm.QueryRow(context.Background(), `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 20 {
		t.Fatalf("accounts after the refused backfills: %d (%v), want all 20", n, err)
	}
	var exists bool
	if err := crm.QueryRow(context.Background(), `SELECT to_regclass('duplex.backfills') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		if err := crm.QueryRow(context.Background(), `SELECT count(*) FROM duplex.backfills`).Scan(&n); err != nil || n != 0 {
			t.Errorf("%d refused backfills recorded in duplex.backfills (%v)", n, err)
		}
	}
	// A plain condition is accepted and recorded in its canonical form.
	code, out := f.duplexCLI("backfill", "--flow", "to-erp", "--table", "accounts", "--no-wait", "--where", "country = 'DE' AND updated_at > now() - interval '30 days'")
	if code != 0 {
		t.Fatalf("backfill with a plain condition exited %d:\n%s", code, out)
	}
	var filter string
	if err := crm.QueryRow(context.Background(), `SELECT filter FROM duplex.backfills ORDER BY id DESC LIMIT 1`).Scan(&filter); err != nil {
		t.Fatal(err)
	}
	if want := `(("country" = E'DE') AND ("updated_at" > (pg_catalog.now() - (E'30 days')::interval)))`; filter != want {
		t.Errorf("recorded condition %s, want %s", filter, want)
	}
}
