// Package app wires duplex together from a configuration: it checks the
// mapping against both databases, starts or connects to NATS, and runs one
// capture per source system and one applier per flow until stopped.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgcatalog"
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
}

// App is a running duplex.
type App struct {
	opts    Options
	log     *slog.Logger
	mapping *transform.Mapping
	nats    *harness.NATS
	nc      *nats.Conn
	js      jetstream.JetStream

	Sources map[string]*pgcapture.Source
	SrcStat map[string]*pipeline.SourceStats
	Flows   map[string]*pipeline.FlowStats
	sinks   []*pgsink.Sink
	slots   slotWatch
}

// Preflight checks the mapping against the catalogs of every configured
// system and returns every mismatch at once.
func Preflight(ctx context.Context, cfg *config.Config, m *transform.Mapping) error {
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
		if !containsStr(m.Systems, name) {
			errs = append(errs, fmt.Errorf("system %s is configured but not listed in the mapping's systems", name))
			continue
		}
		conn, err := pgx.Connect(ctx, sys.DSN)
		if err != nil {
			errs = append(errs, fmt.Errorf("system %s: connect: %w", name, err))
			continue
		}
		cat, err := pgcatalog.Read(ctx, conn, m.Tables(name))
		_ = conn.Close(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("system %s: %w", name, err))
			continue
		}
		if err := m.Check(name, cat, role); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range cfg.Flows {
		for _, e := range m.Entities {
			if t := e.Tables[f.From]; t != nil && e.Publishes(f.From) {
				for fname, c := range t.Columns {
					if fd := e.Field(fname); c.Ref != nil && (fd.Owner == f.From || fd.Owner == transform.OwnerBoth) {
						errs = append(errs, fmt.Errorf("flow %s: %s table %s maps field %s through a reference; references are resolved on the target side only", f.Name, f.From, t.QualifiedTable(), fname))
					}
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("the mapping does not fit the databases:\n%w", errors.Join(errs...))
	}
	return nil
}

func sortedSystems(cfg *config.Config) []string {
	var out []string
	for n := range cfg.Systems {
		out = append(out, n)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// Start checks the configuration against the databases and connects to
// NATS (starting the embedded server if no URL is set). Run then runs the
// flows.
func Start(ctx context.Context, opts Options) (*App, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return nil, err
	}
	if err := Preflight(ctx, cfg, m); err != nil {
		return nil, err
	}
	a := &App{opts: opts, log: opts.Logger, mapping: m, Sources: map[string]*pgcapture.Source{}, SrcStat: map[string]*pipeline.SourceStats{}, Flows: map[string]*pipeline.FlowStats{},
		slots: slotWatch{last: map[string]SlotLag{}, warns: map[string]time.Time{}}}
	url := cfg.NATS.URL
	if url == "" {
		dir := opts.DataDir
		if dir == "" {
			dir = "data"
		}
		n, err := harness.StartNATS(harness.NATSOptions{StoreDir: filepath.Join(dir, "jetstream"), Host: cfg.NATS.Embedded.Host, Port: cfg.NATS.Embedded.Port, Logger: opts.Logger.With(slog.String("component", "nats"))})
		if err != nil {
			return nil, fmt.Errorf("start embedded nats: %w", err)
		}
		a.nats = n
		url = n.URL()
		a.log.Info("embedded NATS started", slog.String("url", url), slog.String("store", n.StoreDir()))
	}
	nopts := []nats.Option{nats.Name("duplex"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				a.log.Warn("NATS disconnected", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { a.log.Info("NATS reconnected", slog.String("url", c.ConnectedUrlRedacted())) })}
	switch {
	case cfg.NATS.Creds != "":
		nopts = append(nopts, nats.UserCredentials(cfg.NATS.Creds))
	case cfg.NATS.Token != "":
		nopts = append(nopts, nats.Token(cfg.NATS.Token))
	case cfg.NATS.User != "":
		nopts = append(nopts, nats.UserInfo(cfg.NATS.User, cfg.NATS.Password))
	}
	if cfg.NATS.CAFile != "" {
		nopts = append(nopts, nats.RootCAs(cfg.NATS.CAFile))
	}
	nc, err := nats.Connect(url, nopts...)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	a.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	a.js = js
	if err := pipeline.EnsureStreams(ctx, js, pipeline.StreamConfig{Sources: cfg.Sources(), MaxAge: cfg.Stream.MaxAge, MaxBytes: cfg.Stream.MaxBytes, Duplicates: cfg.Stream.Duplicates, Replicas: cfg.Stream.Replicas}); err != nil {
		a.Close()
		return nil, err
	}
	// Publications and slots exist when Start returns, so every change
	// committed from now on is captured.
	for _, name := range cfg.Sources() {
		sys := cfg.Systems[name]
		keys := map[string]string{}
		for _, e := range m.Entities {
			if e.Publishes(name) {
				keys[e.Tables[name].QualifiedTable()] = e.Tables[name].KeyColumn
			}
		}
		src, err := pgcapture.New(pgcapture.Config{System: name, DSN: sys.DSN, Slot: sys.Slot, Publication: sys.Publication,
			Tables: m.SourceTables(name), Keys: keys, Snapshot: sys.Snapshot, DuplexOrigins: cfg.OriginsInto(name), ChunkSize: sys.ChunkSize, Logger: a.log})
		if err == nil {
			err = src.Ensure(ctx)
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

// NATSURL is the URL duplex is connected to.
func (a *App) NATSURL() string { return a.nc.ConnectedUrl() }

// Run runs every capture and flow until ctx ends, then stops them cleanly.
func (a *App) Run(ctx context.Context) error {
	cfg := a.opts.Config
	var wg sync.WaitGroup
	errc := make(chan error, len(cfg.Flows)+len(cfg.Systems))
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchSlots(ctx, 5*time.Second)
	}()
	for _, name := range cfg.Sources() {
		src, stats := a.Sources[name], a.SrcStat[name]
		pc := pipeline.ProducerConfig{Mapping: a.mapping, Logger: a.log, Stats: stats,
			Holds: &holdStore{system: name, dsn: cfg.Systems[name].DSN, mapping: a.mapping}}
		for _, e := range a.mapping.Entities {
			if len(e.SharedFields(name)) > 0 && e.Publishes(name) {
				rec := pgsink.NewVersionRecorder(name, cfg.Systems[name].DSN, a.mapping)
				defer rec.Close(context.WithoutCancel(ctx))
				pc.Versions = rec
				break
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- pipeline.RunCapture(ctx, a.js, src, pc)
		}()
	}
	for _, f := range cfg.Flows {
		sink, err := pgsink.New(pgsink.Config{Flow: f.Name, Source: f.From, System: f.To, DSN: cfg.Systems[f.To].DSN, Origin: f.Origin, Mapping: a.mapping, Logger: a.log})
		if err != nil {
			return err
		}
		a.sinks = append(a.sinks, sink)
		stats := &pipeline.FlowStats{}
		a.Flows[f.Name] = stats
		var onApplied func([]*transform.Tx, time.Time)
		if a.opts.OnApplied != nil {
			name := f.Name
			onApplied = func(txs []*transform.Tx, t time.Time) { a.opts.OnApplied(name, txs, t) }
		}
		ap, err := pipeline.NewApplier(a.js, pipeline.ApplierConfig{Flow: f.Name, Source: f.From, Sink: sink, Batch: f.Batch, MaxWaitAttempts: f.MaxWaitAttempts, LargeTxChunks: f.LargeTxChunks, Logger: a.log, Stats: stats, OnApplied: onApplied})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- ap.Run(ctx)
		}()
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FlowLag is how far a flow is behind.
type FlowLag struct {
	Flow          string
	State         string
	Pending       uint64
	SecondsBehind float64
	Applied       int64
	DeadLetters   int64
	Conflicts     int64
	LastPosition  transform.Position
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
		l := FlowLag{Flow: f.Name, State: s.State, Applied: s.Applied, DeadLetters: s.DeadLetters, Conflicts: s.Conflicts, LastPosition: s.LastPosition}
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
	if a.nc != nil {
		_ = a.nc.Drain()
		for i := 0; i < 50 && !a.nc.IsClosed(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if a.nats != nil {
		a.nats.Stop()
	}
}

func containsStr(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
