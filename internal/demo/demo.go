// Package demo runs `duplex demo`: two throwaway PostgreSQL clusters with
// the order-to-cash schemas, embedded JetStream, live CRM traffic with
// progress and lag, and a final field-by-field check that both sides agree.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/internal/reconcile"
	"github.com/duplex-cdc/duplex/internal/workload"
	"github.com/duplex-cdc/duplex/transform"
)

// Options configures the demo.
type Options struct {
	Duration time.Duration
	Rate     int // CRM transactions per second
	Out      io.Writer
	Logger   *slog.Logger
}

// Env is a ready order-to-cash environment: CRM and ERP clusters with the
// example schemas and a configuration wired to them.
type Env struct {
	CRM, ERP *harness.Cluster
	Config   *config.Config
	Mapping  *transform.Mapping
	Dir      string
	// ConfigPath is the example configuration in Dir (duplex.yaml: the
	// embedded server); URLConfigPath the same with nats.url read from
	// $NATS_URL instead (duplex-url.yaml), for duplex processes sharing
	// one NATS server without authentication.
	ConfigPath, URLConfigPath string
}

// Close stops the clusters and removes the files.
func (e *Env) Close() {
	if e.CRM != nil {
		e.CRM.Close()
	}
	if e.ERP != nil {
		e.ERP.Close()
	}
	os.RemoveAll(e.Dir)
}

// NewEnv starts two clusters, loads the example schemas and writes the
// mapping and a configuration (embedded NATS on a free port).
func NewEnv(ctx context.Context, log *slog.Logger) (*Env, error) {
	dir, err := os.MkdirTemp("", "duplex-demo-")
	if err != nil {
		return nil, fmt.Errorf("demo dir: %w", err)
	}
	env := &Env{Dir: dir}
	var wg sync.WaitGroup
	var errCRM, errERP error
	wg.Add(2)
	go func() {
		defer wg.Done()
		env.CRM, errCRM = harness.StartCluster(ctx, harness.ClusterOptions{Logger: log})
	}()
	go func() {
		defer wg.Done()
		env.ERP, errERP = harness.StartCluster(ctx, harness.ClusterOptions{Logger: log})
	}()
	wg.Wait()
	if errCRM != nil || errERP != nil {
		env.Close()
		return nil, fmt.Errorf("start clusters: %w", errors.Join(errCRM, errERP))
	}
	for _, s := range []struct {
		c      *harness.Cluster
		db, fn string
	}{{env.CRM, "crm", "crm.sql"}, {env.ERP, "erp", "erp.sql"}} {
		sql, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/"+s.fn)
		if err != nil {
			env.Close()
			return nil, err
		}
		if err := s.c.CreateDatabase(ctx, s.db); err != nil {
			env.Close()
			return nil, err
		}
		if err := s.c.Exec(ctx, s.db, string(sql)); err != nil {
			env.Close()
			return nil, fmt.Errorf("load %s: %w", s.fn, err)
		}
	}
	mb, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		env.Close()
		return nil, err
	}
	mpath := filepath.Join(dir, "mapping.yaml")
	if err := os.WriteFile(mpath, mb, 0o644); err != nil {
		env.Close()
		return nil, err
	}
	cb, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/duplex.yaml")
	if err != nil {
		env.Close()
		return nil, err
	}
	port, err := harness.FreePort()
	if err != nil {
		env.Close()
		return nil, err
	}
	// The example marks personal fields pii: true: the demo makes a key
	// of its own in a key file beside its configuration.
	if cb, err = withPIIKeys(cb, dir); err != nil {
		env.Close()
		return nil, fmt.Errorf("demo config: %w", err)
	}
	cpath := filepath.Join(dir, "duplex.yaml")
	if err := os.WriteFile(cpath, cb, 0o644); err != nil {
		env.Close()
		return nil, err
	}
	ub, err := withNATSURL(cb)
	if err == nil {
		// Processes sharing that NATS (active and standby, each with a
		// data directory of its own) share the sources' signing keys.
		ub, err = withSigningKeys(ub, filepath.Join(dir, "signing"), []string{"crm", "erp"})
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "duplex-url.yaml"), ub, 0o644)
	}
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("demo config: %w", err)
	}
	env.ConfigPath, env.URLConfigPath = cpath, filepath.Join(dir, "duplex-url.yaml")
	vars := map[string]string{"CRM_DSN": env.CRM.DSN("crm"), "ERP_DSN": env.ERP.DSN("erp")}
	cfg, err := config.Load(cpath, func(k string) string { return vars[k] })
	if err != nil {
		env.Close()
		return nil, err
	}
	cfg.NATS.Embedded.Port = port
	cfg.DataDir = filepath.Join(dir, "data")
	env.Config = cfg
	env.Mapping, err = transform.Load(mpath)
	if err != nil {
		env.Close()
		return nil, err
	}
	return env, nil
}

// demoKeysFile is the demo's key file of personal fields, in its directory.
const demoKeysFile = "pii.keys"

// withPIIKeys writes a random key ("demo") into dir/pii.keys (mode 0600)
// and returns the configuration document with pii.keys_file naming it
// (beside the document) and nothing else under pii.
func withPIIKeys(doc []byte, dir string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, demoKeysFile), []byte("demo "+base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(doc, &n); err != nil {
		return nil, err
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("not a mapping")
	}
	root := n.Content[0]
	keys := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "keys_file"}, {Kind: yaml.ScalarNode, Value: demoKeysFile}}}
	found := false
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "pii" {
			root.Content[i+1], found = keys, true
		}
	}
	if !found {
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "pii"}, keys)
	}
	return yaml.Marshal(&n)
}

// withNATSURL returns a configuration document with its nats section
// replaced by url: ${NATS_URL}.
func withNATSURL(doc []byte) ([]byte, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(doc, &n); err != nil {
		return nil, err
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("not a mapping")
	}
	root := n.Content[0]
	url := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "url"}, {Kind: yaml.ScalarNode, Value: "${NATS_URL}"}}}
	found := false
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "nats" {
			root.Content[i+1], found = url, true
		}
	}
	if !found {
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "nats"}, url)
	}
	return yaml.Marshal(&n)
}

// withSigningKeys generates a signing key for each system into dir (nkey
// seed <system>.nk, public key <system>.pub) and returns doc with
// systems.<system>.signing_key and signing_public_keys naming them.
func withSigningKeys(doc []byte, dir string, systems []string) ([]byte, error) {
	ids, err := natsembed.LoadIdentities(dir, systems, true)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(doc, &n); err != nil {
		return nil, err
	}
	root := n.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "systems" {
			continue
		}
		sys := root.Content[i+1]
		for j := 0; j+1 < len(sys.Content); j += 2 {
			id := ids[sys.Content[j].Value]
			if id == nil {
				continue
			}
			pub := filepath.Join(dir, sys.Content[j].Value+".pub")
			if err := os.WriteFile(pub, []byte(id.PublicKey+"\n"), 0o644); err != nil {
				return nil, err
			}
			sys.Content[j+1].Content = append(sys.Content[j+1].Content,
				&yaml.Node{Kind: yaml.ScalarNode, Value: "signing_key"}, &yaml.Node{Kind: yaml.ScalarNode, Value: id.Path},
				&yaml.Node{Kind: yaml.ScalarNode, Value: "signing_public_keys"},
				&yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: pub}}})
		}
	}
	return yaml.Marshal(&n)
}

// Connect opens a connection to each database; close both.
func (e *Env) Connect(ctx context.Context) (crm, erp *pgx.Conn, err error) {
	if crm, err = pgx.Connect(ctx, e.CRM.DSN("crm")); err != nil {
		return nil, nil, fmt.Errorf("connect crm: %w", err)
	}
	if erp, err = pgx.Connect(ctx, e.ERP.DSN("erp")); err != nil {
		crm.Close(ctx)
		return nil, nil, fmt.Errorf("connect erp: %w", err)
	}
	return crm, erp, nil
}

// Both is the comparison of both directions: the fields the CRM owns
// (and the shared ones) as the ERP holds them, and the fields the ERP owns
// as the CRM holds them.
type Both struct {
	CRMToERP, ERPToCRM *reconcile.Report
}

// Equal reports whether both directions agree.
func (b *Both) Equal() bool { return b.CRMToERP.Equal() && b.ERPToCRM.Equal() }

func (b *Both) String() string {
	return "fields the CRM owns, CRM → ERP:\n" + b.CRMToERP.String() + "\nfields the ERP owns, ERP → CRM:\n" + b.ERPToCRM.String()
}

// CompareBoth reconciles both directions.
func (e *Env) CompareBoth(ctx context.Context) (*Both, error) {
	a, err := e.Compare(ctx)
	if err != nil {
		return nil, err
	}
	crm, erp, err := e.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer crm.Close(ctx)
	defer erp.Close(ctx)
	b, err := reconcile.Compare(ctx, e.Mapping, reconcile.Side{System: "erp", Conn: erp}, reconcile.Side{System: "crm", Conn: crm})
	if err != nil {
		return nil, err
	}
	return &Both{CRMToERP: a, ERPToCRM: b}, nil
}

// Compare reconciles CRM (source) with ERP (target).
func (e *Env) Compare(ctx context.Context) (*reconcile.Report, error) {
	a, b, err := e.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer a.Close(ctx)
	defer b.Close(ctx)
	return reconcile.Compare(ctx, e.Mapping, reconcile.Side{System: "crm", Conn: a}, reconcile.Side{System: "erp", Conn: b})
}

// Latencies records source-commit to target-commit latencies of applied
// transactions; safe for concurrent use.
type Latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records the transactions of a batch committed at at.
func (l *Latencies) Add(txs []*transform.Tx, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range txs {
		l.d = append(l.d, at.Sub(t.CommitTime))
	}
}

// Reset forgets what was recorded.
func (l *Latencies) Reset() {
	l.mu.Lock()
	l.d = nil
	l.mu.Unlock()
}

// Percentiles returns p50, p99 and the number of transactions.
func (l *Latencies) Percentiles() (p50, p99 time.Duration, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0, 0, 0
	}
	s := append([]time.Duration(nil), l.d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)*99/100], len(s)
}

// Run runs the demo and reports whether both sides agree at the end.
func Run(ctx context.Context, o Options) (bool, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rate <= 0 {
		o.Rate = 50
	}
	out := o.Out
	start := time.Now()
	fmt.Fprintln(out, "duplex demo: starting CRM and ERP PostgreSQL clusters and embedded NATS JetStream …")
	env, err := NewEnv(ctx, o.Logger)
	if err != nil {
		return false, err
	}
	defer env.Close()
	fmt.Fprintf(out, "  CRM  %s\n  ERP  %s\n", env.CRM.DSN("crm"), env.ERP.DSN("erp"))
	lat := &Latencies{}
	a, err := app.Start(ctx, app.Options{Config: env.Config, DataDir: env.Config.DataDir, Logger: o.Logger, Demo: true,
		OnApplied: func(_ string, txs []*transform.Tx, at time.Time) { lat.Add(txs, at) }})
	if err != nil {
		return false, err
	}
	defer a.Close()
	fmt.Fprintf(out, "  NATS %s (stream DUPLEX; read it with: nats --server %s stream view DUPLEX)\n", a.NATSURL(), a.NATSURL())
	fmt.Fprintf(out, "ready in %.1fs; generating CRM traffic for %s at %d tx/s\n\n", time.Since(start).Seconds(), o.Duration, o.Rate)
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() { stop(); <-done }()

	crm, erp, err := env.Connect(ctx)
	if err != nil {
		return false, err
	}
	defer crm.Close(context.WithoutCancel(ctx))
	defer erp.Close(context.WithoutCancel(ctx))
	gen := workload.New(uint64(time.Now().UnixNano()))
	gen.KeepOrders = true // the ERP refuses to delete an invoiced order
	sim := workload.NewERP(uint64(time.Now().UnixNano()))
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	erpTick := time.NewTicker(250 * time.Millisecond)
	defer erpTick.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	deadline := time.After(o.Duration)
	var txs, rows, invoiced, paid, edits, moved int
	fmt.Fprintf(out, "%6s %8s %8s %8s %6s | %-7s %9s %8s %9s %9s %9s\n", "time", "crm tx", "rows", "invoiced", "paid", "flow", "applied", "pending", "behind", "p50", "p99")
	printLag := func() {
		p50, p99, _ := lat.Percentiles()
		for _, l := range a.Lag(ctx) {
			fmt.Fprintf(out, "%5.0fs %8d %8d %8d %6d | %-7s %9d %8d %8.2fs %9s %9s\n", time.Since(start).Seconds(), txs, rows, invoiced, paid, l.Flow, l.Applied, l.Pending, l.SecondsBehind, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
		}
	}
traffic:
	for {
		select {
		case <-ctx.Done():
			break traffic
		case <-deadline:
			break traffic
		case <-report.C:
			printLag()
		case <-erpTick.C:
			// The ERP's own application: invoices, payments (both
			// posted to its ledger), customer edits, and now and then a
			// ledger posting moved to another company (its key changes).
			n, err := sim.InvoiceOpenOrders(ctx, erp, 20)
			if err != nil {
				return false, err
			}
			invoiced += n
			if n, err = sim.PayInvoices(ctx, erp, 3); err != nil {
				return false, err
			}
			paid += n
			if n, err = sim.EditCustomer(ctx, erp); err != nil {
				return false, err
			}
			edits += n
			if time.Since(start) > 2*time.Second && txs%4 == 0 {
				if n, err = sim.MoveLedgerEntry(ctx, erp); err != nil {
					return false, err
				}
				moved += n
			}
		case <-tick.C:
			n, err := gen.Step(ctx, crm)
			if err != nil {
				if ctx.Err() != nil {
					break traffic
				}
				return false, err
			}
			txs++
			rows += n
		}
	}
	// The ERP invoices what is still open, so the final state shows every
	// order invoiced in both systems.
	for {
		n, err := sim.InvoiceOpenOrders(ctx, erp, 1000)
		if err != nil {
			return false, err
		}
		invoiced += n
		if n == 0 {
			break
		}
	}
	fmt.Fprintf(out, "\ntraffic stopped: %d CRM transactions (%d row changes); the ERP invoiced %d orders, took %d payments, edited %d customers, moved %d ledger entries to another company; waiting for both flows to catch up …\n", txs, rows, invoiced, paid, edits, moved)
	var rep *Both
	wait := time.Now().Add(60 * time.Second)
	for {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		caught := true
		for _, l := range a.Lag(ctx) {
			caught = caught && l.Pending == 0
		}
		if caught || time.Now().After(wait) {
			rep, err = env.CompareBoth(ctx)
			if err != nil {
				return false, err
			}
			if rep.Equal() || time.Now().After(wait) {
				break
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	printLag()
	p50, p99, n := lat.Percentiles()
	fmt.Fprintf(out, "\nend-to-end latency (source commit → target commit), both flows, %d transactions: p50 %s, p99 %s\n", n, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
	var paidCRM, openCRM int64
	var balances string
	if err := crm.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'paid'), count(*) FILTER (WHERE status <> 'paid') FROM invoices`).Scan(&paidCRM, &openCRM); err != nil {
		return false, err
	}
	if err := crm.QueryRow(ctx, `SELECT coalesce(string_agg(currency || ' ' || total, ', ' ORDER BY currency), '-') FROM (SELECT currency, sum(open_balance)::text AS total FROM accounts GROUP BY currency) b`).Scan(&balances); err != nil {
		return false, err
	}
	var entries, companies int64
	if err := crm.QueryRow(ctx, `SELECT count(*), count(DISTINCT erp_company) FROM ledger_entries`).Scan(&entries, &companies); err != nil {
		return false, err
	}
	fmt.Fprintf(out, "the CRM shows %d invoices paid and %d open; open balances: %s; %d ERP ledger entries of %d companies (keyed by company and entry number)\n\n", paidCRM, openCRM, balances, entries, companies)
	fmt.Fprint(out, rep.String())
	for _, l := range a.Lag(ctx) {
		if l.DeadLetters > 0 {
			fmt.Fprintf(out, "flow %s dead-lettered %d events (see DUPLEX_DLQ)\n", l.Flow, l.DeadLetters)
		}
		if l.Conflicts > 0 {
			fmt.Fprintf(out, "flow %s resolved %d conflicts on shared fields (last writer wins)\n", l.Flow, l.Conflicts)
		}
	}
	if rep.Equal() {
		fmt.Fprintln(out, "\nOK: the CRM and the ERP agree, field by field, both ways (row counts, every mapped field, money totals per currency).")
		return true, nil
	}
	fmt.Fprintln(out, "\nMISMATCH: the CRM and the ERP do not agree (see above).")
	return false, nil
}
