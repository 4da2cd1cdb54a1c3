package e2e

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/cli"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/internal/reconcile"
	"github.com/duplex-cdc/duplex/transform"
)

// childEnv makes the test binary act as the duplex command.
const childEnv = "DUPLEX_E2E_CHILD"

var (
	sharedCRM, sharedERP *harness.Cluster
	fixtureSeq           atomic.Int64
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:]))
	}
	ctx := context.Background()
	var err error
	if sharedCRM, err = harness.StartCluster(ctx, harness.ClusterOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start CRM cluster:", err)
		os.Exit(1)
	}
	if sharedERP, err = harness.StartCluster(ctx, harness.ClusterOptions{}); err != nil {
		sharedCRM.Close()
		fmt.Fprintln(os.Stderr, "e2e: start ERP cluster:", err)
		os.Exit(1)
	}
	// Goroutines are checked in this process only: a child exits with
	// the command's code.
	goleak.VerifyTestMain(runThen{m, func() {
		sharedCRM.Close()
		sharedERP.Close()
	}})
}

// runThen runs the tests, then closes the shared clusters before goleak
// looks for goroutines that outlived them.
type runThen struct {
	m     *testing.M
	after func()
}

func (r runThen) Run() int {
	defer r.after()
	return r.m.Run()
}

// fixture is one test's CRM and ERP databases, NATS server and config.
type fixture struct {
	t        *testing.T
	id       string
	crm, erp *harness.Cluster
	crmDB    string
	erpDB    string
	nats     *harness.NATS
	app      *app.App
	cfgPath  string
	mapping  *transform.Mapping
	dir      string
	// tweak, when set, changes the configuration of in-process runs;
	// logTo receives their log too.
	tweak func(*config.Config)
	logTo io.Writer
	// dsn, when set, replaces env's CRM_DSN or ERP_DSN (another role).
	dsn map[string]string
}

type fixtureOptions struct {
	// own starts clusters for this test alone (for tests that restart them).
	own bool
	// mapping replaces the example mapping.
	mapping string
	// tls starts own clusters with ssl on and this certificate.
	tls *harness.ServerTLS
	// settings are postgresql.conf settings of both own clusters.
	settings map[string]string
}

func newFixture(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	ctx := context.Background()
	n := fixtureSeq.Add(1)
	f := &fixture{t: t, id: fmt.Sprintf("t%d", n), crm: sharedCRM, erp: sharedERP, dir: t.TempDir()}
	if o.own || o.tls != nil {
		f.crm = harness.NewCluster(t, harness.ClusterOptions{TLS: o.tls, Settings: o.settings})
		f.erp = harness.NewCluster(t, harness.ClusterOptions{TLS: o.tls, Settings: o.settings})
	}
	f.crmDB, f.erpDB = "crm_"+f.id, "erp_"+f.id
	for _, s := range []struct {
		c      *harness.Cluster
		db, fn string
	}{{f.crm, f.crmDB, "crm.sql"}, {f.erp, f.erpDB, "erp.sql"}} {
		sql, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/"+s.fn)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.c.CreateDatabase(ctx, s.db); err != nil {
			t.Fatal(err)
		}
		if err := s.c.Exec(ctx, s.db, string(sql)); err != nil {
			t.Fatal(err)
		}
	}
	f.nats = harness.NewNATS(t)
	mapping := o.mapping
	if mapping == "" {
		b, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
		if err != nil {
			t.Fatal(err)
		}
		mapping = string(b)
	}
	mpath := filepath.Join(f.dir, "mapping.yaml")
	if err := os.WriteFile(mpath, []byte(mapping), 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.mapping, err = transform.Parse([]byte(mapping)); err != nil {
		t.Fatalf("mapping: %v", err)
	}
	cfg := fmt.Sprintf(`mapping: %s
nats:
  url: %s
stream:
  duplicates: 2m
systems:
  crm:
    dsn: ${CRM_DSN}
    slot: duplex_crm_%[3]s
    publication: duplex_crm_%[3]s
  erp:
    dsn: ${ERP_DSN}
    slot: duplex_erp_%[3]s
    publication: duplex_erp_%[3]s
flows:
  - name: to-erp
    from: crm
    to: erp
    origin: duplex_to_erp_%[3]s
    batch: 256
    max_wait_attempts: 4
  - name: to-crm
    from: erp
    to: crm
    origin: duplex_to_crm_%[3]s
    batch: 256
    max_wait_attempts: 4
`, mpath, f.nats.URL(), f.id)
	// The example marks personal fields pii: true: a key of the test's own.
	keys := filepath.Join(f.dir, "pii.keys")
	if err := os.WriteFile(keys, []byte(piiKey("k1", byte(n))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg += fmt.Sprintf("pii:\n  keys_file: %s\n", keys)
	f.cfgPath = filepath.Join(f.dir, "duplex.yaml")
	if err := os.WriteFile(f.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.dropSlots() })
	t.Cleanup(func() {
		if t.Failed() {
			f.diagnose()
		}
	})
	return f
}

// diagnose logs what the databases and JetStream are doing, for a failed
// test.
func (f *fixture) diagnose() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []struct {
		name string
		c    *harness.Cluster
	}{{"crm", f.crm}, {"erp", f.erp}} {
		conn, err := pgx.Connect(ctx, s.c.DSN("postgres"))
		if err != nil {
			f.t.Logf("diagnose %s: %v", s.name, err)
			continue
		}
		rows, err := conn.Query(ctx, `SELECT coalesce(datname, '-') || ' ' || coalesce(application_name, '') || ' ' || coalesce(state, '') || ' wait=' || coalesce(wait_event_type || '/' || wait_event, '') || ' ' || left(coalesce(query, ''), 120) FROM pg_stat_activity WHERE backend_type IN ('client backend', 'walsender')`)
		if err == nil {
			lines, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			f.t.Logf("%s activity:\n%s", s.name, strings.Join(lines, "\n"))
		}
		rows, err = conn.Query(ctx, `SELECT slot_name || ' active=' || active || ' confirmed=' || coalesce(confirmed_flush_lsn::text, '') || ' wal=' || pg_current_wal_lsn() FROM pg_replication_slots`)
		if err == nil {
			lines, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			f.t.Logf("%s slots:\n%s", s.name, strings.Join(lines, "\n"))
		}
		conn.Close(ctx)
	}
	nc, err := nats.Connect(f.nats.URL())
	if err != nil {
		f.t.Logf("diagnose nats: %v", err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, name := range []string{"to-erp", "to-crm"} {
		c, err := js.Consumer(ctx, "DUPLEX", name)
		if err != nil {
			f.t.Logf("consumer %s: %v", name, err)
			continue
		}
		ci := c.CachedInfo()
		f.t.Logf("consumer %s: delivered %d ack floor %d pending %d ack pending %d waiting %d", name, ci.Delivered.Stream, ci.AckFloor.Stream, ci.NumPending, ci.NumAckPending, ci.NumWaiting)
	}
}

func (f *fixture) env(k string) string {
	if v, ok := f.dsn[k]; ok {
		return v
	}
	switch k {
	case "CRM_DSN":
		return f.crm.DSN(f.crmDB)
	case "ERP_DSN":
		return f.erp.DSN(f.erpDB)
	}
	return ""
}

// dropSlots frees the test's slot on the shared cluster.
func (f *fixture) dropSlots() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.crm.DSN("postgres"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '%_'||$1 AND NOT active`, f.id)
	_, _ = conn.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE '%_'||$1`, f.id)
	if f.erp != f.crm {
		if c2, err := pgx.Connect(ctx, f.erp.DSN("postgres")); err == nil {
			_, _ = c2.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '%_'||$1 AND NOT active`, f.id)
			_, _ = c2.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE '%_'||$1`, f.id)
			c2.Close(ctx)
		}
	}
}

func (f *fixture) config() *config.Config {
	f.t.Helper()
	cfg, err := config.Load(f.cfgPath, f.env)
	if err != nil {
		f.t.Fatal(err)
	}
	if f.tweak != nil {
		f.tweak(cfg)
	}
	return cfg
}

func (f *fixture) conn(system string) *pgx.Conn {
	f.t.Helper()
	dsn := f.env(strings.ToUpper(system) + "_DSN")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		f.t.Fatalf("connect %s: %v", system, err)
	}
	f.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// exec runs SQL on a system and fails the test on error.
func (f *fixture) exec(system, sql string, args ...any) {
	f.t.Helper()
	c := f.conn(system)
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %s: %v", system, sql, err)
	}
}

// inProcess runs duplex inside the test process until the test ends or
// the returned stop is called.
func (f *fixture) inProcess() (stop func()) { return f.inProcessLevel(slog.LevelWarn) }

func (f *fixture) inProcessLevel(level slog.Level) (stop func()) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var w io.Writer = &testWriter{t: f.t}
	if f.logTo != nil {
		w = io.MultiWriter(w, f.logTo)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	a, err := app.Start(ctx, app.Options{Config: f.config(), DataDir: f.dir, Logger: log})
	if err != nil {
		cancel()
		f.t.Fatalf("start duplex: %v", err)
	}
	f.app = a
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			f.t.Logf("duplex run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			a.Close()
		})
	}
	f.t.Cleanup(stop)
	return stop
}

// child is a duplex process.
type child struct {
	cmd     *exec.Cmd
	log     string
	listen  string // address of its status listener
	dataDir string // its --data-dir, where it keeps the listener's token
}

// token is the bearer token the child generated into its data directory
// ("" until it wrote it).
func (c *child) token() string {
	tok, err := ops.ResolveToken(config.HTTP{}, c.dataDir, false)
	if err != nil {
		return ""
	}
	return tok.Value
}

// get sends GET path to the child's listener with its bearer token.
func (c *child) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+c.listen+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token())
	return (&http.Client{Timeout: 5 * time.Second}).Do(req)
}

// startChild runs `duplex run` as a separate process (the test binary),
// with the fixture's directory as its data directory.
func (f *fixture) startChild() *child {
	f.t.Helper()
	return f.startChildIn(f.dir)
}

// startInstance runs `duplex run` as startChild does, with a data
// directory of its own, as an instance on another host would have: its
// own listener token, signing keys (trusted by the other instances
// through the source database's duplex.signing_keys) and field-hash key.
func (f *fixture) startInstance() *child {
	f.t.Helper()
	dataDir, err := os.MkdirTemp(f.dir, "instance-")
	if err != nil {
		f.t.Fatal(err)
	}
	return f.startChildIn(dataDir)
}

func (f *fixture) startChildIn(dataDir string) *child {
	f.t.Helper()
	logPath := filepath.Join(f.dir, fmt.Sprintf("duplex-%d.log", time.Now().UnixNano()))
	lf, err := os.Create(logPath)
	if err != nil {
		f.t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		f.t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(os.Args[0], "run", "--config", f.cfgPath, "--data-dir", dataDir, "--log-level", "info", "--listen", listen)
	cmd.Env = append(os.Environ(), childEnv+"=1", "CRM_DSN="+f.env("CRM_DSN"), "ERP_DSN="+f.env("ERP_DSN"))
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	c := &child{cmd: cmd, log: logPath, listen: listen, dataDir: dataDir}
	f.t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
		lf.Close()
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "WARNING: DATA RACE") {
			f.t.Errorf("the race detector found a data race in the duplex process (log %s):\n%s", logPath, raceReport(string(b)))
		}
		if f.t.Failed() {
			b, _ := os.ReadFile(logPath)
			if dir := os.Getenv("DUPLEX_E2E_KEEP_LOGS"); dir != "" {
				keep := filepath.Join(dir, f.t.Name()+"-"+filepath.Base(logPath))
				if err := os.WriteFile(keep, b, 0o644); err == nil {
					f.t.Logf("duplex log kept as %s", keep)
				}
			}
			f.t.Logf("duplex log %s:\n%s", logPath, tail(string(b), 60))
			var notable []string
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "conflict") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
					notable = append(notable, line)
				}
			}
			f.t.Logf("notable lines of %s:\n%s", logPath, tail(strings.Join(notable, "\n"), 200))
		}
	})
	return c
}

func (c *child) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
}

func (c *child) stop(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("duplex did not stop within 30s of SIGTERM")
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// raceReport is the first data race report of a log.
func raceReport(log string) string {
	i := strings.Index(log, "WARNING: DATA RACE")
	if i < 0 {
		return ""
	}
	s := log[i:]
	if j := strings.Index(s, "\n==================\n"); j >= 0 {
		s = s[:j]
	}
	return s
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// compare reconciles the CRM with the ERP.
func (f *fixture) compare() *reconcile.Report {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := pgx.Connect(ctx, f.env("CRM_DSN"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := pgx.Connect(ctx, f.env("ERP_DSN"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer b.Close(ctx)
	rep, err := reconcile.Compare(ctx, f.mapping, reconcile.Side{System: "crm", Conn: a}, reconcile.Side{System: "erp", Conn: b})
	if err != nil {
		f.t.Fatalf("compare: %v", err)
	}
	return rep
}

// compareFrom reconciles the fields a flow from one system carries.
func (f *fixture) compareFrom(from, to string) *reconcile.Report {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := pgx.Connect(ctx, f.env(strings.ToUpper(from)+"_DSN"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := pgx.Connect(ctx, f.env(strings.ToUpper(to)+"_DSN"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer b.Close(ctx)
	rep, err := reconcile.Compare(ctx, f.mapping, reconcile.Side{System: from, Conn: a}, reconcile.Side{System: to, Conn: b})
	if err != nil {
		f.t.Fatalf("compare: %v", err)
	}
	return rep
}

// waitBothConverged waits until both directions agree: every field the
// CRM owns (and the shared ones) is the same in the ERP, and every field
// the ERP owns is the same in the CRM.
func (f *fixture) waitBothConverged(timeout time.Duration) (crmToERP, erpToCRM *reconcile.Report) {
	f.t.Helper()
	waitFor(f.t, timeout, func() (bool, string) {
		crmToERP = f.compareFrom("crm", "erp")
		erpToCRM = f.compareFrom("erp", "crm")
		return crmToERP.Equal() && erpToCRM.Equal(), "crm → erp:\n" + crmToERP.String() + "erp → crm:\n" + erpToCRM.String()
	})
	return crmToERP, erpToCRM
}

// waitConverged waits until the ERP equals the CRM.
func (f *fixture) waitConverged(timeout time.Duration) *reconcile.Report {
	f.t.Helper()
	var rep *reconcile.Report
	waitFor(f.t, timeout, func() (bool, string) {
		rep = f.compare()
		return rep.Equal(), rep.String()
	})
	return rep
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s; last state:\n%s", timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// js connects to the fixture's NATS.
func (f *fixture) js() jetstream.JetStream {
	f.t.Helper()
	nc, err := nats.Connect(f.nats.URL(), nats.MaxReconnects(-1))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	return js
}

// queryInt runs a query returning one integer.
func queryInt(t *testing.T, c *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
