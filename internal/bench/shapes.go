package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// The workload shapes of the comparison (issue 13), in the order they run.
const (
	ShapeLarge    = "large"
	ShapeSmall    = "small"
	ShapeUpdates  = "updates"
	ShapeTwoWay   = "two-way"
	ShapeSnapshot = "snapshot"
)

// Shapes are the shapes `duplex bench` measures by default.
func Shapes() []string {
	return []string{ShapeLarge, ShapeSmall, ShapeUpdates, ShapeTwoWay, ShapeSnapshot}
}

// Sizes of the shapes at scale 1. A transaction's size never scales; the
// number of transactions (and the snapshot's rows) do.
const (
	largeTxAccounts = 1000      // accounts per transaction of the large shape, and orders per order transaction
	largePairs      = 10        // account transactions (each followed by one of orders and lines) at scale 1: ~85,000 rows
	smallTxs        = 8000      // transactions of 1 account + 1 order + 3 lines
	updateTxs       = 2000      // transactions of 10 account + 10 line updates
	updatePool      = 2000      // accounts (each with an order of 3 lines) the updates go round
	invoiceTx       = 1000      // invoices per ERP transaction of the two-way shape
	snapshotRows    = 1_000_000 // rows in the CRM before the initial snapshot
)

// Measure is one timed drain of a backlog, by duplex or by native logical
// replication.
type Measure struct {
	// Rows are the rows of the transactions after the first one: those
	// that became visible between the two markers.
	Rows int
	// Span is the time from the first marker visible at the target to the
	// last.
	Span time.Duration
	// FirstSeen and LastSeen say whether each marker was seen (both are,
	// in a measure returned without error).
	FirstSeen, LastSeen bool
	// CPU in the span: the duplex process's, the nats-server process's
	// (0 for native) and both PostgreSQL clusters' (postmaster and all its
	// children). CPUValid is false on the rows of one direction of the
	// two-way shape, whose spans overlap (its "both" row has them).
	DuplexCPU, NATSCPU, PGCPU time.Duration
	CPUValid                  bool
	// PeakRSS is the duplex process's VmHWM at the last marker, bytes (0
	// for native).
	PeakRSS int64
}

// RowsPerSec is Rows over Span.
func (m Measure) RowsPerSec() float64 {
	if m.Span <= 0 {
		return 0
	}
	return float64(m.Rows) / m.Span.Seconds()
}

// ShapeRow is one line of the table: a shape (and, for two-way, a
// direction) with a measure per run of each side.
type ShapeRow struct {
	Shape          string
	Native, Duplex []Measure
}

// ShapesResult is the outcome of the comparison.
type ShapesResult struct {
	Rows []*ShapeRow
	// Stages holds the --stages figures, when asked.
	Stages []StageFigure
}

// sample is the CPU of the processes under test at one moment.
type sample struct {
	at               time.Time
	duplex, nats, pg time.Duration
}

// shapeRun is one run of one shape: fresh CRM and ERP clusters (demo.Env)
// holding duplex's databases (crm, erp) and native logical replication's
// (native_src on the CRM's cluster, native_dst on the ERP's), a nats-server
// process, and duplex as its own process.
type shapeRun struct {
	o     Options
	env   *demo.Env
	nats  *harness.NATSProcess
	pms   []int // postmasters of the CRM and ERP clusters
	shape string

	duplexPid int
	exited    chan struct{}
	logPath   string
	starts    int
}

// runShapes measures each shape o.Runs times and prints the table.
func runShapes(ctx context.Context, o Options) (*ShapesResult, error) {
	shapes := o.Shapes
	if len(shapes) == 0 {
		shapes = Shapes()
	}
	for _, s := range shapes {
		if !slices.Contains(Shapes(), s) {
			return nil, fmt.Errorf("bench: no shape %q (shapes: %s)", s, strings.Join(Shapes(), ", "))
		}
	}
	if o.Runs <= 0 {
		o.Runs = 1
	}
	if o.Scale <= 0 {
		o.Scale = 1
	}
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Exe = exe
	}
	res := &ShapesResult{}
	rows := map[string]*ShapeRow{}
	row := func(name string) *ShapeRow {
		if r := rows[name]; r != nil {
			return r
		}
		r := &ShapeRow{Shape: name}
		rows[name] = r
		res.Rows = append(res.Rows, r)
		return r
	}
	fmt.Fprintf(o.Out, "duplex against native logical replication: shapes %s, %d run(s) each, scale %g\n", strings.Join(shapes, ", "), o.Runs, o.Scale)
	for _, shape := range shapes {
		for run := 1; run <= o.Runs; run++ {
			native, duplex, err := runShape(ctx, o, shape)
			if err != nil {
				return res, fmt.Errorf("bench %s, run %d: %w", shape, run, err)
			}
			for _, name := range shapeRowNames(shape) {
				row(name).Native = append(row(name).Native, native[name])
				row(name).Duplex = append(row(name).Duplex, duplex[name])
			}
			for _, name := range shapeRowNames(shape) {
				n, d := native[name], duplex[name]
				fmt.Fprintf(o.Out, "  %s run %d: native %d rows in %s (%.0f rows/s); duplex %d rows in %s (%.0f rows/s)\n", name, run,
					n.Rows, n.Span.Round(time.Millisecond), n.RowsPerSec(), d.Rows, d.Span.Round(time.Millisecond), d.RowsPerSec())
			}
		}
	}
	if o.Stages {
		st, err := runStages(ctx, o)
		if err != nil {
			return res, fmt.Errorf("bench stages: %w", err)
		}
		res.Stages = st
	}
	fmt.Fprintln(o.Out)
	writeShapeTable(o.Out, res)
	return res, nil
}

// shapeRowNames are the table rows a shape gives.
func shapeRowNames(shape string) []string {
	if shape == ShapeTwoWay {
		return []string{shape + " CRM → ERP", shape + " ERP → CRM", shape + " both"}
	}
	return []string{shape}
}

// runShape runs one shape once: native and duplex, each draining the same
// backlog committed while both were stopped.
func runShape(ctx context.Context, o Options, shape string) (native, duplex map[string]Measure, err error) {
	env, err := demo.NewEnv(ctx, o.Logger)
	if err != nil {
		return nil, nil, err
	}
	defer env.Close()
	r := &shapeRun{o: o, env: env, shape: shape}
	for _, c := range []*harness.Cluster{env.CRM, env.ERP} {
		pid, err := postmasterPid(c.DataDir())
		if err != nil {
			return nil, nil, err
		}
		r.pms = append(r.pms, pid)
	}
	if r.nats, err = harness.StartNATSProcess(ctx, harness.NATSProcessOptions{StoreDir: filepath.Join(env.Dir, "nats")}); err != nil {
		return nil, nil, err
	}
	defer r.nats.Close()
	if shape == ShapeSnapshot {
		return r.snapshot(ctx)
	}
	return r.backlog(ctx)
}

// sample reads the CPU of duplex, nats-server and both clusters.
func (r *shapeRun) sample(withDuplex bool) sample {
	s := sample{at: time.Now()}
	if withDuplex {
		s.duplex = procCPU(r.duplexPid)
		s.nats = procCPU(r.nats.Pid())
	}
	for _, pm := range r.pms {
		s.pg += clusterCPU(pm)
	}
	return s
}

// startDuplex runs `duplex run` as its own process (the example's two-way
// configuration, against the nats-server process) and returns its stop.
func (r *shapeRun) startDuplex(ctx context.Context) (func(), error) {
	r.starts++
	r.logPath = filepath.Join(r.env.Dir, fmt.Sprintf("duplex-%d.log", r.starts))
	lf, err := os.Create(r.logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"run", "--config", r.env.URLConfigPath, "--data-dir", filepath.Join(r.env.Dir, "child"), "--log-level", "info", "--listen", "off"}
	if r.o.CPUProfileDir != "" {
		if err := os.MkdirAll(r.o.CPUProfileDir, 0o755); err != nil {
			lf.Close()
			return nil, err
		}
		args = append(args, "--cpu-profile", filepath.Join(r.o.CPUProfileDir, fmt.Sprintf("%s-%d.pprof", r.shape, r.starts)))
	}
	cmd := exec.Command(r.o.Exe, args...)
	cmd.Env = append(append(os.Environ(), r.o.ExtraEnv...), "CRM_DSN="+r.env.CRM.DSN("crm"), "ERP_DSN="+r.env.ERP.DSN("erp"), "NATS_URL="+r.nats.URL())
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start duplex: %w", err)
	}
	r.duplexPid = cmd.Process.Pid
	exited := make(chan struct{})
	r.exited = exited
	go func() { _ = cmd.Wait(); lf.Close(); close(exited) }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-exited
		}
	}, nil
}

// logTail is the end of the current duplex log, for errors.
func (r *shapeRun) logTail() string {
	b, _ := os.ReadFile(r.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// duplexReady starts duplex on the (empty or seeded) databases, waits
// until a probe account reached the ERP and its customer number came back
// to the CRM (both flows stream), and returns its stop.
func (r *shapeRun) duplexReady(ctx context.Context, crm, erp *pgx.Conn) (func(), error) {
	stop, err := r.startDuplex(ctx)
	if err != nil {
		return nil, err
	}
	probe := uuid.New()
	if _, err := crm.Exec(ctx, `INSERT INTO accounts (id, name, currency) VALUES ($1, 'probe', 'EUR')`, probe); err != nil {
		stop()
		return nil, err
	}
	if _, err := waitQuery(ctx, crm, fmt.Sprintf(`SELECT erp_customer_no IS NOT NULL FROM accounts WHERE id = '%s'`, probe), 5*time.Minute); err != nil {
		stop()
		return nil, fmt.Errorf("duplex did not start streaming: %w; its log ends:\n%s", err, r.logTail())
	}
	_, _ = crm.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, probe)
	if _, err := waitQuery(ctx, erp, fmt.Sprintf(`SELECT NOT EXISTS (SELECT 1 FROM customers WHERE crm_account_id = '%s')`, probe), 5*time.Minute); err != nil {
		stop()
		return nil, fmt.Errorf("duplex did not delete the probe: %w; its log ends:\n%s", err, r.logTail())
	}
	return stop, nil
}

// nativeSetup creates native_src (CRM cluster) and native_dst (ERP
// cluster) with the CRM schema, the publication native (accounts, orders,
// order lines) and, unless snapshot, the subscription native in native_dst;
// with back also native_back the other way (invoices). It waits until
// the subscriptions' tables are synchronized.
func (r *shapeRun) nativeSetup(ctx context.Context, snapshot, back bool) error {
	schema, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/crm.sql")
	if err != nil {
		return err
	}
	if err := r.env.CRM.CreateDatabase(ctx, "native_src"); err != nil {
		return err
	}
	if err := r.env.ERP.CreateDatabase(ctx, "native_dst"); err != nil {
		return err
	}
	if err := r.env.CRM.Exec(ctx, "native_src", string(schema)+"\nCREATE PUBLICATION native FOR TABLE accounts, orders, order_lines;"); err != nil {
		return err
	}
	if err := r.env.ERP.Exec(ctx, "native_dst", string(schema)); err != nil {
		return err
	}
	if snapshot {
		return nil
	}
	if err := r.env.ERP.Exec(ctx, "native_dst", fmt.Sprintf("CREATE SUBSCRIPTION native CONNECTION '%s' PUBLICATION native", r.env.CRM.DSN("native_src"))); err != nil {
		return err
	}
	if back {
		if err := r.env.ERP.Exec(ctx, "native_dst", "CREATE PUBLICATION native_back FOR TABLE invoices"); err != nil {
			return err
		}
		if err := r.env.CRM.Exec(ctx, "native_src", fmt.Sprintf("CREATE SUBSCRIPTION native_back CONNECTION '%s' PUBLICATION native_back", r.env.ERP.DSN("native_dst"))); err != nil {
			return err
		}
	}
	for _, s := range []struct {
		c      *harness.Cluster
		db, sb string
		on     bool
	}{{r.env.ERP, "native_dst", "native", true}, {r.env.CRM, "native_src", "native_back", back}} {
		if !s.on {
			continue
		}
		conn, err := pgx.Connect(ctx, s.c.DSN(s.db))
		if err != nil {
			return err
		}
		_, err = waitQuery(ctx, conn, fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = '%s' AND pid IS NOT NULL AND relid IS NULL)
			AND NOT EXISTS (SELECT 1 FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = '%s' AND sr.srsubstate NOT IN ('r', 's'))`, s.sb, s.sb), 2*time.Minute)
		conn.Close(ctx)
		if err != nil {
			return fmt.Errorf("subscription %s: %w", s.sb, err)
		}
	}
	return nil
}

// subscriptions enables or disables the native subscriptions.
func (r *shapeRun) subscriptions(ctx context.Context, enable, back bool) error {
	verb := "DISABLE"
	if enable {
		verb = "ENABLE"
	}
	if err := r.env.ERP.Exec(ctx, "native_dst", "ALTER SUBSCRIPTION native "+verb); err != nil {
		return err
	}
	if back {
		return r.env.CRM.Exec(ctx, "native_src", "ALTER SUBSCRIPTION native_back "+verb)
	}
	return nil
}

// track is one direction being watched: the query that says a marker is
// visible at the target (one bool; its argument the marker).
type track struct {
	name        string
	dsn         string
	first, last string
	firstArg    any
	lastArg     any
	rows        int // rows after the first transaction
	interval    time.Duration
}

// watched is what watch saw of one track.
type watched struct {
	firstAt, lastAt time.Time
	first, last     sample
	firstOK, lastOK bool
}

// watch polls each track's target for its markers, concurrently, and
// samples the CPU when each becomes visible. It fails when duplex exits
// (exited, when not nil) or after timeout.
func (r *shapeRun) watch(ctx context.Context, tracks []track, withDuplex bool, exited <-chan struct{}, timeout time.Duration) ([]watched, error) {
	out := make([]watched, len(tracks))
	errs := make([]error, len(tracks))
	var wg sync.WaitGroup
	for i, t := range tracks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.watchOne(ctx, t, &out[i], withDuplex, exited, timeout)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (r *shapeRun) watchOne(ctx context.Context, t track, w *watched, withDuplex bool, exited <-chan struct{}, timeout time.Duration) error {
	conn, err := pgx.Connect(ctx, t.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(timeout)
	for {
		if !w.firstOK {
			if err := conn.QueryRow(ctx, t.first, t.firstArg).Scan(&w.firstOK); err != nil {
				return fmt.Errorf("%s: first marker: %w", t.name, err)
			}
			if w.firstOK {
				w.first = r.sample(withDuplex)
				w.firstAt = w.first.at
			}
		}
		if w.firstOK {
			if err := conn.QueryRow(ctx, t.last, t.lastArg).Scan(&w.lastOK); err != nil {
				return fmt.Errorf("%s: last marker: %w", t.name, err)
			}
			if w.lastOK {
				w.last = r.sample(withDuplex)
				w.lastAt = w.last.at
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: markers not seen within %s (first seen: %v)", t.name, timeout, w.firstOK)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return fmt.Errorf("%s: duplex exited before the last marker was seen; its log ends:\n%s", t.name, r.logTail())
		case <-time.After(t.interval):
		}
	}
}

// measures turns what watch saw into a Measure per table row: one per
// track, and for several tracks also "<shape> both" over the union of
// their spans (the only one with CPU figures).
func (r *shapeRun) measures(tracks []track, ws []watched, peak int64) map[string]Measure {
	out := map[string]Measure{}
	var first, last sample
	rows := 0
	for i, t := range tracks {
		w := ws[i]
		m := Measure{Rows: t.rows, Span: w.lastAt.Sub(w.firstAt), FirstSeen: w.firstOK, LastSeen: w.lastOK, PeakRSS: peak}
		if len(tracks) == 1 {
			m.DuplexCPU, m.NATSCPU, m.PGCPU, m.CPUValid = w.last.duplex-w.first.duplex, w.last.nats-w.first.nats, w.last.pg-w.first.pg, true
		}
		out[t.name] = m
		if i == 0 || w.first.at.Before(first.at) {
			first = w.first
		}
		if i == 0 || w.last.at.After(last.at) {
			last = w.last
		}
		rows += t.rows
	}
	if len(tracks) > 1 {
		out[r.shape+" both"] = Measure{Rows: rows, Span: last.at.Sub(first.at), FirstSeen: true, LastSeen: true, PeakRSS: peak,
			DuplexCPU: last.duplex - first.duplex, NATSCPU: last.nats - first.nats, PGCPU: last.pg - first.pg, CPUValid: true}
	}
	return out
}

// markerSQL looks for a CRM account (forward) or an ERP invoice (back) at
// the target of duplex or of native replication.
const (
	duplexAccountSeen = `SELECT EXISTS (SELECT 1 FROM customers WHERE crm_account_id = $1)`
	nativeAccountSeen = `SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)`
	invoiceSeen       = `SELECT EXISTS (SELECT 1 FROM invoices WHERE erp_invoice_no = $1)`
)

// markerPoll is how often a target is polled for a marker.
const markerPoll = 5 * time.Millisecond

// backlog runs the shapes that commit a backlog while both are stopped:
// large, small, updates, two-way.
func (r *shapeRun) backlog(ctx context.Context) (map[string]Measure, map[string]Measure, error) {
	back := r.shape == ShapeTwoWay
	if err := r.nativeSetup(ctx, false, back); err != nil {
		return nil, nil, fmt.Errorf("native set-up: %w", err)
	}
	crm, erp, err := r.env.Connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer crm.Close(context.WithoutCancel(ctx))
	defer erp.Close(context.WithoutCancel(ctx))
	src, err := pgx.Connect(ctx, r.env.CRM.DSN("native_src"))
	if err != nil {
		return nil, nil, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := pgx.Connect(ctx, r.env.ERP.DSN("native_dst"))
	if err != nil {
		return nil, nil, err
	}
	defer dst.Close(context.WithoutCancel(ctx))

	stop, err := r.duplexReady(ctx, crm, erp)
	if err != nil {
		return nil, nil, err
	}
	// Seed what the shape works on, and let both replicate it.
	switch r.shape {
	case ShapeUpdates:
		err = r.seed(ctx, crm, erp, src, dst, r.updatePool(), 1, 3)
	case ShapeTwoWay:
		err = r.seed(ctx, crm, erp, src, dst, r.invoiceTxs()*invoiceTx, 1, 0)
	}
	stop()
	if err != nil {
		return nil, nil, fmt.Errorf("seed: %w", err)
	}
	if err := r.subscriptions(ctx, false, back); err != nil {
		return nil, nil, err
	}

	// The backlog, committed while duplex is stopped and the native
	// subscriptions are disabled: the same transactions into both.
	var dl, nl []track
	d, err := r.forward(ctx, crm)
	if err != nil {
		return nil, nil, fmt.Errorf("backlog crm: %w", err)
	}
	dl = append(dl, track{name: r.fwdName(), dsn: r.env.ERP.DSN("erp"), first: duplexAccountSeen, last: duplexAccountSeen, firstArg: d.first, lastArg: d.last, rows: d.rows, interval: markerPoll})
	n, err := r.forward(ctx, src)
	if err != nil {
		return nil, nil, fmt.Errorf("backlog native_src: %w", err)
	}
	nl = append(nl, track{name: r.fwdName(), dsn: r.env.ERP.DSN("native_dst"), first: nativeAccountSeen, last: nativeAccountSeen, firstArg: n.first, lastArg: n.last, rows: n.rows, interval: markerPoll})
	if back {
		d, err := r.invoices(ctx, erp, false)
		if err != nil {
			return nil, nil, fmt.Errorf("backlog erp: %w", err)
		}
		dl = append(dl, track{name: r.shape + " ERP → CRM", dsn: r.env.CRM.DSN("crm"), first: invoiceSeen, last: invoiceSeen, firstArg: d.first, lastArg: d.last, rows: d.rows, interval: markerPoll})
		n, err := r.invoices(ctx, dst, true)
		if err != nil {
			return nil, nil, fmt.Errorf("backlog native_dst: %w", err)
		}
		nl = append(nl, track{name: r.shape + " ERP → CRM", dsn: r.env.CRM.DSN("native_src"), first: invoiceSeen, last: invoiceSeen, firstArg: n.first, lastArg: n.last, rows: n.rows, interval: markerPoll})
	}

	// duplex drains alone, then native: timed from the first marker
	// visible to the last, so neither pays for its start-up.
	if stop, err = r.startDuplex(ctx); err != nil {
		return nil, nil, err
	}
	ws, err := r.watch(ctx, dl, true, r.exited, 30*time.Minute)
	peak := peakRSS(r.duplexPid)
	stop()
	if err != nil {
		return nil, nil, fmt.Errorf("duplex: %w", err)
	}
	duplex := r.measures(dl, ws, peak)
	if err := r.subscriptions(ctx, true, back); err != nil {
		return nil, nil, err
	}
	ws, err = r.watch(ctx, nl, false, nil, 30*time.Minute)
	if err != nil {
		return nil, nil, fmt.Errorf("native: %w", err)
	}
	return r.measures(nl, ws, 0), duplex, nil
}

func (r *shapeRun) fwdName() string {
	if r.shape == ShapeTwoWay {
		return r.shape + " CRM → ERP"
	}
	return r.shape
}

// scaled is n times the scale, at least lo.
func (r *shapeRun) scaled(n, lo int) int {
	return max(lo, int(math.Round(float64(n)*r.o.Scale)))
}

func (r *shapeRun) updatePool() int { return (r.scaled(updatePool, 20) + 9) / 10 * 10 }

// invoiceTxs is the number of ERP invoice transactions of the two-way
// shape: as many as the CRM's transactions.
func (r *shapeRun) invoiceTxs() int { return 2 * r.scaled(largePairs, 1) }

// seed inserts accounts accounts, each with orders orders of lines lines,
// into the CRM and native_src in transactions of at most 1,000 accounts,
// and waits until duplex (running) and the native subscription copied
// them (and, for duplex, the ERP's numbers came back).
func (r *shapeRun) seed(ctx context.Context, crm, erp, src, dst *pgx.Conn, accounts, orders, lines int) error {
	const q = `WITH a AS (
  INSERT INTO accounts (id, name, email, country, currency, credit_limit)
  SELECT gen_random_uuid(), 'seed ' || $1::int || ' ' || g, 's' || g || '@example.com', 'DE', 'EUR', 1000 FROM generate_series(1, $2::int) g RETURNING id
), o AS (
  INSERT INTO orders (id, account_id, currency, total, status, ordered_at)
  SELECT gen_random_uuid(), a.id, 'EUR', 29.97, 'open', now() FROM a, generate_series(1, $3::int) RETURNING id
)
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
SELECT gen_random_uuid(), o.id, 'SKU-' || g, 1, 9.99 FROM o, generate_series(1, $4::int) g`
	want := accounts * (1 + orders + orders*lines)
	for _, c := range []*pgx.Conn{crm, src} {
		for k := 0; k*largeTxAccounts < accounts; k++ {
			if _, err := c.Exec(ctx, q, k, min(largeTxAccounts, accounts-k*largeTxAccounts), orders, lines); err != nil {
				return err
			}
		}
	}
	if _, err := waitCount(ctx, erp, want, 30*time.Minute, "customers", "sales_orders", "sales_order_lines"); err != nil {
		return fmt.Errorf("duplex: %w", err)
	}
	if _, err := waitQuery(ctx, crm, `SELECT NOT EXISTS (SELECT 1 FROM accounts WHERE erp_customer_no IS NULL) AND NOT EXISTS (SELECT 1 FROM orders WHERE erp_order_no IS NULL)`, 30*time.Minute); err != nil {
		return fmt.Errorf("duplex write-back: %w", err)
	}
	if _, err := waitCount(ctx, dst, want, 30*time.Minute, "accounts", "orders", "order_lines"); err != nil {
		return fmt.Errorf("native: %w", err)
	}
	return nil
}

// committed is a backlog committed in one system: its rows after the
// first transaction and the markers of its first and last transaction.
type committed struct {
	rows        int
	first, last any
}

// forward commits the shape's CRM backlog (in the CRM or native_src: the
// same schema and the same transactions).
func (r *shapeRun) forward(ctx context.Context, conn *pgx.Conn) (committed, error) {
	switch r.shape {
	case ShapeLarge, ShapeTwoWay:
		return r.large(ctx, conn)
	case ShapeSmall:
		return r.small(ctx, conn)
	case ShapeUpdates:
		return r.updates(ctx, conn)
	}
	return committed{}, fmt.Errorf("no backlog for shape %s", r.shape)
}

// large commits pairs of transactions: 1,000 accounts (the first of the
// first is the first marker), then 1,000 orders for them with 1–12 lines
// each (~6,500; the number follows from the account's name, so both
// systems get the same), the last with the last marker account.
func (r *shapeRun) large(ctx context.Context, conn *pgx.Conn) (committed, error) {
	const accountsSQL = `INSERT INTO accounts (id, name, email, country, currency, credit_limit)
SELECT CASE WHEN g = 1 AND $3::uuid IS NOT NULL THEN $3::uuid ELSE gen_random_uuid() END, 'large ' || $1::int || ' ' || g, 'l' || g || '@example.com', 'DE', 'EUR', (g % 100000) / 100.0
FROM generate_series(1, $2::int) g`
	const ordersSQL = `WITH o AS (
  INSERT INTO orders (id, account_id, currency, total, status, ordered_at)
  SELECT gen_random_uuid(), a.id, 'EUR', 123.45, 'open', now() FROM accounts a WHERE a.name LIKE 'large ' || $1::int || ' %' RETURNING id, account_id
)
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
SELECT gen_random_uuid(), o.id, 'SKU-' || g, g, 9.99 FROM o JOIN accounts a ON a.id = o.account_id, generate_series(1, 1 + abs(hashtext(a.name)) % 12) g`
	pairs := r.scaled(largePairs, 1)
	c := committed{first: uuid.New(), last: uuid.New()}
	for k := 0; k < pairs; k++ {
		var marker any
		if k == 0 {
			marker = c.first
		}
		if _, err := conn.Exec(ctx, accountsSQL, k, largeTxAccounts, marker); err != nil {
			return c, err
		}
		if k > 0 {
			c.rows += largeTxAccounts
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return c, err
		}
		tag, err := tx.Exec(ctx, ordersSQL, k)
		if err == nil && k == pairs-1 {
			_, err = tx.Exec(ctx, `INSERT INTO accounts (id, name, currency) VALUES ($1, 'last marker', 'EUR')`, c.last)
			c.rows++
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			return c, err
		}
		c.rows += largeTxAccounts + int(tag.RowsAffected())
	}
	return c, nil
}

// small commits transactions of 1 account + 1 order + 3 lines; the
// accounts of the first and the last are the markers.
func (r *shapeRun) small(ctx context.Context, conn *pgx.Conn) (committed, error) {
	const q = `WITH a AS (
  INSERT INTO accounts (id, name, email, country, currency, credit_limit) VALUES ($1, 'small ' || $2::int, 'small@example.com', 'DE', 'EUR', 100) RETURNING id
), o AS (
  INSERT INTO orders (id, account_id, currency, total, status, ordered_at) SELECT gen_random_uuid(), a.id, 'EUR', 29.97, 'open', now() FROM a RETURNING id
)
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price) SELECT gen_random_uuid(), o.id, 'SKU-' || g, 1, 9.99 FROM o, generate_series(1, 3) g`
	n := r.scaled(smallTxs, 2)
	var c committed
	for i := 0; i < n; i++ {
		id := uuid.New()
		if _, err := conn.Exec(ctx, q, id, i); err != nil {
			return c, err
		}
		switch {
		case i == 0:
			c.first = id
		default:
			c.rows += 5
		}
		c.last = id
	}
	return c, nil
}

// updates commits transactions of 10 account and 10 line updates, going
// round the seeded accounts and lines; the first and the last also insert
// a marker account.
func (r *shapeRun) updates(ctx context.Context, conn *pgx.Conn) (committed, error) {
	pool := r.updatePool()
	var accounts, lines []uuid.UUID
	if err := scanIDs(ctx, conn, `SELECT id FROM accounts WHERE name LIKE 'seed %' ORDER BY id LIMIT $1`, pool, &accounts); err != nil {
		return committed{}, err
	}
	if err := scanIDs(ctx, conn, `SELECT id FROM order_lines ORDER BY id LIMIT $1`, pool, &lines); err != nil {
		return committed{}, err
	}
	if len(accounts) < 10 || len(lines) < 10 {
		return committed{}, fmt.Errorf("updates: %d accounts and %d lines seeded, want at least 10 of each", len(accounts), len(lines))
	}
	n := r.scaled(updateTxs, 2)
	c := committed{first: uuid.New(), last: uuid.New()}
	for i := 0; i < n; i++ {
		a := make([]uuid.UUID, 10)
		l := make([]uuid.UUID, 10)
		for j := range 10 {
			a[j] = accounts[(i*10+j)%len(accounts)]
			l[j] = lines[(i*10+j)%len(lines)]
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return c, err
		}
		_, err = tx.Exec(ctx, `UPDATE accounts SET credit_limit = credit_limit + 1, updated_at = now() WHERE id = ANY($1)`, a)
		if err == nil {
			_, err = tx.Exec(ctx, `UPDATE order_lines SET quantity = quantity + 1 WHERE id = ANY($1)`, l)
		}
		rows := 20
		if err == nil && (i == 0 || i == n-1) {
			m := c.first
			if i == n-1 {
				m = c.last
			}
			_, err = tx.Exec(ctx, `INSERT INTO accounts (id, name, currency) VALUES ($1, 'marker', 'EUR')`, m)
			rows++
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			return c, err
		}
		if i > 0 {
			c.rows += rows
		}
	}
	return c, nil
}

func scanIDs(ctx context.Context, conn *pgx.Conn, q string, limit int, into *[]uuid.UUID) error {
	rows, err := conn.Query(ctx, q, limit)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	*into = ids
	return err
}

// invoices commits the two-way shape's ERP backlog: one invoice per
// seeded order in transactions of 1,000. In the ERP (duplex) an invoice is
// numbered by the ERP; in native_dst (the CRM schema) erp_invoice_no is
// numbered here. The markers are the first and the last invoice number.
func (r *shapeRun) invoices(ctx context.Context, conn *pgx.Conn, native bool) (committed, error) {
	const erpSQL = `INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
SELECT order_no, customer_no, currency, total, 'open', now(), current_date + 30 FROM sales_orders ORDER BY order_no LIMIT $1 OFFSET $2
RETURNING invoice_no`
	const nativeSQL = `INSERT INTO invoices (erp_invoice_no, account_id, order_id, currency, amount, paid_amount, status, due_date)
SELECT $2::bigint + row_number() OVER (ORDER BY o.id), o.account_id, o.id, o.currency, o.total, 0, 'open', current_date + 30
FROM (SELECT * FROM orders ORDER BY id LIMIT $1 OFFSET $2) o
RETURNING erp_invoice_no`
	q := erpSQL
	if native {
		q = nativeSQL
	}
	var c committed
	txs := r.invoiceTxs()
	for k := 0; k < txs; k++ {
		rows, err := conn.Query(ctx, q, invoiceTx, k*invoiceTx)
		if err != nil {
			return c, err
		}
		nos, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return c, err
		}
		if len(nos) == 0 {
			return c, fmt.Errorf("invoices: no order left to invoice at transaction %d", k)
		}
		if k == 0 {
			c.first = slices.Min(nos)
		} else {
			c.rows += len(nos)
		}
		c.last = slices.Max(nos)
	}
	return c, nil
}

// snapshot copies the rows that exist before replication starts: duplex's
// initial snapshot (its first start, a new slot) and a new native
// subscription's table synchronization (copy_data). Timed from the first
// row visible at the target to the last (a count, polled every 100 ms).
func (r *shapeRun) snapshot(ctx context.Context) (map[string]Measure, map[string]Measure, error) {
	if err := r.nativeSetup(ctx, true, false); err != nil {
		return nil, nil, fmt.Errorf("native set-up: %w", err)
	}
	rows := r.scaled(snapshotRows, 100)
	n, err := bulk(ctx, r.env.CRM.DSN("crm"), rows, 5000)
	if err != nil {
		return nil, nil, err
	}
	if _, err := bulk(ctx, r.env.CRM.DSN("native_src"), rows, 5000); err != nil {
		return nil, nil, err
	}
	const poll = 100 * time.Millisecond
	anyRow := func(a, b, c string) string {
		return fmt.Sprintf(`SELECT $1::int > 0 AND (EXISTS (SELECT 1 FROM %s) OR EXISTS (SELECT 1 FROM %s) OR EXISTS (SELECT 1 FROM %s))`, a, b, c)
	}
	// The last marker is the row of each table's highest key: duplex
	// copies a table in key order and its flow applies the chunks in
	// order, and native synchronizes a table in one transaction, so once
	// all three are there everything is. Three index probes a poll, where
	// counting the tables cost the target a second of CPU of every ten
	// (a whole scan every 100 ms) while duplex copied; the count is made
	// once, afterwards (checkCopied).
	lastKeys, err := highestKeys(ctx, r.env.CRM.DSN("crm"))
	if err != nil {
		return nil, nil, err
	}
	nativeKeys, err := highestKeys(ctx, r.env.CRM.DSN("native_src"))
	if err != nil {
		return nil, nil, err
	}
	lastRows := func(tables [3][2]string) string {
		var parts []string
		for i, t := range tables {
			parts = append(parts, fmt.Sprintf(`EXISTS (SELECT 1 FROM %s WHERE %s = ($1::text[])[%d]::uuid)`, t[0], t[1], i+1))
		}
		return "SELECT " + strings.Join(parts, " AND ")
	}
	erpTables := [3][2]string{{"customers", "crm_account_id"}, {"sales_orders", "crm_order_id"}, {"sales_order_lines", "crm_line_id"}}
	crmTables := [3][2]string{{"accounts", "id"}, {"orders", "id"}, {"order_lines", "id"}}
	dl := []track{{name: r.shape, dsn: r.env.ERP.DSN("erp"), first: anyRow("customers", "sales_orders", "sales_order_lines"), last: lastRows(erpTables),
		firstArg: n, lastArg: lastKeys, rows: n, interval: poll}}
	stop, err := r.startDuplex(ctx)
	if err != nil {
		return nil, nil, err
	}
	ws, err := r.watch(ctx, dl, true, r.exited, 60*time.Minute)
	peak := peakRSS(r.duplexPid)
	stop()
	if err != nil {
		return nil, nil, fmt.Errorf("duplex: %w", err)
	}
	if err := checkCopied(ctx, r.env.ERP.DSN("erp"), erpTables, n); err != nil {
		return nil, nil, fmt.Errorf("duplex: %w", err)
	}
	duplex := r.measures(dl, ws, peak)
	nl := []track{{name: r.shape, dsn: r.env.ERP.DSN("native_dst"), first: anyRow("accounts", "orders", "order_lines"), last: lastRows(crmTables),
		firstArg: n, lastArg: nativeKeys, rows: n, interval: poll}}
	if err := r.env.ERP.Exec(ctx, "native_dst", fmt.Sprintf("CREATE SUBSCRIPTION native CONNECTION '%s' PUBLICATION native", r.env.CRM.DSN("native_src"))); err != nil {
		return nil, nil, err
	}
	ws, err = r.watch(ctx, nl, false, nil, 60*time.Minute)
	if err != nil {
		return nil, nil, fmt.Errorf("native: %w", err)
	}
	if err := checkCopied(ctx, r.env.ERP.DSN("native_dst"), crmTables, n); err != nil {
		return nil, nil, fmt.Errorf("native: %w", err)
	}
	return r.measures(nl, ws, 0), duplex, nil
}

// highestKeys returns the text of the highest id of accounts, orders and
// order_lines in the database (uuid has no max aggregate in PostgreSQL
// 15).
func highestKeys(ctx context.Context, dsn string) ([]string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var out []string
	for _, t := range []string{"accounts", "orders", "order_lines"} {
		var k string
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT id::text FROM %s ORDER BY id DESC LIMIT 1`, t)).Scan(&k); err != nil {
			return nil, fmt.Errorf("highest key of %s: %w", t, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// checkCopied fails unless the three tables hold n rows in all: the
// snapshot's last marker was seen, so every row must be there.
func checkCopied(ctx context.Context, dsn string, tables [3][2]string, n int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var got int
	if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT count(*) FROM %s) + (SELECT count(*) FROM %s) + (SELECT count(*) FROM %s)`,
		tables[0][0], tables[1][0], tables[2][0])).Scan(&got); err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("the last rows were copied, but the target holds %d rows, want %d", got, n)
	}
	return nil
}

// ShapeTableColumns are the columns of the table runShapes prints.
var ShapeTableColumns = []string{"shape", "rows", "native rows/s", "duplex rows/s", "duplex/native",
	"duplex CPU s/100k rows", "nats-server CPU s/100k rows", "PostgreSQL CPU s/100k rows (native)", "PostgreSQL CPU s/100k rows (duplex)", "duplex peak RSS"}

// writeShapeTable prints one line per shape (and direction): rows/s of
// each side (min / median / max over the runs when there are several),
// the ratio of the medians, the median CPU seconds per 100,000 rows and
// duplex's largest peak RSS.
func writeShapeTable(w io.Writer, res *ShapesResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(ShapeTableColumns, "\t"))
	for _, r := range res.Rows {
		nr, dr := rates(r.Native), rates(r.Duplex)
		ratio := "—"
		if median(nr) > 0 {
			ratio = fmt.Sprintf("%.2f", median(dr)/median(nr))
		}
		rows := 0
		if len(r.Duplex) > 0 {
			rows = r.Duplex[0].Rows
		}
		per100k := func(ms []Measure, f func(Measure) time.Duration) string {
			var v []float64
			for _, m := range ms {
				if m.CPUValid && m.Rows > 0 {
					v = append(v, f(m).Seconds()*100_000/float64(m.Rows))
				}
			}
			if len(v) == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2f", median(v))
		}
		var peak int64
		for _, m := range r.Duplex {
			peak = max(peak, m.PeakRSS)
		}
		rss := "—"
		if peak > 0 {
			rss = fmt.Sprintf("%d MB", peak>>20)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Shape, rows, spread(nr), spread(dr), ratio,
			per100k(r.Duplex, func(m Measure) time.Duration { return m.DuplexCPU }),
			per100k(r.Duplex, func(m Measure) time.Duration { return m.NATSCPU }),
			per100k(r.Native, func(m Measure) time.Duration { return m.PGCPU }),
			per100k(r.Duplex, func(m Measure) time.Duration { return m.PGCPU }), rss)
	}
	tw.Flush()
	fmt.Fprintln(w, "rows/s: rows of the transactions after the first, over the time from the first marker visible at the target to the last (min / median / max when several runs); CPU over the same span.")
	if len(res.Stages) > 0 {
		fmt.Fprintln(w)
		writeStages(w, res.Stages)
	}
}

func rates(ms []Measure) []float64 {
	v := make([]float64, 0, len(ms))
	for _, m := range ms {
		v = append(v, m.RowsPerSec())
	}
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread is "min / median / max" of rates, or the one rate.
func spread(v []float64) string {
	switch len(v) {
	case 0:
		return "—"
	case 1:
		return fmt.Sprintf("%.0f", v[0])
	}
	return fmt.Sprintf("%.0f / %.0f / %.0f", slices.Min(v), median(v), slices.Max(v))
}
