package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/internal/workload"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// SoakTarget is the number of CRM row changes a 30-minute soak makes at
// the default rate.
const SoakTarget = 500_000

// DefaultSoakRate is the CRM row changes per second that reach SoakTarget
// in 30 minutes, with room for the pauses faults cause.
const DefaultSoakRate = 300

// SoakOptions configures Soak.
type SoakOptions struct {
	// Duration is how long the workload runs (faults may make it longer:
	// it ends only once every scheduled fault was injected).
	Duration time.Duration
	// Seed chooses the faults, their order and moments, and the workload.
	Seed uint64
	// Rate is the CRM row changes per second (default DefaultSoakRate).
	Rate int
	// ERPStop is how long the ERP is stopped (default 30s), Lock how long
	// a target table is locked (default 20s).
	ERPStop, Lock time.Duration
	// Faults, when set, limits the soak to these kinds (see
	// SoakFaultKinds); default every kind.
	Faults []string
	// LeaseTTL is the duplex processes' ha.lease_ttl (default 5s).
	LeaseTTL time.Duration
	// Exe is the duplex binary to run (default this executable), with
	// ExtraEnv added to its environment.
	Exe      string
	ExtraEnv []string
	// LogDir receives the logs of duplex and nats-server (default: a new
	// temporary directory, kept).
	LogDir string
	Out    io.Writer
	Logger *slog.Logger
}

// SoakResult is what a soak counted.
type SoakResult struct {
	Seed                   uint64
	Faults                 []FaultRecord
	CRMMade, CRMApplied    int64 // row changes made in the CRM, applied to the ERP
	CRMDeadLettered        int64
	CRMBackfilled          int64 // made while the slot was lost, recovered by the backfill
	ERPMade, ERPApplied    int64
	ERPDeadLettered        int64
	WorkloadErrors         int64
	CRMTxs, ERPTxs         int64
	Setup, Took, Converged time.Duration
}

// FaultRecord is one injected fault.
type FaultRecord struct {
	Kind      string
	At        time.Duration // since the workload started
	Lasted    time.Duration // until the fault condition ended
	Recovered time.Duration // from its end until a change made then went both ways
	Detail    string
}

// soakTicksMapping adds two entities that count row changes: a statement
// trigger on every mapped table of a system adds the rows the statement
// changed to that transaction's tick (keyed by its xid, committed with
// it); ticks travel like any entity and a source transaction is applied
// whole, so the mirrored ticks count the changes applied. Writes of a
// sink (under a replication origin) are not counted: they are not made by
// that system's application.
const soakTicksMapping = `
  - name: soak_crm_tick
    key: tx
    fields:
      - {name: tx,      type: integer, owner: crm}
      - {name: changes, type: integer, owner: crm}
    systems:
      crm:
        table: public.soak_crm_ticks
        key_column: tx
        columns: {tx: {column: tx}, changes: {column: changes}}
      erp:
        table: public.soak_crm_ticks
        key_column: tx
        columns: {tx: {column: tx}, changes: {column: changes}}
  - name: soak_erp_tick
    key: tx
    fields:
      - {name: tx,      type: integer, owner: erp}
      - {name: changes, type: integer, owner: erp}
    systems:
      erp:
        table: public.soak_erp_ticks
        key_column: tx
        columns: {tx: {column: tx}, changes: {column: changes}}
      crm:
        table: public.soak_erp_ticks
        key_column: tx
        columns: {tx: {column: tx}, changes: {column: changes}}
`

func soakTicksSQL(ticks string, tables []string) string {
	var b strings.Builder
	b.WriteString(`CREATE TABLE soak_crm_ticks (tx bigint PRIMARY KEY, changes bigint NOT NULL);
CREATE TABLE soak_erp_ticks (tx bigint PRIMARY KEY, changes bigint NOT NULL);
CREATE FUNCTION soak_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
	IF pg_replication_origin_session_is_setup() THEN
		RETURN NULL;
	END IF;
	IF TG_OP = 'DELETE' THEN
		SELECT count(*) INTO n FROM old_rows;
	ELSE
		SELECT count(*) INTO n FROM new_rows;
	END IF;
	IF n > 0 THEN
		INSERT INTO ` + ticks + ` VALUES (txid_current(), n) ON CONFLICT (tx) DO UPDATE SET changes = ` + ticks + `.changes + excluded.changes;
	END IF;
	RETURN NULL;
END $$;
`)
	for _, t := range tables {
		fmt.Fprintf(&b, "CREATE TRIGGER soak_ins AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION soak_count();\n", t)
		fmt.Fprintf(&b, "CREATE TRIGGER soak_upd AFTER UPDATE ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION soak_count();\n", t)
		fmt.Fprintf(&b, "CREATE TRIGGER soak_del AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION soak_count();\n", t)
	}
	return b.String()
}

// fault is a kind of fault: inject causes it, ends it (returning when the
// fault condition ended) and performs what an operator would to recover.
type fault struct {
	kind   string
	inject func(s *soak, ctx context.Context) (ended time.Time, detail string, err error)
}

var soakFaults = []fault{
	{"kill-active", (*soak).killActive},
	{"extra-duplex", (*soak).extraDuplex},
	{"standby-promoted", (*soak).promoteStandby},
	{"crm-restart-fast", func(s *soak, ctx context.Context) (time.Time, string, error) { return s.restartCRM(ctx, false) }},
	{"crm-restart-immediate", func(s *soak, ctx context.Context) (time.Time, string, error) { return s.restartCRM(ctx, true) }},
	{"erp-stopped", (*soak).stopERP},
	{"nats-restart", (*soak).restartNATS},
	{"walsender-terminated", (*soak).terminateWalsender},
	{"sink-session-terminated", (*soak).terminateSink},
	{"target-table-locked", (*soak).lockTable},
	{"poison-row", (*soak).poisonRow},
	{"large-row", (*soak).largeRow},
	{"column-dropped", (*soak).dropColumn},
	{"slot-replaced", (*soak).replaceSlot},
}

// SoakFaultKinds lists the kinds of fault a soak injects.
func SoakFaultKinds() []string {
	out := make([]string, len(soakFaults))
	for i, f := range soakFaults {
		out[i] = f.kind
	}
	return out
}

type soak struct {
	o        SoakOptions
	env      *demo.Env
	cfgPath  string
	nats     *harness.NATSProcess
	rng      *rand.Rand
	procs    []*proc // the two duplex instances (one active, one standby)
	seq      int
	crm      *crmLoad
	t0       time.Time
	poisons  map[string]bool // account ids of injected poisons
	backfill int64           // changes made while the slot was lost
	probes   int
}

// Soak runs the two-way order-to-cash workload against two duplex
// processes (one active, one standby) and a nats-server process, injects
// every kind of fault at least once at seeded random moments, and checks
// at the end that both systems agree, that every change made was applied
// or dead-lettered, and that every dead letter is an injected poison.
func Soak(ctx context.Context, o SoakOptions) (*SoakResult, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Rate <= 0 {
		o.Rate = DefaultSoakRate
	}
	if o.ERPStop <= 0 {
		o.ERPStop = 30 * time.Second
	}
	if o.Lock <= 0 {
		o.Lock = 20 * time.Second
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 5 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Exe = exe
	}
	known := map[string]bool{}
	for _, k := range SoakFaultKinds() {
		known[k] = true
	}
	for _, k := range o.Faults {
		if !known[k] {
			return nil, fmt.Errorf("soak: no fault %q (kinds: %s)", k, strings.Join(SoakFaultKinds(), ", "))
		}
	}
	if o.LogDir == "" {
		dir, err := os.MkdirTemp("", "duplex-soak-")
		if err != nil {
			return nil, fmt.Errorf("soak: log dir: %w", err)
		}
		o.LogDir = dir
	}
	out := o.Out
	fmt.Fprintf(out, "soak: seed %d, %s of two-way order-to-cash traffic at %d CRM row changes/s; logs in %s\n", o.Seed, o.Duration, o.Rate, o.LogDir)
	began := time.Now()
	env, err := demo.NewEnv(ctx, o.Logger)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	s := &soak{o: o, env: env, rng: rand.New(rand.NewPCG(o.Seed, o.Seed^0x2545f4914f6cdd1d)), poisons: map[string]bool{}}
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	defer s.stopAll()
	res := &SoakResult{Seed: o.Seed, Setup: time.Since(began)}
	fmt.Fprintf(out, "  set up in %s: CRM and ERP clusters, nats-server (pid %d), duplex active and standby\n", res.Setup.Round(time.Millisecond), s.nats.Pid())

	// The workload: the CRM at the rate, the ERP's own application.
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	s.crm = &crmLoad{dsn: env.CRM.DSN("crm"), rate: o.Rate, seed: o.Seed}
	erpL := &erpLoad{dsn: env.ERP.DSN("erp"), seed: o.Seed}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.crm.run(lctx) }()
	go func() { defer wg.Done(); erpL.run(lctx) }()
	stopped := false
	stopWorkload := func() {
		if !stopped {
			stopped = true
			stopLoad()
			wg.Wait()
		}
	}
	defer stopWorkload()
	s.t0 = time.Now()

	plan := s.plan()
	for i, p := range plan {
		if w := time.Until(s.t0.Add(p.at)); w > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(w):
			}
		}
		at := time.Since(s.t0)
		fmt.Fprintf(out, "[%8s] fault %d/%d %s …\n", at.Round(time.Second), i+1, len(plan), p.f.kind)
		injected := time.Now()
		ended, detail, err := p.f.inject(s, ctx)
		if err != nil {
			return nil, fmt.Errorf("soak: fault %s at %s: %w%s", p.f.kind, at.Round(time.Second), err, s.logHints())
		}
		if err := s.probe(ctx, 5*time.Minute); err != nil {
			return nil, fmt.Errorf("soak: no recovery after %s at %s: %w%s", p.f.kind, at.Round(time.Second), err, s.logHints())
		}
		rec := FaultRecord{Kind: p.f.kind, At: at, Lasted: ended.Sub(injected), Recovered: time.Since(ended), Detail: detail}
		res.Faults = append(res.Faults, rec)
		fmt.Fprintf(out, "[%8s]   %s; lasted %s, recovered %s after; %d CRM row changes so far\n", time.Since(s.t0).Round(time.Second), detail,
			rec.Lasted.Round(100*time.Millisecond), rec.Recovered.Round(100*time.Millisecond), s.crm.rows.Load())
	}
	if w := time.Until(s.t0.Add(o.Duration)); w > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(w):
		}
	}
	stopWorkload()
	res.Took = time.Since(s.t0)
	res.WorkloadErrors = s.crm.errs.Load() + erpL.errs.Load()
	fmt.Fprintf(out, "[%8s] workload stopped: %d CRM row changes committed (client count), %d ERP operations, %d failed attempts during faults; waiting for both systems to agree …\n",
		res.Took.Round(time.Second), s.crm.rows.Load(), erpL.ops.Load(), res.WorkloadErrors)
	return res, s.finish(ctx, res)
}

// kinds are the kinds of fault the soak injects.
func (s *soak) kinds() []fault {
	if len(s.o.Faults) == 0 {
		return soakFaults
	}
	var out []fault
	for _, f := range soakFaults {
		for _, k := range s.o.Faults {
			if k == f.kind {
				out = append(out, f)
			}
		}
	}
	return out
}

type planned struct {
	f  fault
	at time.Duration
}

// plan is every kind of fault once, then more at random, one a minute,
// at random moments of the run, in a seeded random order.
func (s *soak) plan() []planned {
	kinds := s.kinds()
	n := max(len(kinds), int(s.o.Duration/time.Minute))
	fs := make([]fault, 0, n)
	for _, i := range s.rng.Perm(len(kinds)) {
		fs = append(fs, kinds[i])
	}
	for len(fs) < n {
		fs = append(fs, kinds[s.rng.IntN(len(kinds))])
	}
	lo, hi := min(10*time.Second, s.o.Duration/10), s.o.Duration*9/10
	ats := make([]time.Duration, n)
	for i := range ats {
		ats[i] = lo + time.Duration(s.rng.Int64N(int64(max(hi-lo, 1))))
	}
	sort.Slice(ats, func(i, j int) bool { return ats[i] < ats[j] })
	out := make([]planned, n)
	for i := range out {
		out[i] = planned{f: fs[i], at: ats[i]}
	}
	return out
}

// setup adds the counting ticks, starts nats-server and two duplex
// processes, and waits until one is active and the other standing by.
func (s *soak) setup(ctx context.Context) error {
	env := s.env
	mpath := filepath.Join(env.Dir, "mapping.yaml")
	mb, err := os.ReadFile(mpath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(mpath, append(mb, soakTicksMapping...), 0o644); err != nil {
		return err
	}
	if env.Mapping, err = transform.Load(mpath); err != nil {
		return err
	}
	var crmTables, erpTables []string
	for _, e := range env.Mapping.Entities {
		if strings.HasPrefix(e.Name, "soak_") {
			continue
		}
		for sys, tm := range e.Tables {
			if sys == "crm" {
				crmTables = append(crmTables, tm.QualifiedTable())
			} else {
				erpTables = append(erpTables, tm.QualifiedTable())
			}
		}
	}
	if err := env.CRM.Exec(ctx, "crm", soakTicksSQL("soak_crm_ticks", crmTables)); err != nil {
		return fmt.Errorf("soak: counting triggers: %w", err)
	}
	if err := env.ERP.Exec(ctx, "erp", soakTicksSQL("soak_erp_ticks", erpTables)); err != nil {
		return fmt.Errorf("soak: counting triggers: %w", err)
	}
	s.cfgPath = env.URLConfigPath
	cb, err := os.ReadFile(s.cfgPath)
	if err != nil {
		return err
	}
	cb = append(cb, fmt.Sprintf("\nha:\n  lease_ttl: %s\n", s.o.LeaseTTL)...)
	if err := os.WriteFile(s.cfgPath, cb, 0o644); err != nil {
		return err
	}
	s.nats, err = harness.StartNATSProcess(ctx, harness.NATSProcessOptions{StoreDir: filepath.Join(env.Dir, "nats"), LogPath: filepath.Join(s.o.LogDir, "nats-server.log")})
	if err != nil {
		return err
	}
	a, err := s.start()
	if err != nil {
		return err
	}
	if err := s.waitRole(a, "active", 2*time.Minute); err != nil {
		return err
	}
	b, err := s.start()
	if err != nil {
		return err
	}
	if err := s.waitRole(b, "standby", time.Minute); err != nil {
		return err
	}
	return s.probe(ctx, 2*time.Minute)
}

// stopAll stops the duplex processes and nats-server.
func (s *soak) stopAll() {
	for _, p := range s.procs {
		p.stop()
	}
	s.procs = nil
	if s.nats != nil {
		s.nats.Close()
	}
}

// logHints names the logs to read when the soak fails.
func (s *soak) logHints() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nlogs: %s", s.o.LogDir)
	for _, p := range s.procs {
		fmt.Fprintf(&b, "\n%s (%s) log tail:\n%s", p.name, p.logPath, fileTail(p.logPath, 15))
	}
	return b.String()
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// soakHTTP asks the duplex processes for status, without keeping
// connections open.
var soakHTTP = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// proc is a duplex process.
type proc struct {
	name, listen, logPath string
	dataDir               string // where it keeps its listener's token
	cmd                   *exec.Cmd
	lf                    *os.File
	done                  chan struct{} // closed when it exited
}

// start runs another `duplex run` with the soak's configuration.
func (s *soak) start() (*proc, error) {
	s.seq++
	p, err := s.spawn(fmt.Sprintf("duplex-%d", s.seq))
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

func (s *soak) childEnv() []string {
	return append(append(os.Environ(), s.o.ExtraEnv...), "CRM_DSN="+s.env.CRM.DSN("crm"), "ERP_DSN="+s.env.ERP.DSN("erp"), "NATS_URL="+s.nats.URL())
}

func (s *soak) spawn(name string) (*proc, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, listen: fmt.Sprintf("127.0.0.1:%d", port), logPath: filepath.Join(s.o.LogDir, name+".log"), dataDir: filepath.Join(s.env.Dir, name),
		done: make(chan struct{})}
	if p.lf, err = os.Create(p.logPath); err != nil {
		return nil, err
	}
	p.cmd = exec.Command(s.o.Exe, "run", "--config", s.cfgPath, "--data-dir", p.dataDir, "--log-level", "info", "--listen", p.listen)
	p.cmd.Env = s.childEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.lf, p.lf
	if err := p.cmd.Start(); err != nil {
		p.lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		defer close(p.done)
		_ = p.cmd.Wait()
	}()
	return p, nil
}

// signal sends sig and waits for the process to exit (SIGKILL after a
// minute).
func (p *proc) signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.lf.Close()
}

func (p *proc) stop() { p.signal(syscall.SIGTERM) }
func (p *proc) kill() { p.signal(syscall.SIGKILL) }

// drop forgets an instance that was stopped.
func (s *soak) drop(p *proc) {
	for i, q := range s.procs {
		if q == p {
			s.procs = append(s.procs[:i], s.procs[i+1:]...)
			return
		}
	}
}

func (p *proc) status() (*app.Status, bool) {
	tok, err := ops.ResolveToken(config.HTTP{}, p.dataDir, false)
	if err != nil || tok.Value == "" {
		return nil, false // not written yet
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+p.listen+"/api/status", nil)
	if err != nil {
		return nil, false
	}
	req.Header.Set("Authorization", "Bearer "+tok.Value)
	resp, err := soakHTTP.Do(req)
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

func (p *proc) readyz() (int, string) {
	resp, err := soakHTTP.Get("http://" + p.listen + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *soak) waitRole(p *proc, role string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no status"
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while waiting to be %s:\n%s", p.name, role, fileTail(p.logPath, 20))
		default:
		}
		if st, ok := p.status(); ok {
			if st.Role == role {
				return nil
			}
			last = st.Role
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s is %s, not %s, after %s", p.name, last, role, timeout)
}

// active finds the active instance.
func (s *soak) active(timeout time.Duration) (*proc, error) {
	deadline := time.Now().Add(timeout)
	roles := map[string]string{}
	for time.Now().Before(deadline) {
		for _, p := range s.procs {
			st, ok := p.status()
			if !ok {
				roles[p.name] = "no status"
				continue
			}
			if st.Role == "active" {
				return p, nil
			}
			roles[p.name] = st.Role
		}
		time.Sleep(100 * time.Millisecond)
	}
	var seen []string
	for _, p := range s.procs {
		seen = append(seen, fmt.Sprintf("%s %s", p.name, roles[p.name]))
	}
	return nil, fmt.Errorf("no active duplex instance within %s (%s)", timeout, strings.Join(seen, ", "))
}

// other is the instance that is not p.
func (s *soak) other(p *proc) *proc {
	for _, q := range s.procs {
		if q != p {
			return q
		}
	}
	return nil
}

// replace takes over from a stopped active instance: the other one becomes
// active, and a new standby is started.
func (s *soak) replace(old *proc) error {
	s.drop(old)
	next := s.other(nil)
	if next == nil {
		return errors.New("no standby left")
	}
	if err := s.waitRole(next, "active", s.o.LeaseTTL+time.Minute); err != nil {
		return err
	}
	p, err := s.start()
	if err != nil {
		return err
	}
	return s.waitRole(p, "standby", time.Minute)
}

// restartBoth stops both instances and starts two new ones.
func (s *soak) stopBoth() {
	for _, p := range s.procs {
		p.stop()
	}
	s.procs = nil
}

func (s *soak) startBoth() error {
	a, err := s.start()
	if err != nil {
		return err
	}
	if err := s.waitRole(a, "active", s.o.LeaseTTL+time.Minute); err != nil {
		return err
	}
	b, err := s.start()
	if err != nil {
		return err
	}
	return s.waitRole(b, "standby", time.Minute)
}

func (s *soak) killActive(ctx context.Context) (time.Time, string, error) {
	a, err := s.active(time.Minute)
	if err != nil {
		return time.Time{}, "", err
	}
	a.kill()
	ended := time.Now()
	if err := s.replace(a); err != nil {
		return ended, "", err
	}
	return ended, fmt.Sprintf("SIGKILL %s (active); %s took over", a.name, s.procs[0].name), nil
}

func (s *soak) extraDuplex(ctx context.Context) (time.Time, string, error) {
	s.seq++
	p, err := s.spawn(fmt.Sprintf("duplex-%d-extra", s.seq))
	if err != nil {
		return time.Time{}, "", err
	}
	if err := s.waitRole(p, "standby", time.Minute); err != nil {
		p.kill()
		return time.Time{}, "", err
	}
	p.kill()
	return time.Now(), fmt.Sprintf("%s started as a third instance, stood by, SIGKILLed", p.name), nil
}

func (s *soak) promoteStandby(ctx context.Context) (time.Time, string, error) {
	a, err := s.active(time.Minute)
	if err != nil {
		return time.Time{}, "", err
	}
	a.stop()
	ended := time.Now()
	if err := s.replace(a); err != nil {
		return ended, "", err
	}
	return ended, fmt.Sprintf("%s (active) stopped with SIGTERM; standby %s promoted", a.name, s.procs[0].name), nil
}

func (s *soak) restartCRM(ctx context.Context, immediate bool) (time.Time, string, error) {
	mode, stop := "fast", s.env.CRM.Stop
	if immediate {
		mode, stop = "immediate", s.env.CRM.Kill
	}
	if err := stop(ctx); err != nil {
		return time.Time{}, "", err
	}
	if err := s.env.CRM.Start(ctx); err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), "CRM PostgreSQL stopped (" + mode + ") and started", nil
}

func (s *soak) stopERP(ctx context.Context) (time.Time, string, error) {
	if err := s.env.ERP.Stop(ctx); err != nil {
		return time.Time{}, "", err
	}
	time.Sleep(s.o.ERPStop)
	if err := s.env.ERP.Start(ctx); err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), fmt.Sprintf("ERP PostgreSQL stopped for %s", s.o.ERPStop), nil
}

func (s *soak) restartNATS(ctx context.Context) (time.Time, string, error) {
	old := s.nats.Pid()
	s.nats.Stop()
	if err := s.nats.Start(ctx); err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), fmt.Sprintf("nats-server restarted (pid %d → %d), store kept", old, s.nats.Pid()), nil
}

// terminate ends the backends a query selects, waiting up to a minute for
// one to exist (a session being re-established).
func (s *soak) terminate(ctx context.Context, c *harness.Cluster, db, where string) (int, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		err := withConn(ctx, c.DSN(db), func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE `+where).Scan(&n)
		})
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return n, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no backend where %s", where)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *soak) terminateWalsender(ctx context.Context) (time.Time, string, error) {
	n, err := s.terminate(ctx, s.env.CRM, "crm", `backend_type = 'walsender' AND application_name = 'duplex-crm'`)
	if err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), fmt.Sprintf("pg_terminate_backend of the CRM walsender (%d)", n), nil
}

func (s *soak) terminateSink(ctx context.Context) (time.Time, string, error) {
	n, err := s.terminate(ctx, s.env.ERP, "erp", `backend_type = 'client backend' AND application_name = 'duplex-to-erp'`)
	if err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), fmt.Sprintf("pg_terminate_backend of the to-erp sink's ERP sessions (%d)", n), nil
}

func (s *soak) lockTable(ctx context.Context) (time.Time, string, error) {
	table := []string{"customers", "sales_orders", "sales_order_lines"}[s.rng.IntN(3)]
	err := withConn(ctx, s.env.ERP.DSN("erp"), func(conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
				return err
			}
			time.Sleep(s.o.Lock)
			return nil
		})
	})
	if err != nil {
		return time.Time{}, "", fmt.Errorf("lock %s: %w", table, err)
	}
	return time.Now(), fmt.Sprintf("ERP %s locked (ACCESS EXCLUSIVE) for %s", table, s.o.Lock), nil
}

// poisonRow inserts a JPY account with a credit limit in decimals: the ERP
// keeps minor units, JPY has none, so the event is dead-lettered. Once it
// is, the soak corrects the amount in the CRM (as an operator would), and
// the corrected account arrives.
func (s *soak) poisonRow(ctx context.Context) (time.Time, string, error) {
	id := uuid.New()
	err := withConn(ctx, s.env.CRM.DSN("crm"), func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `INSERT INTO accounts (id, name, country, currency, credit_limit) VALUES ($1, 'soak poison', 'JP', 'JPY', 1000.50)`, id)
		return err
	})
	if err != nil {
		return time.Time{}, "", err
	}
	s.poisons[id.String()] = true
	deadline := time.Now().Add(3 * time.Minute)
	for {
		dls, err := s.deadLetters(ctx)
		if err != nil {
			return time.Time{}, "", err
		}
		found := false
		for _, d := range dls {
			found = found || d.Key == id.String()
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			return time.Time{}, "", fmt.Errorf("poison account %s not dead-lettered within 3m", id)
		}
		time.Sleep(250 * time.Millisecond)
	}
	ended := time.Now()
	err = withConn(ctx, s.env.CRM.DSN("crm"), func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `UPDATE accounts SET credit_limit = 1000 WHERE id = $1`, id)
		return err
	})
	if err != nil {
		return ended, "", err
	}
	if err := s.waitQuery(ctx, s.env.ERP.DSN("erp"), 3*time.Minute, `SELECT count(*) = 1 FROM customers WHERE crm_account_id = $1 AND credit_limit_minor = 1000`, id); err != nil {
		return ended, "", fmt.Errorf("corrected poison account %s: %w", id, err)
	}
	return ended, fmt.Sprintf("JPY 1000.50 account %s dead-lettered, corrected to 1000, arrived", id), nil
}

func (s *soak) largeRow(ctx context.Context) (time.Time, string, error) {
	id := uuid.New()
	const size = 12 << 20
	err := withConn(ctx, s.env.CRM.DSN("crm"), func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `INSERT INTO accounts (id, name, country, currency, credit_limit)
			SELECT $1, string_agg(md5(g::text || random()::text), ''), 'DE', 'EUR', 1 FROM generate_series(1, $2::int / 32) g`, id, size)
		return err
	})
	if err != nil {
		return time.Time{}, "", err
	}
	ended := time.Now()
	if err := s.waitQuery(ctx, s.env.ERP.DSN("erp"), 5*time.Minute, `SELECT count(*) = 1 FROM customers WHERE crm_account_id = $1 AND length(name) = $2`, id, size); err != nil {
		return ended, "", fmt.Errorf("12 MiB account %s: %w", id, err)
	}
	return ended, fmt.Sprintf("account %s with a 12 MiB name committed and arrived after %s", id, time.Since(ended).Round(100*time.Millisecond)), nil
}

// dropColumn drops the mapped column accounts.country (its values kept
// aside), waits until duplex holds the customer entity, adds the column
// back with its values and restarts duplex, which releases the hold.
func (s *soak) dropColumn(ctx context.Context) (time.Time, string, error) {
	crm := s.env.CRM.DSN("crm")
	err := withConn(ctx, crm, func(conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;
				CREATE TABLE soak_country AS SELECT id, country FROM accounts;
				ALTER TABLE accounts DROP COLUMN country`)
			return err
		})
	})
	if err != nil {
		return time.Time{}, "", fmt.Errorf("drop accounts.country: %w", err)
	}
	injected := time.Now()
	// An account changed now is held (the workload updates some).
	heldErr := s.waitQuery(ctx, crm, 2*time.Minute, `SELECT count(*) > 0 FROM duplex.held WHERE entity = 'customer'`)
	heldAfter := time.Since(injected)
	err = withConn(ctx, crm, func(conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `ALTER TABLE accounts ADD COLUMN country char(2);
				UPDATE accounts a SET country = k.country FROM soak_country k WHERE a.id = k.id AND k.country IS NOT NULL;
				DROP TABLE soak_country`)
			return err
		})
	})
	if err != nil {
		return time.Time{}, "", fmt.Errorf("restore accounts.country: %w", err)
	}
	ended := time.Now()
	if heldErr != nil {
		return ended, "", fmt.Errorf("the customer entity was not held: %w", heldErr)
	}
	s.stopBoth()
	if err := s.startBoth(); err != nil {
		return ended, "", err
	}
	if err := s.waitQuery(ctx, crm, 3*time.Minute, `SELECT count(*) = 0 FROM duplex.held`); err != nil {
		return ended, "", fmt.Errorf("the hold was not released: %w", err)
	}
	return ended, fmt.Sprintf("accounts.country dropped, customer held after %s, column restored, duplex restarted, hold released after %s",
		heldAfter.Round(100*time.Millisecond), time.Since(ended).Round(100*time.Millisecond)), nil
}

// replaceSlot stops duplex, drops the CRM slot and, after a few changes
// that the new slot will never see, creates it again; duplex must refuse
// to stream from it; `duplex resync --flow to-erp` backfills the CRM's
// tables, and duplex, restarted, carries the lost changes.
func (s *soak) replaceSlot(ctx context.Context) (time.Time, string, error) {
	crm := s.env.CRM.DSN("crm")
	slot := s.env.Config.Systems["crm"].Slot
	// The CRM workload pauses until the backfill is done, and duplex
	// stops only once its slot confirmed everything the workload
	// committed: the soak's own changes are the only ones the slot loses.
	// (With the workload going on, live changes referring to rows lost
	// with the slot reach the flow before the backfill copies those rows,
	// wait for them in front of the copy and are dead-lettered; a delete
	// lost with the slot is lost for good, since a backfill carries none.)
	// A shared field written by a lost change keeps an ERP write of it
	// waiting in to-crm until the backfill copies its row (the copy
	// records its version).
	s.crm.pause()
	paused := true
	defer func() {
		if paused {
			s.crm.resume()
		}
	}()
	var pausedAt string
	if err := withConn(ctx, crm, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&pausedAt)
	}); err != nil {
		return time.Time{}, "", fmt.Errorf("replace slot %s: %w", slot, err)
	}
	if err := s.waitQuery(ctx, crm, 5*time.Minute, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`, slot, pausedAt); err != nil {
		return time.Time{}, "", fmt.Errorf("replace slot %s: the workload's changes were not confirmed before the slot is dropped: %w", slot, err)
	}
	s.stopBoth()
	var before, after int64
	err := withConn(ctx, crm, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return err
		}
		if err := conn.QueryRow(ctx, `SELECT txid_current()`).Scan(&before); err != nil {
			return err
		}
		// The changes the slot loses: new accounts, and renamed earlier
		// probes (updates); no deletes (a backfill does not carry them).
		for i := range 10 {
			if _, err := conn.Exec(ctx, `INSERT INTO accounts (id, name, country, currency, credit_limit) VALUES ($1, $2, 'DE', 'EUR', 10)`,
				uuid.New(), fmt.Sprintf("lost with the slot %d", i)); err != nil {
				return err
			}
		}
		if _, err := conn.Exec(ctx, `UPDATE accounts SET name = name || ' (renamed while the slot was lost)' WHERE name LIKE 'soak probe%' AND id IN (SELECT id FROM accounts WHERE name LIKE 'soak probe%' ORDER BY name LIMIT 5)`); err != nil {
			return err
		}
		if err := conn.QueryRow(ctx, `SELECT txid_current()`).Scan(&after); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
			return err
		}
		var lost int64
		if err := conn.QueryRow(ctx, `SELECT coalesce(sum(changes), 0) FROM soak_crm_ticks WHERE tx > $1 AND tx < $2`, before, after).Scan(&lost); err != nil {
			return err
		}
		s.backfill += lost
		return nil
	})
	if err != nil {
		return time.Time{}, "", fmt.Errorf("replace slot %s: %w", slot, err)
	}
	ended := time.Now()
	// duplex refuses the replaced slot.
	p, err := s.start()
	if err != nil {
		return ended, "", err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		code, body := p.readyz()
		if code == http.StatusServiceUnavailable && strings.Contains(body, "dropped and created again") {
			break
		}
		if time.Now().After(deadline) {
			return ended, "", fmt.Errorf("duplex did not refuse the replaced slot: /readyz %d %s", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	refused := time.Since(ended)
	s.stopBoth()
	cmd := exec.CommandContext(ctx, s.o.Exe, "resync", "--config", s.cfgPath, "--flow", "to-erp")
	cmd.Env = s.childEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return ended, "", fmt.Errorf("duplex resync: %w\n%s", err, out.String())
	}
	if err := s.startBoth(); err != nil {
		return ended, "", err
	}
	if err := s.waitQuery(ctx, crm, 10*time.Minute, `SELECT count(*) FILTER (WHERE status = 'failed') = 0 AND count(*) FILTER (WHERE status <> 'done') = 0 FROM duplex.backfills`); err != nil {
		return ended, "", fmt.Errorf("backfills after resync: %w", err)
	}
	paused = false
	s.crm.resume()
	return ended, fmt.Sprintf("slot %s dropped, %d changes made, slot created again; duplex refused it after %s; resync, backfill done after %s",
		slot, s.backfillSince(before, after), refused.Round(100*time.Millisecond), time.Since(ended).Round(100*time.Millisecond)), nil
}

func (s *soak) backfillSince(before, after int64) int64 {
	var n int64
	_ = withConn(context.Background(), s.env.CRM.DSN("crm"), func(conn *pgx.Conn) error {
		return conn.QueryRow(context.Background(), `SELECT coalesce(sum(changes), 0) FROM soak_crm_ticks WHERE tx > $1 AND tx < $2`, before, after).Scan(&n)
	})
	return n
}

// probe inserts an account into the CRM and waits until the ERP numbered
// it and its number came back: a change made now went both ways.
func (s *soak) probe(ctx context.Context, timeout time.Duration) error {
	s.probes++
	id := uuid.New()
	deadline := time.Now().Add(timeout)
	for {
		err := withConn(ctx, s.env.CRM.DSN("crm"), func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, `INSERT INTO accounts (id, name, country, currency, credit_limit) VALUES ($1, $2, 'DE', 'EUR', 1)`, id, fmt.Sprintf("soak probe %04d", s.probes))
			return err
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probe: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s.waitQuery(ctx, s.env.CRM.DSN("crm"), time.Until(deadline), `SELECT count(*) = 1 FROM accounts WHERE id = $1 AND erp_customer_no IS NOT NULL`, id)
}

// waitQuery waits until a query returns true, across connection losses.
func (s *soak) waitQuery(ctx context.Context, dsn string, timeout time.Duration, q string, args ...any) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		var ok bool
		err := withConn(ctx, dsn, func(conn *pgx.Conn) error { return conn.QueryRow(ctx, q, args...).Scan(&ok) })
		if err == nil && ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("not true within %s: %s (last error: %w)", timeout, q, last)
			}
			return fmt.Errorf("not true within %s: %s", timeout, q)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// withConn runs f on a new connection.
func withConn(ctx context.Context, dsn string, f func(*pgx.Conn) error) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, dsn+"&application_name=duplex-soak")
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

// deadLetters reads every dead letter from the nats-server.
func (s *soak) deadLetters(ctx context.Context) ([]pipeline.StoredDeadLetter, error) {
	nc, err := nats.Connect(s.nats.URL(), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return pipeline.ListDeadLetters(cctx, js, "", 0)
}

// finish waits until both systems agree, counts the changes made, applied
// and dead-lettered, runs duplex verify, and prints the fault table.
func (s *soak) finish(ctx context.Context, res *SoakResult) error {
	out := s.o.Out
	t := time.Now()
	var both *demo.Both
	var err error
	deadline := time.Now().Add(10 * time.Minute)
	for {
		both, err = s.env.CompareBoth(ctx)
		if err == nil && both.Equal() {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("soak: compare: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("soak: compare: %w", err)
			}
			return fmt.Errorf("soak: the systems still differ 10m after the workload stopped:\n%s%s", both, s.logHints())
		}
		time.Sleep(2 * time.Second)
	}
	res.Converged = time.Since(t)
	fmt.Fprintf(out, "  both systems agree %s after the workload stopped\n", res.Converged.Round(100*time.Millisecond))

	var problems []string
	ticks := func(c *harness.Cluster, db, table string) (txs, changes int64, err error) {
		err = withConn(ctx, c.DSN(db), func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT count(*), coalesce(sum(changes), 0) FROM `+table).Scan(&txs, &changes)
		})
		return txs, changes, err
	}
	crmTxs, crmMade, err1 := ticks(s.env.CRM, "crm", "soak_crm_ticks")
	erpGotTxs, erpGot, err2 := ticks(s.env.ERP, "erp", "soak_crm_ticks")
	erpTxs, erpMade, err3 := ticks(s.env.ERP, "erp", "soak_erp_ticks")
	crmGotTxs, crmGot, err4 := ticks(s.env.CRM, "crm", "soak_erp_ticks")
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return fmt.Errorf("soak: count changes: %w", err)
	}
	dls, err := s.deadLetters(ctx)
	if err != nil {
		return err
	}
	seen := map[string]int{}
	for _, d := range dls {
		if d.Flow == "to-erp" && d.Entity == "customer" && s.poisons[d.Key] {
			seen[d.Key]++
			res.CRMDeadLettered++
			continue
		}
		if d.Flow == "to-crm" {
			res.ERPDeadLettered++
		} else {
			res.CRMDeadLettered++
		}
		problems = append(problems, fmt.Sprintf("dead letter no poison accounts for: flow %s stage %s %s %s: %s", d.Flow, d.Stage, d.Entity, d.Key, d.Error))
	}
	for k := range s.poisons {
		if seen[k] != 1 {
			problems = append(problems, fmt.Sprintf("poison account %s: %d dead letters, want 1", k, seen[k]))
		}
	}
	res.CRMTxs, res.ERPTxs = crmTxs, erpTxs
	res.CRMMade, res.ERPMade = crmMade, erpMade
	res.CRMApplied, res.ERPApplied = erpGot-res.CRMDeadLettered, crmGot-res.ERPDeadLettered
	res.CRMBackfilled = s.backfill
	if crmGotTxs != erpTxs || crmGot != erpMade {
		problems = append(problems, fmt.Sprintf("ERP → CRM: %d transactions (%d changes) made, %d (%d) arrived", erpTxs, erpMade, crmGotTxs, crmGot))
	}
	if erpGotTxs != crmTxs || erpGot != crmMade {
		problems = append(problems, fmt.Sprintf("CRM → ERP: %d transactions (%d changes) made, %d (%d) arrived", crmTxs, crmMade, erpGotTxs, erpGot))
	}
	if res.CRMApplied+res.CRMDeadLettered != res.CRMMade || res.ERPApplied+res.ERPDeadLettered != res.ERPMade {
		problems = append(problems, "changes made ≠ applied + dead-lettered")
	}
	if s.o.Duration >= 30*time.Minute && crmMade+erpMade < SoakTarget {
		problems = append(problems, fmt.Sprintf("only %d row changes made in %s, want at least %d", crmMade+erpMade, s.o.Duration, SoakTarget))
	}

	// duplex verify, as an operator runs it.
	cmd := exec.CommandContext(ctx, s.o.Exe, "verify", "--config", s.cfgPath)
	cmd.Env = s.childEnv()
	var vout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &vout, &vout
	verr := cmd.Run()
	if verr != nil {
		problems = append(problems, fmt.Sprintf("duplex verify: %s\n%s", verr.Error(), vout.String()))
	}

	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row changes\tmade\tapplied\tdead-lettered\tof which recovered by backfill\ttransactions\t")
	fmt.Fprintf(tw, "CRM → ERP\t%d\t%d\t%d\t%d\t%d\t\n", res.CRMMade, res.CRMApplied, res.CRMDeadLettered, res.CRMBackfilled, crmTxs)
	fmt.Fprintf(tw, "ERP → CRM\t%d\t%d\t%d\t%d\t%d\t\n", res.ERPMade, res.ERPApplied, res.ERPDeadLettered, 0, erpTxs)
	tw.Flush()
	fmt.Fprintf(out, "dead letters: %d, each an injected poison: %v; duplex verify: %s\n\n", len(dls), len(dls) == len(s.poisons) && len(seen) == len(s.poisons), verifyWord(verr))

	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tat\tfault\tlasted\trecovered\twhat")
	for i, f := range res.Faults {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", i+1, f.At.Round(time.Second), f.Kind, f.Lasted.Round(100*time.Millisecond), f.Recovered.Round(100*time.Millisecond), f.Detail)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "fault kind\tcount\tat\trecovery (max)")
	kinds := 0
	for _, kf := range s.kinds() {
		k := kf.kind
		var ats []string
		var worst time.Duration
		for _, f := range res.Faults {
			if f.Kind == k {
				ats = append(ats, f.At.Round(time.Second).String())
				worst = max(worst, f.Recovered)
			}
		}
		if len(ats) == 0 {
			problems = append(problems, "fault "+k+" was never injected")
			fmt.Fprintf(tw, "%s\t0\t-\t-\n", k)
			continue
		}
		kinds++
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", k, len(ats), strings.Join(ats, " "), worst.Round(100*time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintf(out, "%d faults of %d kinds in %s; seed %d\n", len(res.Faults), kinds, res.Took.Round(time.Second), res.Seed)
	if len(problems) > 0 {
		return fmt.Errorf("soak: it does not add up:\n  %s%s", strings.Join(problems, "\n  "), s.logHints())
	}
	fmt.Fprintln(out, "soak passed: both systems agree, every change made was applied or dead-lettered as a poison")
	return nil
}

func verifyWord(err error) string {
	if err != nil {
		return "differences"
	}
	return "agrees"
}

// crmLoad runs the CRM's order-to-cash traffic at a rate of row changes,
// reconnecting after faults; pause holds it between transactions.
type crmLoad struct {
	dsn  string
	rate int
	seed uint64
	gate sync.Mutex
	rows atomic.Int64
	errs atomic.Int64
}

func (l *crmLoad) pause()  { l.gate.Lock() }
func (l *crmLoad) resume() { l.gate.Unlock() }

func (l *crmLoad) run(ctx context.Context) {
	gen := workload.New(l.seed)
	gen.KeepOrders = true
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	start := time.Now()
	for ctx.Err() == nil {
		due := start.Add(time.Duration(float64(l.rows.Load()) / float64(l.rate) * float64(time.Second)))
		if w := time.Until(due); w > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(w):
			}
		}
		l.gate.Lock()
		var n int
		var err error
		if conn == nil {
			conn, err = pgx.Connect(ctx, l.dsn+"&application_name=duplex-soak")
		}
		if err == nil {
			n, err = gen.Step(ctx, conn)
		}
		l.gate.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.errs.Add(1)
			conn = dropBroken(ctx, conn, err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		l.rows.Add(int64(n))
	}
}

// dropBroken closes a connection after an error that did not come from
// the server (the connection is lost or in doubt) and returns nil, or
// returns the connection.
func dropBroken(ctx context.Context, conn *pgx.Conn, err error) *pgx.Conn {
	var pgErr *pgconn.PgError
	if conn == nil || conn.IsClosed() || !errors.As(err, &pgErr) {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
		return nil
	}
	return conn
}

// erpLoad runs the ERP's own application (invoices, payments, customer
// edits), reconnecting after faults.
type erpLoad struct {
	dsn  string
	seed uint64
	ops  atomic.Int64
	errs atomic.Int64
}

func (l *erpLoad) run(ctx context.Context) {
	sim := workload.NewERP(l.seed)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	for ctx.Err() == nil {
		var err error
		if conn == nil {
			conn, err = pgx.Connect(ctx, l.dsn+"&application_name=duplex-soak")
		}
		if err == nil {
			var n1, n2, n3 int
			n1, err = sim.InvoiceOpenOrders(ctx, conn, 20)
			if err == nil {
				n2, err = sim.PayInvoices(ctx, conn, 10)
			}
			if err == nil {
				n3, err = sim.EditCustomer(ctx, conn)
			}
			l.ops.Add(int64(n1 + n2 + n3))
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.errs.Add(1)
			conn = dropBroken(ctx, conn, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}
