package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/cli"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// runRoleFile runs examples/order-to-cash/<file> with psql as the
// superuser on database db of cluster c, as the README says to
// (psql -v password=… -f …), and returns the DSN of the role it creates.
func runRoleFile(t *testing.T, c *harness.Cluster, db, file, role, password string) string {
	t.Helper()
	bin, err := harness.PGBinDir()
	if err != nil {
		t.Fatal(err)
	}
	path, err := filepath.Abs(filepath.Join("..", "examples", "order-to-cash", file))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-q", "-v", "password="+password, "-d", c.DSN(db), "-f", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql -f %s: %v\n%s", file, err, out)
	}
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", role, password, c.Port(), db)
}

// countSum is a count and an exact sum (numeric as text).
type countSum struct {
	n   int64
	sum string
}

// sumsByCurrency runs a query of (currency, count, sum::text) rows.
func sumsByCurrency(t *testing.T, c *pgx.Conn, sql string) map[string]countSum {
	t.Helper()
	rows, err := c.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out := map[string]countSum{}
	for rows.Next() {
		var cur string
		var cs countSum
		if err := rows.Scan(&cur, &cs.n, &cs.sum); err != nil {
			t.Fatal(err)
		}
		out[cur] = cs
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRoles_LeastPrivilegeOrderToCash (issue 12, "least privilege that
// works"): the CRM and ERP schemas are made by the superuser (the
// applications' owner), then examples/order-to-cash/crm-role.sql and
// erp-role.sql create duplex_crm and duplex_erp, neither a superuser.
// duplex, connected as those roles only, passes its start-up check, copies
// the CRM's existing rows (initial snapshot), runs both order-to-cash flows
// while the CRM takes orders and the ERP invoices and takes payments, and
// re-reads the CRM's accounts in a backfill after the ERP's copy was
// damaged. Both databases agree afterwards: every mapped field, the counts
// and the money sums per currency, with no dead letter.
func TestRoles_LeastPrivilegeOrderToCash(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	crmApp, erpApp := f.crm.DSN(f.crmDB), f.erp.DSN(f.erpDB) // the applications: the tables' owner
	f.dsn = map[string]string{
		"CRM_DSN": runRoleFile(t, f.crm, f.crmDB, "crm-role.sql", "duplex_crm", "crm-"+f.id),
		"ERP_DSN": runRoleFile(t, f.erp, f.erpDB, "erp-role.sql", "duplex_erp", "erp-"+f.id),
	}
	// The files create the publications duplex_crm and duplex_erp; the
	// fixture names its own after the test.
	cfg, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("publication: duplex_crm_"+f.id, "publication: duplex_crm", "publication: duplex_erp_"+f.id, "publication: duplex_erp").Replace(string(cfg))
	if err := os.WriteFile(f.cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sys := range []string{"crm", "erp"} {
		var user string
		var super bool
		if err := f.conn(sys).QueryRow(ctx, `SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super); err != nil {
			t.Fatal(err)
		}
		if user != "duplex_"+sys || super {
			t.Fatalf("%s: duplex connects as %s (superuser %v), want duplex_%s, not a superuser", sys, user, super, sys)
		}
	}

	// Rows that exist before duplex starts: the initial snapshot copies them.
	seed := startLoadWith(t, crmApp, 2, 400, 0, true)
	seed.waitRows(t, 400, time.Minute)
	seed.stop()

	// duplex check, as the roles.
	t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	var stdout, stderr bytes.Buffer
	if code := cli.MainIO([]string{"check", "--config", f.cfgPath}, &stdout, &stderr); code != 0 {
		t.Fatalf("duplex check as duplex_crm and duplex_erp exited %d:\n%s%s", code, stdout.String(), stderr.String())
	}

	var logs syncBuffer
	f.logTo = &logs
	f.inProcess()
	if strings.Contains(logs.String(), "connected as a superuser") {
		t.Errorf("warned of a superuser, connected as duplex_crm and duplex_erp:\n%s", logs.String())
	}
	l := startLoadWith(t, crmApp, 2, 800, 0, true)
	erp := startERP(t, erpApp, true)
	l.waitRows(t, 800, 2*time.Minute)
	l.stop()
	// Every order in the ERP before it invoices the rest.
	waitFor(t, 2*time.Minute, func() (bool, string) {
		rep := f.compareFrom("crm", "erp")
		return rep.Equal(), rep.String()
	})
	erp.stop()
	settleERP(t, erpApp)
	a, b := f.waitBothConverged(2 * time.Minute)
	t.Logf("crm → erp:\n%s\nerp → crm:\n%s", a, b)

	// The backfill: the ERP's copy of CRM-owned fields damaged behind
	// duplex's back, re-read from the CRM by `duplex backfill` as duplex_crm.
	ec := f.conn("erp")
	owner, err := pgx.Connect(ctx, erpApp)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	if _, err := owner.Exec(ctx, `UPDATE customers SET name = 'stale', country = 'XX'`); err != nil {
		t.Fatal(err)
	}
	if rep := f.compare(); rep.Equal() {
		t.Fatal("the damage did not show in the comparison")
	}
	stdout.Reset()
	stderr.Reset()
	if code := cli.MainIO([]string{"backfill", "--config", f.cfgPath, "--flow", "to-erp", "--table", "accounts", "--chunk", "100"}, &stdout, &stderr); code != 0 {
		t.Fatalf("duplex backfill as duplex_crm exited %d:\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "done:") {
		t.Errorf("backfill output does not report it done:\n%s", stdout.String())
	}
	a, b = f.waitBothConverged(time.Minute)
	t.Logf("after the backfill, crm → erp:\n%s\nerp → crm:\n%s", a, b)

	// Counts and money, compared directly.
	cc := f.conn("crm")
	if n, m := queryInt(t, cc, `SELECT count(*) FROM accounts`), queryInt(t, ec, `SELECT count(*) FROM customers`); n != m || n == 0 {
		t.Errorf("%d CRM accounts, %d ERP customers", n, m)
	}
	if n := queryInt(t, ec, `SELECT count(*) FROM customers WHERE name = 'stale'`); n != 0 {
		t.Errorf("%d ERP customers still damaged after the backfill", n)
	}
	for _, q := range []struct{ what, crm, erp string }{
		{"orders", `SELECT currency, count(*), sum(total)::text FROM orders GROUP BY 1`, `SELECT currency, count(*), sum(total)::text FROM sales_orders GROUP BY 1`},
		{"invoice amounts", `SELECT currency, count(*), sum(amount)::text FROM invoices GROUP BY 1`, `SELECT currency, count(*), sum(amount)::text FROM invoices GROUP BY 1`},
		{"invoices paid", `SELECT currency, count(*), sum(paid_amount)::text FROM invoices GROUP BY 1`, `SELECT currency, count(*), sum(paid_amount)::text FROM invoices GROUP BY 1`},
		{"ledger entries", `SELECT currency, count(*), sum(amount)::text FROM ledger_entries GROUP BY 1`, `SELECT currency, count(*), sum(amount)::text FROM ledger_entries GROUP BY 1`},
	} {
		c, e := sumsByCurrency(t, cc, q.crm), sumsByCurrency(t, ec, q.erp)
		if len(c) != len(e) {
			t.Errorf("%s by currency: CRM %v, ERP %v", q.what, c, e)
		}
		for cur, cs := range c {
			if es := e[cur]; es.n != cs.n || !equalDecimal(es.sum, cs.sum) {
				t.Errorf("%s in %s: CRM %d, %s; ERP %d, %s", q.what, cur, cs.n, cs.sum, es.n, es.sum)
			}
		}
		if len(c) < 2 {
			t.Errorf("%s in %d currencies only: %v", q.what, len(c), c)
		}
	}
	if n := queryInt(t, cc, `SELECT count(*) FROM orders WHERE erp_order_no IS NULL`); n != 0 {
		t.Errorf("%d CRM orders without erp_order_no", n)
	}
	assertNoDeadLetters(t, f)
}

// TestRoles_SuperuserIsWarned: duplex run connected as a superuser (as the
// fixture's other tests are) warns at start, naming each system.
func TestRoles_SuperuserIsWarned(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var logs syncBuffer
	f.logTo = &logs
	stop := f.inProcess()
	stop()
	for _, sys := range []string{"crm", "erp"} {
		found := false
		for _, line := range strings.Split(logs.String(), "\n") {
			found = found || strings.Contains(line, "connected as a superuser") && strings.Contains(line, "system="+sys) && strings.Contains(line, "role=postgres")
		}
		if !found {
			t.Errorf("no warning that %s is connected as superuser postgres in the log:\n%s", sys, logs.String())
		}
	}
}
