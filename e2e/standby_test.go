package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

// tickMapping is the example mapping plus an entity that counts source
// transactions: a deferred trigger on every mapped CRM table inserts one
// row per CRM transaction (keyed by its xid), committed with it, and
// carried to the ERP with it (a source transaction is applied atomically).
// The rows are never changed again, so a lost transaction cannot be
// hidden by a later one: CRM ticks = transactions committed, ERP ticks =
// transactions applied.
const tickEntity = `
  - name: tick
    key: tx
    fields:
      - {name: tx, type: integer, owner: crm}
    systems:
      crm:
        table: public.duplex_test_ticks
        key_column: tx
        columns:
          tx: {column: tx}
      erp:
        table: public.duplex_test_ticks
        key_column: tx
        columns:
          tx: {column: tx}
`

// tickCRMSQL installs the counting trigger. Transactions of the sink
// (bound to a replication origin: ERP changes written back) are not
// counted: they do not travel to the ERP.
func tickCRMSQL(tables []string) string {
	var b strings.Builder
	b.WriteString(`CREATE TABLE duplex_test_ticks (tx bigint PRIMARY KEY);
CREATE FUNCTION duplex_test_tick() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NOT pg_replication_origin_session_is_setup() THEN
		INSERT INTO duplex_test_ticks VALUES (txid_current()) ON CONFLICT DO NOTHING;
	END IF;
	RETURN NULL;
END $$;
`)
	for _, t := range tables {
		if strings.Contains(t, "duplex_test_ticks") {
			continue
		}
		fmt.Fprintf(&b, "CREATE CONSTRAINT TRIGGER duplex_test_tick AFTER INSERT OR UPDATE OR DELETE ON %s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION duplex_test_tick();\n", t)
	}
	return b.String()
}

// newStandbyFixture is a fixture whose duplex instances connect to an
// external nats-server process (built from the module) with a lease TTL.
func newStandbyFixture(t *testing.T, ttl time.Duration) (*fixture, *harness.NATSProcess) {
	t.Helper()
	b, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{mapping: string(b) + tickEntity})
	proc := harness.NewNATSProcess(t, harness.NATSProcessOptions{StoreDir: t.TempDir(), LogPath: f.dir + "/nats-server.log"})
	cfg, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(cfg), f.nats.URL(), proc.URL(), 1) + fmt.Sprintf("ha:\n  lease_ttl: %s\n", ttl)
	if err := os.WriteFile(f.cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var crmTables []string
	for _, e := range f.mapping.Entities {
		if tm, ok := e.Tables["crm"]; ok {
			crmTables = append(crmTables, tm.QualifiedTable())
		}
	}
	f.exec("crm", tickCRMSQL(crmTables))
	f.exec("erp", `CREATE TABLE duplex_test_ticks (tx bigint PRIMARY KEY)`)
	return f, proc
}

// statusOf asks a duplex process for its status.
func statusOf(c *child) (*app.Status, bool) {
	resp, err := c.get("/api/status")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var st app.Status
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil, false
	}
	return &st, true
}

func waitRole(t *testing.T, c *child, role string, timeout time.Duration) *app.Status {
	t.Helper()
	var st *app.Status
	waitFor(t, timeout, func() (bool, string) {
		var ok bool
		st, ok = statusOf(c)
		if !ok {
			return false, "no status from " + c.listen
		}
		return st.Role == role, fmt.Sprintf("%s is %s, want %s", st.Instance, st.Role, role)
	})
	return st
}

func natsJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestStandby_DoesNotFetchWhileActiveLives: a second duplex with the same
// configuration stands by: it applies nothing and issues no pull request
// (the flow's consumer never has more than the active one's waiting pull),
// status shows the active instance for each flow on both, and an offline
// replay refuses to run.
func TestStandby_DoesNotFetchWhileActiveLives(t *testing.T) {
	f, proc := newStandbyFixture(t, 4*time.Second)
	active := f.startChild()
	waitRole(t, active, "active", 60*time.Second)
	standby := f.startChild()
	st := waitRole(t, standby, "standby", 60*time.Second)
	ast, _ := statusOf(active)
	for _, fl := range st.Flows {
		if fl.State != "standby" || fl.ActiveInstance != ast.Instance || fl.Applied != 0 {
			t.Errorf("standby's flow %s: state %s, active %q, applied %d; want standby, %q, 0", fl.Name, fl.State, fl.ActiveInstance, fl.Applied, ast.Instance)
		}
	}
	js := natsJS(t, proc.URL())
	l := startLoad(t, f.env("CRM_DSN"), 2, 2000, 0)
	deadline := time.Now().Add(20 * time.Second)
	maxWaiting := 0
	for time.Now().Before(deadline) && l.rows.Load() < 2000 {
		for _, name := range []string{"to-erp", "to-crm"} {
			if c, err := js.Consumer(context.Background(), pipeline.StreamName, name); err == nil {
				maxWaiting = max(maxWaiting, c.CachedInfo().NumWaiting)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.stop()
	f.waitConverged(time.Minute)
	if maxWaiting > 1 {
		t.Errorf("a flow's consumer had %d waiting pull requests, want at most 1 (the active instance's)", maxWaiting)
	}
	st, ok := statusOf(standby)
	if !ok {
		t.Fatal("no status from the standby")
	}
	for _, fl := range st.Flows {
		if fl.State != "standby" || fl.Applied != 0 {
			t.Errorf("after the workload, the standby's flow %s: state %s, applied %d; want standby, 0", fl.Name, fl.State, fl.Applied)
		}
	}
	for _, s := range st.Sources {
		if s.ActiveInstance != ast.Instance {
			t.Errorf("standby's source %s: active instance %q, want %q", s.System, s.ActiveInstance, ast.Instance)
		}
	}
	resp, err := http.Get("http://" + standby.listen + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("standby /readyz = %d, want 200 (a healthy standby is ready)", resp.StatusCode)
	}
	resp, err = http.Get("http://" + standby.listen + "/readyz?role=active")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("standby /readyz?role=active = %d, want 503", resp.StatusCode)
	}
	// A replay that reaches no instance (nothing answers on --listen)
	// refuses to touch a consumer the active instance consumes, naming
	// it; the offline status names it too.
	code, out := f.duplexCLI("replay", "--flow", "to-erp", "--from-seq", "1", "--listen", "127.0.0.1:1")
	if code == 0 || !strings.Contains(out, "refused") || !strings.Contains(out, ast.Instance) {
		t.Errorf("offline replay while an instance runs the flow exited %d, want a refusal naming %s:\n%s", code, ast.Instance, out)
	}
	code, out = f.duplexCLI("status", "--listen", "127.0.0.1:1")
	if code != 0 || !strings.Contains(out, ast.Instance) {
		t.Errorf("offline status exited %d, want the active instance %s named:\n%s", code, ast.Instance, out)
	}
	standby.stop(t)
	active.stop(t)
}

// TestStandby_KillActiveTwice: two duplex processes with one configuration
// and an external nats-server; during 20,000 row changes the active one is
// SIGKILLed twice, the standby takes over each time and the killed one is
// restarted as the new standby. Each instance has a data directory of its
// own, as on two hosts: each signs with its own key, and the other trusts
// it through the source database's duplex.signing_keys. Both systems end
// equal and every committed CRM transaction was applied to the ERP
// (counted by ticks, above), with nothing dead-lettered.
func TestStandby_KillActiveTwice(t *testing.T) {
	const ttl = 5 * time.Second
	f, proc := newStandbyFixture(t, ttl)
	a := f.startInstance()
	waitRole(t, a, "active", 60*time.Second)
	b := f.startInstance()
	waitRole(t, b, "standby", 60*time.Second)
	f.waitSlot(t)
	const total = 20_000
	// Paced (about 350 row changes a second) so that both kills and
	// takeovers happen while it runs.
	l := startLoad(t, f.env("CRM_DSN"), 3, total, 50)
	for i, at := range []int64{total / 3, 2 * total / 3} {
		l.waitRows(t, at, 3*time.Minute)
		if n := l.rows.Load(); n >= total {
			t.Errorf("kill %d: the workload already ended (%d row changes)", i+1, n)
		}
		a.kill(t)
		killed := time.Now()
		t.Logf("kill %d: active duplex SIGKILLed after %d committed row changes", i+1, l.rows.Load())
		waitRole(t, b, "active", ttl+20*time.Second)
		took := time.Since(killed)
		t.Logf("kill %d: the standby took over every flow and capture in %s", i+1, took)
		if took > ttl+10*time.Second {
			t.Errorf("takeover took %s, want within about the lease TTL (%s)", took, ttl)
		}
		a, b = b, f.startInstance()
		waitRole(t, b, "standby", 60*time.Second)
	}
	l.waitRows(t, total, 3*time.Minute)
	l.stop()
	t.Logf("workload: %d transactions, %d row changes", l.txs.Load(), l.rows.Load())
	rep := f.waitConverged(3 * time.Minute)
	t.Logf("converged:\n%s", rep)
	crm, erp := f.conn("crm"), f.conn("erp")
	committed := queryInt(t, crm, `SELECT count(*) FROM duplex_test_ticks`)
	var applied int64
	waitFor(t, time.Minute, func() (bool, string) {
		applied = queryInt(t, erp, `SELECT count(*) FROM duplex_test_ticks`)
		return applied == committed, fmt.Sprintf("%d of %d CRM transactions applied to the ERP", applied, committed)
	})
	t.Logf("CRM transactions: %d committed (the workload counted %d), %d applied", committed, l.txs.Load(), applied)
	if committed < l.txs.Load() {
		t.Errorf("the CRM counted %d transactions, fewer than the %d the workload committed", committed, l.txs.Load())
	}
	js := natsJS(t, proc.URL())
	for _, name := range []string{"to-erp", "to-crm"} {
		c, err := js.Consumer(context.Background(), pipeline.StreamName, name)
		if err != nil {
			t.Fatal(err)
		}
		if ci := c.CachedInfo(); ci.NumPending != 0 || ci.NumAckPending != 0 {
			t.Errorf("consumer %s: %d pending, %d unacknowledged, want none", name, ci.NumPending, ci.NumAckPending)
		}
	}
	s, err := js.Stream(context.Background(), pipeline.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
	b.stop(t)
	a.stop(t)
	for _, c := range []*child{a, b} {
		if code := c.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("duplex exited with %d after SIGTERM, want 0", code)
		}
	}
}
