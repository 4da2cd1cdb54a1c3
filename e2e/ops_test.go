package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/internal/cli"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// scrape reads a child's /metrics into name{labels} -> value.
func scrape(t *testing.T, listen string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + listen + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func readyz(t *testing.T, listen string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + listen + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// duplexCLI runs a duplex command in this process with the fixture's
// configuration and returns its exit code and output.
func (f *fixture) duplexCLI(args ...string) (int, string) {
	f.t.Helper()
	f.t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	f.t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	var stdout, stderr bytes.Buffer
	// The tools find a child's listener token in the data directory.
	f.t.Setenv("DUPLEX_DATA_DIR", f.dir)
	code := cli.MainIO(append(args, "--config", f.cfgPath), &stdout, &stderr)
	return code, stdout.String() + stderr.String()
}

// TestOps_LagMetricsAndReadinessThroughAnERPOutage: during a steady
// workload the metrics report a plausible, non-zero latency; while the ERP
// is stopped the to-erp flow's pending messages and seconds behind grow and
// /readyz says why duplex is not ready; after the ERP returns both fall
// back to about zero and /readyz is ready again.
func TestOps_LagMetricsAndReadinessThroughAnERPOutage(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	c := f.startChild()
	defer c.stop(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	l := startLoadWith(t, f.env("CRM_DSN"), 2, 0, 40, true)
	l.waitRows(t, 500, 60*time.Second)
	m := scrape(t, c.listen)
	count, sum := m[`duplex_flow_latency_seconds_count{flow="to-erp"}`], m[`duplex_flow_latency_seconds_sum{flow="to-erp"}`]
	if count == 0 || sum <= 0 || sum/count > 5 {
		t.Errorf("latency of to-erp: %v transactions, mean %.3fs; want some, under 5s", count, sum/max(count, 1))
	}
	for _, name := range []string{`duplex_flow_seconds_behind{flow="to-erp"}`, `duplex_flow_pending_messages{flow="to-crm"}`,
		`duplex_source_wal_behind_bytes{source="crm"}`, `duplex_source_wal_retained_bytes{source="erp"}`, `duplex_nats_connected`} {
		if _, ok := m[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
	if m[`duplex_source_events_total{entity="customer",op="upsert",source="crm"}`] == 0 {
		t.Errorf("no captured customer upserts counted")
	}

	ctx := context.Background()
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var pendingDown float64
	waitFor(t, 60*time.Second, func() (bool, string) {
		m := scrape(t, c.listen)
		pendingDown = m[`duplex_flow_pending_messages{flow="to-erp"}`]
		behind := m[`duplex_flow_seconds_behind{flow="to-erp"}`]
		return pendingDown > 20 && behind > 3, fmt.Sprintf("to-erp pending %v, %vs behind", pendingDown, behind)
	})
	code, body := readyz(t, c.listen)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "erp") {
		t.Errorf("readyz with the ERP down: %d %s", code, body)
	}
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, func() (bool, string) {
		m := scrape(t, c.listen)
		p, b := m[`duplex_flow_pending_messages{flow="to-erp"}`], m[`duplex_flow_seconds_behind{flow="to-erp"}`]
		return p < 20 && b < 3, fmt.Sprintf("to-erp pending %v, %vs behind after the ERP returned", p, b)
	})
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	l.stop()
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs:\n%s", rep)
	}
	// duplex status reads the running instance.
	code, out := f.duplexCLI("status", "--listen", c.listen)
	if code != 0 || !strings.Contains(out, "duplex is running") || !strings.Contains(out, "to-erp") || !strings.Contains(out, "to-crm") {
		t.Errorf("duplex status exited %d:\n%s", code, out)
	}
}

// TestOps_RestoreERPFromDumpThenReplay: the ERP is dumped during a
// workload, the workload goes on, then the ERP database is dropped and
// restored from the dump. duplex verify exits non-zero; duplex replay
// --since a time before the dump (performed by the running duplex) brings
// the ERP back equal to the CRM, and duplex verify exits 0.
func TestOps_RestoreERPFromDumpThenReplay(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	ctx := context.Background()
	c := f.startChild()
	l := startLoadWith(t, f.env("CRM_DSN"), 2, 0, 60, true)
	l.waitRows(t, 800, 60*time.Second)
	bin, err := harness.PGBinDir()
	if err != nil {
		t.Fatal(err)
	}
	beforeDump := time.Now().Add(-time.Second)
	dump := filepath.Join(f.dir, "erp.dump")
	if out, err := exec.Command(filepath.Join(bin, "pg_dump"), "--format=custom", "--file", dump, f.env("ERP_DSN")).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	l.waitRows(t, l.rows.Load()+800, 60*time.Second)
	l.stop()
	f.waitBothConverged(60 * time.Second)
	c.stop(t)

	// The ERP is lost and restored from last night's dump.
	admin := f.erp.DSN("postgres")
	for _, sql := range []string{
		fmt.Sprintf(`SELECT pg_drop_replication_slot('duplex_erp_%s')`, f.id),
		fmt.Sprintf(`DROP DATABASE %s WITH (FORCE)`, f.erpDB),
		fmt.Sprintf(`CREATE DATABASE %s`, f.erpDB),
	} {
		if err := f.erp.Exec(ctx, "postgres", sql); err != nil {
			t.Fatalf("%s: %v (%s)", sql, err, admin)
		}
	}
	if out, err := exec.Command(filepath.Join(bin, "pg_restore"), "--dbname", f.env("ERP_DSN"), dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	code, out := f.duplexCLI("verify", "--flow", "to-erp")
	if code != 1 || !strings.Contains(out, "DIFFER") {
		t.Fatalf("verify after the restore exited %d, want 1:\n%s", code, out)
	}

	c2 := f.startChild()
	defer c2.stop(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c2.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	code, out = f.duplexCLI("replay", "--flow", "to-erp", "--since", beforeDump.UTC().Format(time.RFC3339Nano), "--listen", c2.listen)
	if code != 0 || !strings.Contains(out, "replay of to-erp done") {
		t.Fatalf("replay exited %d:\n%s", code, out)
	}
	t.Logf("replay: %s", out)
	f.waitBothConverged(60 * time.Second)
	code, out = f.duplexCLI("verify")
	if code != 0 {
		t.Errorf("verify after the replay exited %d:\n%s", code, out)
	}
}

// TestOps_DeadLetterRetry: two events the ERP refuses (a CHECK the ERP
// later drops) land in the dead letters; duplex dlq list shows them with
// the error. After the fix, duplex dlq retry applies the first; the
// second, whose key a newer event already wrote, does not overwrite it.
func TestOps_DeadLetterRetry(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.exec("erp", `ALTER TABLE customers ADD CONSTRAINT no_poison CHECK (name NOT LIKE 'POISON%')`)
	f.inProcess()
	one, two := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, country, currency) VALUES ($1, 'POISON one', 'DE', 'EUR')`, one)
	f.exec("crm", `INSERT INTO accounts (id, name, email, country, currency) VALUES ($1, 'POISON two', 'two@example.com', 'DE', 'EUR')`, two)
	readDeadLetters(t, f.js(), 2)
	f.exec("crm", `UPDATE accounts SET name = 'two, renamed' WHERE id = $1`, two)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, two) == 1, "the newer event of two did not arrive"
	})

	code, out := f.duplexCLI("dlq", "list")
	if code != 0 || !strings.Contains(out, one.String()) || !strings.Contains(out, two.String()) || !strings.Contains(out, "no_poison") {
		t.Fatalf("dlq list exited %d:\n%s", code, out)
	}
	var seqs []string
	for _, line := range strings.Split(out, "\n") {
		if fields := strings.Fields(line); len(fields) > 0 && (strings.Contains(line, one.String()) || strings.Contains(line, two.String())) {
			seqs = append(seqs, fields[0])
		}
	}
	code, out = f.duplexCLI("dlq", "show", seqs[0])
	if code != 0 || !strings.Contains(out, `"event"`) || !strings.Contains(out, "POISON") {
		t.Errorf("dlq show exited %d:\n%s", code, out)
	}
	// Still refused: the retry says so and keeps the dead letter.
	code, out = f.duplexCLI("dlq", "retry", seqs[0])
	if code == 0 || !strings.Contains(out, "still fails") {
		t.Errorf("retry before the fix exited %d:\n%s", code, out)
	}
	f.exec("erp", `ALTER TABLE customers DROP CONSTRAINT no_poison`)
	code, out = f.duplexCLI(append([]string{"dlq", "retry"}, seqs...)...)
	if code != 0 {
		t.Fatalf("retry after the fix exited %d:\n%s", code, out)
	}
	t.Logf("retry: %s", out)
	var name string
	if err := erp.QueryRow(context.Background(), `SELECT name FROM customers WHERE crm_account_id = $1`, one).Scan(&name); err != nil || name != "POISON one" {
		t.Errorf("retried account one: %q, %v", name, err)
	}
	var email *string
	if err := erp.QueryRow(context.Background(), `SELECT name, email FROM customers WHERE crm_account_id = $1`, two).Scan(&name, &email); err != nil || name != "two, renamed" {
		t.Errorf("account two after the retry of its older event: %q (%v), want the newer name kept", name, err)
	}
	// The newer event did not carry the (unchanged, shared) email: the
	// retried one brings it.
	if email == nil || *email != "two@example.com" {
		t.Errorf("account two's email after the retry: %v, want two@example.com", email)
	}
	code, out = f.duplexCLI("dlq", "list")
	if code != 0 || !strings.Contains(out, "no dead letters") {
		t.Errorf("dead letters left after the retries:\n%s", out)
	}
	if rep := f.waitConverged(30 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs:\n%s", rep)
	}
}

// TestOps_VerifyFindsOneCent: duplex verify agrees on equal systems and
// exits 1 naming the entity, key, field and day total when a single cent
// differs.
func TestOps_VerifyFindsOneCent(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stop := f.inProcess()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) SELECT gen_random_uuid(), 'a' || g, 'EUR' FROM generate_series(1, 50) g`)
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at)
		SELECT gen_random_uuid(), id, 'EUR', 100.00, 'open', '2026-11-20 10:00:00+00' FROM accounts`)
	f.waitBothConverged(30 * time.Second)
	stop()
	code, out := f.duplexCLI("verify")
	if code != 0 || !strings.Contains(out, "both systems agree") {
		t.Fatalf("verify of equal systems exited %d:\n%s", code, out)
	}
	// With no duplex running, status reads PostgreSQL and JetStream, and a
	// replay of the whole stream runs here and skips everything the ERP
	// already holds.
	code, out = f.duplexCLI("status", "--listen", "127.0.0.1:1")
	if code != 0 || !strings.Contains(out, "no running duplex answered") || !strings.Contains(out, "to-erp (crm→erp)") || !strings.Contains(out, "not running") {
		t.Errorf("offline status exited %d:\n%s", code, out)
	}
	code, out = f.duplexCLI("replay", "--flow", "to-erp", "--from-seq", "1", "--listen", "127.0.0.1:1")
	if code != 0 || !strings.Contains(out, "100 events re-read, 0 applied, 100 skipped") {
		t.Errorf("offline replay exited %d:\n%s", code, out)
	}
	var key string
	if err := f.conn("erp").QueryRow(context.Background(), `UPDATE sales_orders SET total = total + 0.01
		WHERE order_no = (SELECT min(order_no) FROM sales_orders) RETURNING crm_order_id::text`).Scan(&key); err != nil {
		t.Fatal(err)
	}
	code, out = f.duplexCLI("verify", "--flow", "to-erp")
	for _, want := range []string{"DIFFER", key, "total", "2026-11-20", "5000.00 ≠ 5000.01"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q", want)
		}
	}
	if code != 1 || t.Failed() {
		t.Errorf("verify exited %d, want 1:\n%s", code, out)
	}
	code, out = f.duplexCLI("verify", "--flow", "to-erp", "--json")
	var res []map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || len(res) != 1 || res[0]["equal"] != false {
		t.Errorf("verify --json exited %d: %v\n%s", code, err, out)
	}
}

// TestOps_StatusPageInChromium: the status page at / of the listener shows
// both flows with their lag in a real headless browser, and updates live;
// the screenshot is kept next to the test log. The browser signs in as a
// person does: /?token=<token> sets the cookie and redirects to /.
func TestOps_StatusPageInChromium(t *testing.T) {
	browser := ""
	for _, b := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(b); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Fatal("no headless browser: install Debian's chromium (apt-get install chromium; .ci/run does)")
	}
	f := newFixture(t, fixtureOptions{})
	c := f.startChild()
	defer c.stop(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'page', 'EUR')`)
	// Each run gets a profile of its own, and a browser that dies by a
	// signal (Debian's chromium 148 segfaulted once in CI taking the
	// screenshot, after the same page had rendered) is started again, at
	// most three times, each crash logged: the test is about the page, not
	// about the browser's stability. An exit with a status is not retried.
	runs := 0
	run := func(args ...string) string {
		for attempt := 1; ; attempt++ {
			runs++
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
				"--user-data-dir=" + filepath.Join(f.dir, fmt.Sprintf("chromium-%d", runs)), "--virtual-time-budget=4000", "--window-size=1280,900"}
			cmd := exec.CommandContext(ctx, browser, append(append(base, args...), "http://"+c.listen+"/?token="+url.QueryEscape(c.token()))...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			cancel()
			if err == nil {
				return stdout.String()
			}
			var exit *exec.ExitError
			crashed := errors.As(err, &exit) && !exit.Exited() && ctx.Err() == nil
			if !crashed || attempt == 3 {
				t.Fatalf("chromium %v (attempt %d): %v\n%s", args, attempt, err, tail(stderr.String(), 20))
			}
			t.Logf("chromium %v crashed (attempt %d): %v; starting it again\n%s", args, attempt, err, tail(stderr.String(), 5))
		}
	}
	dom := run("--dump-dom")
	for _, want := range []string{`data-lag="to-erp"`, `data-lag="to-crm"`, "to-erp (crm → erp)", "to-crm (erp → crm)", "behind", "running"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if strings.Contains(dom, `<div class="none">loading…</div>`) || strings.Contains(dom, `id="problem" style="display: block;"`) {
		t.Errorf("the page did not load the status:\n%s", tail(dom, 40))
	}
	shot := filepath.Join(os.TempDir(), "duplex-status-page.png")
	if dir := os.Getenv("DUPLEX_SCREENSHOT_DIR"); dir != "" {
		shot = filepath.Join(dir, "status-page.png")
	}
	run("--screenshot=" + shot)
	if st, err := os.Stat(shot); err != nil || st.Size() < 10_000 {
		t.Errorf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot of the status page: %s", shot)
}
