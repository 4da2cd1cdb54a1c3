// Package app wires duplex together from a configuration: it checks the
// mapping against both databases, starts or connects to NATS, and runs one
// capture per source system and one applier per flow until stopped.
// Preflight refuses what does not fit; Warnings (warnings.go) reads what
// fits but an operator should know (generated keys in a system that does
// not own them, triggers on target tables), for duplex check and the log;
// TLSWarnings (app.go) names each system whose dsn is not verified TLS.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/internal/audit"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/pgcatalog"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/internal/pii"
	"github.com/duplex-cdc/duplex/internal/redact"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// Options configures an App.
type Options struct {
	Config *config.Config
	// DataDir holds the embedded NATS store.
	DataDir string
	Logger  *slog.Logger
	// OnApplied is called after each committed batch of a flow.
	OnApplied func(flow string, txs []*transform.Tx, committed time.Time)
	// OnBatch is called after each committed batch with its size and
	// apply time (metrics).
	OnBatch func(flow string, txs []*transform.Tx, events int, took time.Duration, committed time.Time)
	// Demo marks duplex demo's own throwaway clusters on this machine:
	// their plaintext connections are not warned about (TLSWarnings).
	Demo bool
}

// App is a running duplex.
type App struct {
	opts    Options
	log     *slog.Logger
	mapping *transform.Mapping
	// cipher seals and opens personal fields; fieldHash keys the hashes
	// of duplex.field_versions (pii.go).
	cipher    *pii.Cipher
	fieldHash *pgstate.FieldHasher
	bus       *Bus
	nc        *nats.Conn
	js        jetstream.JetStream
	// captureJS and flowJS are the connections of each capture and flow
	// (their own identities', or the operator's).
	captureJS map[string]jetstream.JetStream
	flowJS    map[string]jetstream.JetStream
	// signers sign each capture's messages; verifiers check them for the
	// flows from each source (signing.go).
	signers   map[string]*pipeline.Signer
	verifiers map[string]*pipeline.Verifier

	Sources map[string]*pgcapture.Source
	SrcStat map[string]*pipeline.SourceStats
	Flows   map[string]*pipeline.FlowStats
	sinks   []*pgsink.Sink
	slots   slotWatch
	started time.Time
	// retention removes from DUPLEX what every flow applied (Run runs it).
	retention *pipeline.Retention

	// runMu guards runners and run: Replay asks a flow of Run's group
	// while Run runs, never after Run stopped waiting.
	runMu   sync.Mutex
	runners map[string]*flowRunner
	run     *group

	// leases: which instance runs each flow and capture (lease.go).
	leases *leases

	// probes: the readiness checks of the databases (ready.go).
	probesMu sync.Mutex
	probes   map[string]*dbProbe
}

// Retention returns what the retention of DUPLEX last saw.
func (a *App) Retention() pipeline.RetentionCounts { return a.retention.Stats() }

// Started is when the App was started.
func (a *App) Started() time.Time { return a.started }

// NATSState says whether NATS is connected and how often it reconnected.
func (a *App) NATSState() (bool, uint64) { return a.nc.IsConnected(), a.nc.Stats().Reconnects }

// FlowNames lists the configured flows and the capture dead-letter
// queues ("capture-<source>").
func (a *App) FlowNames() []string {
	var out []string
	for _, f := range a.opts.Config.Flows {
		out = append(out, f.Name)
	}
	for _, s := range a.opts.Config.Sources() {
		out = append(out, "capture-"+s)
	}
	return out
}

// DeadLetterCounts counts the dead letters now in DUPLEX_DLQ by flow.
func (a *App) DeadLetterCounts(ctx context.Context) (map[string]uint64, error) {
	return pipeline.CountDeadLetters(ctx, a.js)
}

// Preflight checks the mapping against the catalogs of every configured
// system and returns every mismatch at once.
func Preflight(ctx context.Context, cfg *config.Config, m *transform.Mapping) error {
	_, _, err := preflight(ctx, cfg, m)
	return err
}

// PreflightReport is Preflight that also returns the warnings: what fits
// but will refuse some events (transform.Mapping.CheckReport), such as a
// target NOT NULL column that only inserts need.
func PreflightReport(ctx context.Context, cfg *config.Config, m *transform.Mapping) (warnings []string, err error) {
	cats, warnings, err := preflight(ctx, cfg, m)
	for _, name := range sortedSystems(cfg) {
		if r := cats[name]; r != nil && r.Role != nil && r.Role.Superuser {
			warnings = append(warnings, fmt.Sprintf("system %s: connected as superuser %s; %s", name, r.Role.Name, superuserAdvice))
		}
	}
	return warnings, err
}

// superuserAdvice says why a superuser is not wanted: what duplex needs is
// far less (examples/order-to-cash/*-role.sql), and a trigger of a table
// it writes, enabled for replicas, would run as superuser.
const superuserAdvice = "duplex needs far less (see examples/order-to-cash/crm-role.sql and erp-role.sql), and a trigger a table owner enabled for replicas runs with the applying role's power"

// warnSuperusers logs a warning for each system duplex connects to as a
// superuser.
func warnSuperusers(log *slog.Logger, cfg *config.Config, cats map[string]*transform.Catalog) {
	for _, name := range sortedSystems(cfg) {
		if c := cats[name]; c != nil && c.Role != nil && c.Role.Superuser {
			log.Warn("connected as a superuser; "+superuserAdvice, slog.String("system", name), slog.String("role", c.Role.Name))
		}
	}
}

// preflight is PreflightReport, also returning the catalogs it read by
// system.
func preflight(ctx context.Context, cfg *config.Config, m *transform.Mapping) (cats map[string]*transform.Catalog, warnings []string, err error) {
	if _, err := checkKeys(cfg, m); err != nil {
		return nil, nil, err
	}
	cats = map[string]*transform.Catalog{}
	var errs []error
	for _, name := range sortedSystems(cfg) {
		sys := cfg.Systems[name]
		isSource, isTarget := false, false
		for _, f := range cfg.Flows {
			isSource = isSource || f.From == name
			isTarget = isTarget || f.To == name
		}
		role := ""
		switch {
		case isSource && isTarget:
			role = "both"
		case isSource:
			role = "source"
		case isTarget:
			role = "target"
		}
		if role == "" {
			continue
		}
		if !slices.Contains(m.Systems, name) {
			errs = append(errs, fmt.Errorf("system %s is configured but not listed in the mapping's systems", name))
			continue
		}
		conn, err := pgx.Connect(ctx, sys.DSN)
		if err != nil {
			errs = append(errs, fmt.Errorf("system %s: connect: %w%s", name, err, certHint(err)))
			continue
		}
		// duplex's own schema: trusted and not newer than this duplex
		// (Ensure migrates it when a session starts).
		if err := pgstate.Verify(ctx, conn); err != nil {
			errs = append(errs, fmt.Errorf("system %s: %w", name, err))
		}
		if isTarget {
			if err := canApplyAsReplica(ctx, conn); err != nil {
				errs = append(errs, fmt.Errorf("system %s: %w", name, err))
			}
			for _, f := range cfg.Flows {
				if f.To != name {
					continue
				}
				if err := pgsink.CheckPrivileges(ctx, conn, m, name, f.From); err != nil {
					errs = append(errs, fmt.Errorf("system %s, flow %s: %w", name, f.Name, err))
				}
			}
		}
		if isSource {
			if err := pgcapture.CheckPrivileges(ctx, conn, name, sys.Publication, m.SourceTables(name)); err != nil {
				errs = append(errs, fmt.Errorf("system %s: %w", name, err))
			}
		}
		cat, err := pgcatalog.Read(ctx, conn, m.Tables(name))
		if err == nil && role != "source" {
			if derr := pgsink.CheckDefaults(ctx, conn, m, name, cat); derr != nil {
				errs = append(errs, derr)
			}
		}
		_ = conn.Close(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("system %s: %w", name, err))
			continue
		}
		warns, err := m.CheckReport(name, cat, role)
		if err != nil {
			errs = append(errs, err)
		}
		warnings = append(warnings, warns...)
		cats[name] = cat
	}
	if len(errs) > 0 {
		return nil, warnings, fmt.Errorf("the mapping does not fit the databases:\n%w", errors.Join(errs...))
	}
	return cats, warnings, nil
}

// snapshotOrder lists the tables a source publishes in the order its
// initial snapshot copies them: the write order of the first flow's
// target (transform.Mapping.WriteOrder: mapping refs and the target's
// foreign keys, parents first), so that a snapshot chunk of child rows
// never reaches the target before the parents it refers to.
func snapshotOrder(cfg *config.Config, m *transform.Mapping, source string, cats map[string]*transform.Catalog) []string {
	for _, f := range cfg.Flows {
		if f.From != source {
			continue
		}
		order, _, err := m.WriteOrder(f.To, cats[f.To], func(e *transform.Entity) bool { return e.Publishes(source) })
		if err != nil {
			break // refused by preflight already
		}
		var out []string
		for _, e := range order {
			if e.Publishes(source) {
				out = append(out, e.Tables[source].QualifiedTable())
			}
		}
		return out
	}
	return m.SourceTables(source)
}

// AuditReady makes sure DUPLEX_AUDIT exists, before an operator action
// asked of this instance runs (audit.Ready).
func (a *App) AuditReady(ctx context.Context) error {
	return audit.Ready(ctx, a.js, a.opts.Config.Stream.Replicas)
}

// Audit appends an operator action's record to DUPLEX_AUDIT as the
// operator identity and returns its sequence.
func (a *App) Audit(ctx context.Context, r audit.Record) (uint64, error) {
	return audit.Append(ctx, a.js, a.opts.Config.Stream.Replicas, r)
}

// Secrets are the configuration's secret values (config.Config.Secrets),
// to be replaced in what an operator action records.
func (a *App) Secrets() []string { return a.opts.Config.Secrets() }

// TLSWarnings returns a warning for each system whose dsn is not
// verified TLS (config.PostgresTLS): duplex check prints them and duplex
// run logs them. A system with require_tls and such a dsn never gets
// here: config.Validate refuses it.
func TLSWarnings(cfg *config.Config) []string {
	var out []string
	for _, name := range sortedSystems(cfg) {
		if w := cfg.Systems[name].TLSWarning(name); w != "" {
			out = append(out, w)
		}
	}
	return out
}

// certHint explains a refused server certificate (sslmode=verify-full
// or verify-ca): what to check, in the operator's terms.
func certHint(err error) string {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &hn):
		return " (the server's certificate does not name the host of the dsn: connect by a name it carries, or set sslmode=verify-ca)"
	case errors.As(err, &ua), errors.As(err, &cv):
		return " (the server's certificate is not signed by the CA in sslrootcert: give the file of the CA that signed it)"
	}
	return ""
}

func sortedSystems(cfg *config.Config) []string {
	var out []string
	for n := range cfg.Systems {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Start checks the configuration against the databases and connects to
// NATS (starting the embedded server if no URL is set): as the operator,
// and as each capture's and flow's identity (OpenBus, Bus). Run then runs
// the flows.
func Start(ctx context.Context, opts Options) (*App, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return nil, err
	}
	cats, warnings, err := preflight(ctx, cfg, m)
	if err != nil {
		return nil, err
	}
	cipher, fieldHash, err := personal(ctx, cfg, m)
	if err != nil {
		return nil, err
	}
	if !opts.Demo {
		warnings = append(TLSWarnings(cfg), warnings...)
	}
	for _, w := range warnings {
		opts.Logger.Warn(w)
	}
	warnSuperusers(opts.Logger, cfg, cats)
	if ws, err := Warnings(ctx, cfg, m); err != nil {
		opts.Logger.Warn("could not read the databases for warnings", slog.Any("error", err))
	} else {
		for _, w := range ws {
			opts.Logger.Warn(w)
		}
	}
	a := &App{opts: opts, log: opts.Logger, mapping: m, cipher: cipher, fieldHash: fieldHash, Sources: map[string]*pgcapture.Source{}, SrcStat: map[string]*pipeline.SourceStats{}, Flows: map[string]*pipeline.FlowStats{},
		slots: slotWatch{last: map[string]pgcapture.SlotLag{}, warns: map[string]time.Time{}}, started: time.Now(), runners: map[string]*flowRunner{}}
	for _, f := range cfg.Flows {
		a.Flows[f.Name] = &pipeline.FlowStats{}
	}
	bus, err := OpenBus(ctx, cfg, opts.DataDir, opts.Logger, false)
	if err != nil {
		a.Close()
		return nil, err
	}
	a.bus, a.nc, a.js = bus, bus.nc, bus.js
	js := a.js
	if err := untilPlaced(ctx, a.log, "the streams", func(ctx context.Context) error {
		return pipeline.EnsureStreams(ctx, js, pipeline.StreamConfig{Sources: cfg.Sources(), MaxStoreBytes: cfg.Stream.MaxStoreBytes,
			DLQMaxAge: cfg.Stream.DLQMaxAge, Duplicates: cfg.Stream.Duplicates, Replicas: cfg.Stream.Replicas})
	}); err != nil {
		a.Close()
		return nil, err
	}
	// Objects of large changes are kept until the retention removes the
	// messages that refer to them (never by age alone: a stalled flow
	// must still find them).
	if err := untilPlaced(ctx, a.log, "the store of large changes", func(ctx context.Context) error {
		return pipeline.EnsureLargeChanges(ctx, js, 0, cfg.Stream.Replicas)
	}); err != nil {
		a.Close()
		return nil, err
	}
	readers := map[string][]string{}
	for _, f := range cfg.Flows {
		readers[f.From] = append(readers[f.From], f.Name)
	}
	a.retention = pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: readers, MaxAge: cfg.Stream.MaxAge, MaxBytes: cfg.Stream.MaxBytes, Logger: a.log})
	leaseJS, err := bus.LeaseJetStream(ctx)
	if err != nil {
		a.Close()
		return nil, err
	}
	if a.leases, err = newLeases(ctx, leaseJS, cfg, a.log); err != nil {
		a.Close()
		return nil, err
	}
	// Each capture publishes, and each flow consumes, as its own identity
	// when it has one: a connection each, opened now so that refused
	// credentials stop the start.
	a.captureJS, a.flowJS = map[string]jetstream.JetStream{}, map[string]jetstream.JetStream{}
	for _, name := range cfg.Sources() {
		if a.captureJS[name], err = bus.CaptureJetStream(ctx, name); err != nil {
			a.Close()
			return nil, err
		}
	}
	for _, f := range cfg.Flows {
		if a.flowJS[f.Name], err = bus.FlowJetStream(ctx, f.Name); err != nil {
			a.Close()
			return nil, err
		}
	}
	// Every message a capture publishes is signed with its source's key,
	// and verified by the flows from it (pipeline/sign.go).
	a.signers, a.verifiers = map[string]*pipeline.Signer{}, map[string]*pipeline.Verifier{}
	for _, name := range cfg.Sources() {
		if a.signers[name], err = loadSigner(cfg, opts.DataDir, name); err != nil {
			a.Close()
			return nil, err
		}
		// Flows elsewhere (a standby with a data directory of its own)
		// learn the key from the source database.
		if err := recordSigningKey(ctx, cfg.Systems[name].DSN, name, a.signers[name].PublicKey()); err != nil {
			a.Close()
			return nil, err
		}
	}
	for _, f := range cfg.Flows {
		if a.verifiers[f.From] != nil {
			continue
		}
		if a.verifiers[f.From], err = loadVerifier(ctx, cfg, opts.DataDir, f.From); err != nil {
			a.Close()
			return nil, err
		}
	}
	// Publications and slots exist when Start returns, so every change
	// committed from now on is captured.
	for _, name := range cfg.Sources() {
		sys := cfg.Systems[name]
		keys := map[string][]string{}
		commitTimes := map[string]bool{}
		for _, e := range m.Entities {
			if e.Publishes(name) {
				keys[e.Tables[name].QualifiedTable()] = e.Tables[name].KeyColumns()
				if len(e.SharedFields(name)) > 0 {
					commitTimes[e.Tables[name].QualifiedTable()] = true
				}
			}
		}
		var flows []string
		for _, f := range cfg.Flows {
			if f.From == name {
				flows = append(flows, f.Name)
			}
		}
		src, err := pgcapture.New(pgcapture.Config{System: name, DSN: sys.DSN, Slot: sys.Slot, Publication: sys.Publication, Flows: flows,
			Tables: snapshotOrder(cfg, m, name, cats), Keys: keys, CommitTimes: commitTimes, Snapshot: sys.Snapshot, DuplexOrigins: cfg.OriginsInto(name), ChunkSize: sys.ChunkSize, SnapshotChunk: sys.SnapshotChunk, Logger: a.log})
		if err == nil {
			err = src.Ensure(ctx)
		}
		// A slot that is not the one duplex created stops only its own
		// source: its capture fails with the same error when Run starts
		// it, and shows it in status and /readyz, while the other flows run.
		var lost *pgcapture.SlotLostError
		if errors.As(err, &lost) {
			err = nil
		}
		if err != nil {
			a.Close()
			return nil, err
		}
		a.Sources[name], a.SrcStat[name] = src, &pipeline.SourceStats{}
	}
	return a, nil
}

// JetStream returns the connection's JetStream context.
func (a *App) JetStream() jetstream.JetStream { return a.js }

// CaptureJetStream is the JetStream context the capture of source
// publishes with (its own identity's, or the operator's), nil for an
// unknown source; FlowJetStream the one a flow fetches with. For running
// one stage of the pipeline alone (`duplex bench --stages`).
func (a *App) CaptureJetStream(source string) jetstream.JetStream { return a.captureJS[source] }

// FlowJetStream: see CaptureJetStream.
func (a *App) FlowJetStream(flow string) jetstream.JetStream { return a.flowJS[flow] }

// NATSURL is the URL duplex is connected to, as scheme://host:port: no
// user, password or token (redact.URL).
func (a *App) NATSURL() string { return redact.URL(a.nc.ConnectedUrl()) }

// Run runs every capture and flow until ctx ends, then stops them cleanly.
func (a *App) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := &group{}
	// stop ends what runs and waits for it; Replay cannot start a flow
	// once it ran.
	stop := func() error {
		cancel()
		a.runMu.Lock()
		a.run = nil
		a.runMu.Unlock()
		return g.Wait()
	}
	cfg := a.opts.Config
	g.Go(func() error {
		a.watchSlots(ctx, 5*time.Second)
		return nil
	})
	g.Go(func() error {
		a.retention.Run(ctx)
		return nil
	})
	g.Go(func() error {
		a.leases.converge(ctx, a.log)
		return nil
	})
	for _, name := range cfg.Sources() {
		src, stats := a.Sources[name], a.SrcStat[name]
		pc := pipeline.ProducerConfig{Mapping: a.mapping, Logger: a.log, Stats: stats, MaxChangeBytes: int(cfg.Stream.MaxChangeBytes),
			Holds: &holdStore{system: name, dsn: cfg.Systems[name].DSN, mapping: a.mapping}, Room: a.retention, Signer: a.signers[name], PII: a.cipher}
		for _, e := range a.mapping.Entities {
			if len(e.SharedFields(name)) > 0 && e.Publishes(name) {
				rec := pgstate.NewVersionRecorder(name, cfg.Systems[name].DSN, a.mapping)
				rec.Hasher = a.fieldHash
				defer rec.Close(context.WithoutCancel(ctx))
				pc.Versions = rec
				break
			}
		}
		// Only the holder of the capture's lease streams the slot; the
		// others stand by.
		lease := a.leases.captures[name]
		g.Go(func() error {
			return lease.Run(ctx, func(ctx context.Context) error { return pipeline.RunCapture(ctx, a.captureJS[name], src, pc) })
		})
	}
	for _, f := range cfg.Flows {
		sink, err := pgsink.New(pgsink.Config{Flow: f.Name, Source: f.From, System: f.To, DSN: cfg.Systems[f.To].DSN, Origin: f.Origin, Mapping: a.mapping, FieldHash: a.fieldHash, Logger: a.log, Slot: captureSlot(cfg, f.To)})
		if err != nil {
			return errors.Join(err, stop())
		}
		a.sinks = append(a.sinks, sink)
		var onApplied func([]*transform.Tx, time.Time)
		if a.opts.OnApplied != nil {
			name := f.Name
			onApplied = func(txs []*transform.Tx, t time.Time) { a.opts.OnApplied(name, txs, t) }
		}
		var onBatch func([]*transform.Tx, int, time.Duration, time.Time)
		if a.opts.OnBatch != nil {
			name := f.Name
			onBatch = func(txs []*transform.Tx, n int, took time.Duration, t time.Time) {
				a.opts.OnBatch(name, txs, n, took, t)
			}
		}
		// The flow fetches as its own identity; the operator creates and
		// rewinds its consumer (pipeline.FlowPermissions).
		ap, err := pipeline.NewApplier(a.flowJS[f.Name], pipeline.ApplierConfig{Flow: f.Name, Source: f.From, Sink: sink, Batch: f.Batch, MaxWaitAttempts: f.MaxWaitAttempts, MaxWait: f.MaxWait, Manage: a.js,
			Verify: a.verifiers[f.From], Mapping: a.mapping, Target: f.To, MaxClockSkew: f.MaxClockSkew,
			LargeTxChunks: f.LargeTxChunks, PII: a.cipher, Logger: a.log, Stats: a.Flows[f.Name], OnApplied: onApplied, OnBatch: onBatch})
		if err != nil {
			return errors.Join(err, stop())
		}
		r := &flowRunner{ap: ap, sink: sink, js: a.js, flow: f.Name, source: f.From, stats: a.Flows[f.Name],
			lease: a.leases.flows[f.Name], retention: a.retention, replay: make(chan replayRequest)}
		r.start(ctx, g)
		a.runMu.Lock()
		a.runners[f.Name] = r
		a.runMu.Unlock()
	}
	a.runMu.Lock()
	a.run = g
	a.runMu.Unlock()
	<-ctx.Done()
	return stop()
}

// group runs goroutines and collects their errors. Wait refuses new ones
// before it waits, so that Go never races with it (a WaitGroup must not be
// added to while it is being waited for).
type group struct {
	mu      sync.Mutex
	wg      sync.WaitGroup
	waiting bool
	errs    []error
}

// Go runs f in a goroutine of the group; false if the group is being
// waited for (f does not run then).
func (g *group) Go(f func() error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting {
		return false
	}
	g.wg.Go(func() {
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, err)
			g.mu.Unlock()
		}
	})
	return true
}

// Wait waits for every goroutine of the group and returns their errors.
func (g *group) Wait() error {
	g.mu.Lock()
	g.waiting = true
	g.mu.Unlock()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// ReplayFrom is where a replay starts: a stream sequence, or the first
// message stored at or after a time.
type ReplayFrom struct {
	Seq  uint64
	Time time.Time
}

// FlowLag is how far a flow is behind.
type FlowLag struct {
	Flow          string
	State         string
	Pending       uint64
	SecondsBehind float64
	Applied       int64
	Skipped       int64
	DeadLetters   int64
	Conflicts     int64
	LastPosition  transform.Position
	LastApplied   time.Time
	LastError     string
	StreamSeq     uint64
	// WaitingSince is when the event the flow waits for (State
	// "waiting") started to wait.
	WaitingSince time.Time
	Errors       map[string]int64
	// Refused counts messages and events refused as not produced by the
	// source's capture, by reason (pipeline.FlowCounts.Refused).
	Refused map[string]int64
}

// Lag reports each flow's pending messages and seconds behind.
func (a *App) Lag(ctx context.Context) []FlowLag {
	var out []FlowLag
	for _, f := range a.opts.Config.Flows {
		st := a.Flows[f.Name]
		if st == nil {
			continue
		}
		s := st.Snapshot()
		l := FlowLag{Flow: f.Name, State: s.State, Applied: s.Applied, Skipped: s.Skipped, DeadLetters: s.DeadLetters, Conflicts: s.Conflicts,
			LastPosition: s.LastPosition, LastApplied: s.LastApplied, LastError: s.LastError, StreamSeq: s.StreamSeq, WaitingSince: s.WaitingSince, Errors: s.Errors, Refused: s.Refused}
		if c, err := a.js.Consumer(ctx, pipeline.StreamName, f.Name); err == nil {
			info := c.CachedInfo()
			l.Pending = info.NumPending + uint64(info.NumAckPending)
		}
		if l.Pending > 0 && !s.LastPosition.CommitTime.IsZero() {
			l.SecondsBehind = time.Since(s.LastPosition.CommitTime).Seconds()
		}
		out = append(out, l)
	}
	return out
}

// Close releases NATS and the sinks' sessions.
func (a *App) Close() {
	for _, s := range a.sinks {
		s.Close(context.Background())
	}
	a.probesMu.Lock()
	for _, p := range a.probes {
		p.close(context.Background())
	}
	a.probesMu.Unlock()
	if a.bus != nil {
		a.bus.Close()
	}
}

// captureSlot is the slot of system's capture when system is a source
// ("" otherwise): a sink into it re-reads rows through it (enforce: owner).
func captureSlot(cfg *config.Config, system string) string {
	if slices.Contains(cfg.Sources(), system) {
		return cfg.Systems[system].Slot
	}
	return ""
}

// canApplyAsReplica checks that the role may set session_replication_role,
// which the sink applies with (sinks/postgres): superuser, or on
// PostgreSQL 15 and later a role granted SET on the parameter.
func canApplyAsReplica(ctx context.Context, conn *pgx.Conn) error {
	var user string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil {
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		return fmt.Errorf("role %s cannot set session_replication_role, which duplex applies with so that the target's ordinary triggers do not fire on replicated rows "+
			"(as PostgreSQL's apply worker): make it superuser or, on PostgreSQL 15 and later, GRANT SET ON PARAMETER session_replication_role TO %s (%w)", user, user, err)
	}
	return nil
}
