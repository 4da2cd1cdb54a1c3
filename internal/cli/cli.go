// Package cli is duplex's command line: it reads flags and configuration
// and calls into app, demo and the other commands. Only this package (and
// cmd/duplex) reads the environment. The operator actions (replay, dlq
// retry, dlq drop, backfill, resync) run through audited (audit.go),
// which records each in DUPLEX_AUDIT and the log.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/bench"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/internal/progress"
	"github.com/duplex-cdc/duplex/transform"
)

// exitError carries an exit code.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Main runs the command line and returns the exit code.
func Main(args []string) int {
	return MainIO(args, os.Stdout, os.Stderr)
}

// MainIO is Main with explicit output streams.
func MainIO(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr, args)
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		fmt.Fprintln(stderr, "duplex:", cleanLines(err.Error()))
		return 1
	}
}

type globals struct {
	logLevel  string
	logFormat string
	stdout    io.Writer
	stderr    io.Writer
	// args are the command line (without the program's name), for the
	// audit record of an operator action.
	args []string
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.logLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

func newRoot(stdout, stderr io.Writer, args []string) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr, args: args}
	root := &cobra.Command{
		Use:           "duplex",
		Short:         "CRM ⇄ ERP change data capture over NATS JetStream",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("DUPLEX_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", envOr("DUPLEX_LOG_FORMAT", "text"), "log format: text or json")
	root.AddCommand(runCmd(g), demoCmd(g), checkCmd(g), benchCmd(g), backfillCmd(g), resyncCmd(g), statusCmd(g), replayCmd(g), dlqCmd(g), verifyCmd(g), auditCmd(g))
	return root
}

// loadConfig reads the configuration and its mapping.
func loadConfig(path string) (*config.Config, *transform.Mapping, error) {
	cfg, err := config.Load(path, os.Getenv)
	if err != nil {
		return nil, nil, err
	}
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		return nil, nil, err
	}
	return cfg, m, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func runCmd(g *globals) *cobra.Command {
	var cfgPath, dataDir, listen, cpuProfile string
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the configured flows until SIGINT/SIGTERM, then stop cleanly",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath, os.Getenv)
			if err != nil {
				return err
			}
			if dataDir == "" {
				dataDir = envOr("DUPLEX_DATA_DIR", cfg.DataDir)
			}
			log := g.logger()
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			metrics := ops.NewMetrics()
			a, err := app.Start(cmd.Context(), app.Options{Config: cfg, DataDir: dataDir, Logger: log, OnBatch: metrics.OnBatch})
			if err != nil {
				return err
			}
			defer a.Close()
			metrics.SetApp(a)
			// The listener and the progress bars use the App: they stop
			// before it is closed.
			ctx, cancel := context.WithCancel(cmd.Context())
			var wg sync.WaitGroup
			defer func() {
				cancel()
				wg.Wait()
			}()
			if listen != "" && listen != "off" {
				tok, err := ops.ResolveToken(cfg.HTTP, dataDir, true)
				if err != nil {
					return err
				}
				srv, err := ops.Listen(ops.Config{Addr: listen, Token: tok.Value, TLSCert: cfg.HTTP.TLSCert, TLSKey: cfg.HTTP.TLSKey}, a, metrics, log)
				if err != nil {
					return err
				}
				wg.Go(func() {
					if err := srv.Serve(ctx); err != nil {
						log.Error("status listener stopped", slog.Any("error", err))
					}
				})
				if host, _, err := net.SplitHostPort(srv.Addr()); err == nil && !cfg.HTTP.TLS() {
					if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
						log.Warn("the listener is reachable beyond this machine without TLS: its token and the status travel in clear; set http.tls_cert and http.tls_key",
							slog.String("listen", srv.Addr()))
					}
				}
				// The token itself is never logged: where it is, and how a
				// browser signs in with it.
				log.Info("serving metrics, health and status", slog.String("listen", srv.URL()), slog.String("token", tok.Source),
					slog.String("status_page", srv.URL()+"/?token=<token>"))
			}
			log.Info("duplex running", slog.String("nats", a.NATSURL()), slog.Int("flows", len(cfg.Flows)))
			if progress.IsTerminal(g.stderr) {
				wg.Go(func() { snapshotBars(ctx, g.stderr, a) })
			}
			err = a.Run(ctx)
			log.Info("duplex stopped")
			return err
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&dataDir, "data-dir", "", "directory for the embedded NATS store, the nkeys of duplex's identities on it and the listener's generated token (default $DUPLEX_DATA_DIR, then data_dir of the config, then ./data)")
	c.Flags().StringVar(&listen, "listen", envOr("DUPLEX_LISTEN", ops.DefaultListen), "address of /metrics, /healthz, /readyz (open), /api/status, /api/replay and the status page (bearer token: http.token or <data dir>/http.token) (off to disable)")
	c.Flags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the whole run to this file when duplex stops (a live process: /debug/pprof/profile on the listener)")
	return c
}

// startCPUProfile starts a CPU profile written to path (created 0600) and
// returns what stops it.
func startCPUProfile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func checkCmd(g *globals) *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "check",
		Short: "Check the configuration and mapping against both databases, then exit",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, m, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			warnings, err := app.PreflightReport(cmd.Context(), cfg, m)
			warnings = append(app.TLSWarnings(cfg), warnings...)
			if err != nil {
				for _, w := range warnings {
					fmt.Fprintln(g.stdout, "warning: "+clean(w)) // names from the catalogs
				}
				return err
			}
			more, err := app.Warnings(cmd.Context(), cfg, m)
			if err != nil {
				return err
			}
			for _, w := range append(warnings, more...) {
				fmt.Fprintln(g.stdout, "warning: "+clean(w)) // names from the catalogs
			}
			fmt.Fprintln(g.stdout, "configuration and mapping fit both databases")
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "duplex.yaml", "configuration file")
	return c
}

func demoCmd(g *globals) *cobra.Command {
	var opts demo.Options
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a self-contained demo: two throwaway PostgreSQL clusters, embedded JetStream, live order-to-cash traffic",
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Out = g.stdout
			if g.logLevel == "info" && !cmd.Flags().Changed("log-level") {
				g.logLevel = "warn"
			}
			opts.Logger = g.logger()
			ok, err := demo.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if !ok {
				return exitError{code: 1}
			}
			return nil
		},
	}
	c.Flags().DurationVar(&opts.Duration, "duration", 30*time.Second, "how long to generate traffic")
	c.Flags().IntVar(&opts.Rate, "rate", 50, "CRM transactions per second")
	return c
}

func benchCmd(g *globals) *cobra.Command {
	var opts bench.Options
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure duplex against native logical replication, shape by shape (or the fault soak, the snapshot, one large transaction, verify)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Out = g.stdout
			if !cmd.Flags().Changed("log-level") {
				g.logLevel = "warn"
			}
			opts.Logger = g.logger()
			_, err := bench.Run(cmd.Context(), opts)
			return err
		},
	}
	c.Flags().StringSliceVar(&opts.Shapes, "shape", nil, "workload shapes to compare with native logical replication (default all: "+strings.Join(bench.Shapes(), ",")+"); "+bench.ShapeLegacy+" runs the previous bench (--rows, --rows-per-tx, --steady-rate, --steady-for, --skip-native)")
	c.Flags().IntVar(&opts.Runs, "runs", 1, "runs of each shape (the table shows min / median / max)")
	c.Flags().Float64Var(&opts.Scale, "scale", 1, "size of the shapes: the number of transactions (and snapshot rows) times this; a transaction's size stays")
	c.Flags().StringVar(&opts.CPUProfileDir, "cpu-profile-dir", "", "write a CPU profile of each duplex process the shapes run into this directory (<shape>-<n>.pprof)")
	c.Flags().BoolVar(&opts.Stages, "stages", false, "also measure each stage alone on the same backlog: capture+decode+normalize, publish to JetStream, consume+apply")
	c.Flags().IntVar(&opts.Rows, "rows", 100_000, "with --shape legacy: rows inserted by the bulk workload")
	c.Flags().IntVar(&opts.RowsPerTx, "rows-per-tx", 900, "with --shape legacy: rows per bulk transaction")
	c.Flags().IntVar(&opts.SteadyRate, "steady-rate", 2000, "with --shape legacy: row changes per second of the steady phase (0 to skip)")
	c.Flags().DurationVar(&opts.SteadyFor, "steady-for", 20*time.Second, "with --shape legacy: length of the steady phase")
	c.Flags().BoolVar(&opts.SkipNative, "skip-native", false, "with --shape legacy: do not measure native logical replication")
	c.Flags().IntVar(&opts.SnapshotRows, "snapshot-rows", 0, "measure only the initial snapshot of this many existing CRM rows")
	c.Flags().BoolVar(&opts.SnapshotKill, "snapshot-kill", false, "with --snapshot-rows: live writes throughout, duplex killed halfway, then both systems compared")
	c.Flags().IntVar(&opts.VerifyRows, "verify-rows", 0, "measure only duplex verify (time, peak RSS) on this many rows per side with one cent changed")
	c.Flags().StringVar(&opts.NATSSync, "nats-sync", "", "sync policy of the embedded JetStream under test: always (the default) or an interval such as 2m")
	c.Flags().DurationVar(&opts.Soak, "soak", 0, "run only the fault soak for this long: two duplex processes, a nats-server process, the two-way workload, every kind of fault at random moments, then verify (30m: at least 500,000 row changes)")
	c.Flags().Uint64Var(&opts.Seed, "seed", 0, "with --soak: seed of the faults, their moments and the workload (default: from the clock; printed)")
	c.Flags().IntVar(&opts.SoakRate, "soak-rate", bench.DefaultSoakRate, "with --soak: CRM row changes per second")
	c.Flags().StringSliceVar(&opts.SoakFaults, "soak-faults", nil, "with --soak: only these kinds of fault (default all: "+strings.Join(bench.SoakFaultKinds(), ",")+")")
	c.Flags().IntVar(&opts.LargeTxRows, "large-tx-rows", 0, "measure only one CRM transaction of this many rows through a separate duplex process (time, atomicity, peak RSS)")
	return c
}

// snapshotBars draws a progress bar per table while an initial snapshot
// runs, on a terminal (the log lines say the same elsewhere).
func snapshotBars(ctx context.Context, w io.Writer, a *app.App) {
	type key struct{ source, table string }
	bars := map[key]*progress.Bar{}
	last := map[string]pgcapture.SnapshotProgress{}
	for {
		for name, src := range a.Sources {
			p := src.Progress()
			prev := last[name]
			last[name] = p
			if prev.Running && prev.Table != p.Table || (prev.Running && !p.Running) {
				if b := bars[key{name, prev.Table}]; b != nil {
					b.Done(prev.Rows, max(prev.Estimate, prev.Rows), "")
				}
			}
			if !p.Running || p.Table == "" {
				continue
			}
			k := key{name, p.Table}
			if bars[k] == nil {
				bars[k] = progress.New(w, "snapshot "+name+" "+p.Table)
			}
			bars[k].Update(p.Rows, max(p.Estimate, p.Rows))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}
