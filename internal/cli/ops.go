package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/internal/progress"
	"github.com/duplex-cdc/duplex/pipeline"
)

// tool holds what the operating commands share: the configuration, the
// data directory and the address of a running instance.
type tool struct {
	cfgPath, dataDir, listen string
}

func (t *tool) flags(c *cobra.Command) {
	c.Flags().StringVar(&t.cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&t.dataDir, "data-dir", "", "data directory of the embedded NATS store, when no duplex runs (default $DUPLEX_DATA_DIR, then data_dir of the config, then ./data)")
	c.Flags().StringVar(&t.listen, "listen", envOr("DUPLEX_LISTEN", ops.DefaultListen), "address of a running duplex's status listener")
}

func (t *tool) config() (*config.Config, error) {
	cfg, err := config.Load(t.cfgPath, os.Getenv)
	if err != nil {
		return nil, err
	}
	if t.dataDir == "" {
		t.dataDir = envOr("DUPLEX_DATA_DIR", cfg.DataDir)
	}
	return cfg, nil
}

// running asks a running instance for its status; ok is false when none
// answers.
func (t *tool) running(ctx context.Context) (*app.Status, bool) {
	if t.listen == "" || t.listen == "off" {
		return nil, false
	}
	var st app.Status
	if err := getJSON(ctx, "http://"+t.listen+"/api/status", &st); err != nil {
		return nil, false
	}
	return &st, true
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func statusCmd(g *globals) *cobra.Command {
	var t tool
	var asJSON, watch bool
	var every time.Duration
	c := &cobra.Command{
		Use:   "status",
		Short: "Show each flow's state and lag, from a running duplex or, when none runs, from PostgreSQL and JetStream",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := t.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var bus *app.Bus
			defer func() {
				if bus != nil {
					bus.Close()
				}
			}()
			for {
				st, live := t.running(ctx)
				if !live {
					if bus == nil {
						if bus, err = app.OpenBus(ctx, cfg, t.dataDir, nil, true); err != nil {
							return err
						}
					}
					s := app.Inspect(ctx, cfg, bus.JetStream())
					st = &s
				}
				if watch && !asJSON {
					fmt.Fprint(g.stdout, "\033[H\033[2J")
				}
				if asJSON {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(st); err != nil {
						return err
					}
				} else {
					printStatus(g.stdout, st)
				}
				if !watch {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	t.flags(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.Flags().BoolVar(&watch, "watch", false, "refresh until interrupted")
	c.Flags().DurationVar(&every, "interval", 2*time.Second, "refresh interval of --watch")
	return c
}

func humanBytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, units := float64(n), []string{"KiB", "MiB", "GiB", "TiB"}
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

func printStatus(w io.Writer, st *app.Status) {
	if st.Live {
		fmt.Fprintf(w, "duplex is running (status at %s); NATS %s, connected %v\n\n", st.At.Format(time.RFC3339), st.NATS.URL, st.NATS.Connected)
	} else {
		fmt.Fprintf(w, "no running duplex answered; read from PostgreSQL and JetStream at %s\n\n", st.At.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLOW\tSTATE\tWAL BEHIND\tPENDING\tSECONDS BEHIND\tLAST APPLIED\tAPPLIED AT\tDEAD LETTERS")
	for _, f := range st.Flows {
		last := "-"
		if f.LastLSN != "" {
			last = f.LastLSN
			if f.LastCommit != nil {
				last += " @ " + f.LastCommit.Format(time.RFC3339)
			}
		}
		at := "-"
		if f.LastApplied != nil {
			at = f.LastApplied.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s (%s→%s)\t%s\t%s\t%d\t%.1f\t%s\t%s\t%d\n", f.Name, f.From, f.To, f.State, humanBytes(f.WALBehind), f.Pending, f.SecondsBehind, last, at, f.DeadLetters)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tSLOT\tSTREAMING\tWAL BEHIND\tWAL RETAINED\tHELD")
	for _, s := range st.Sources {
		held := "-"
		if len(s.Held) > 0 {
			var hs []string
			for e, r := range s.Held {
				hs = append(hs, e+": "+r)
			}
			held = strings.Join(hs, "; ")
		}
		slot := s.Slot.Slot
		if s.Slot.Error != "" {
			slot += " (" + s.Slot.Error + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\n", s.System, slot, s.Slot.Active, humanBytes(s.Slot.BehindBytes), humanBytes(s.Slot.RetainedBytes), held)
	}
	tw.Flush()
	for _, f := range st.Flows {
		if f.LastError != "" {
			fmt.Fprintf(w, "\n%s: %s", f.Name, f.LastError)
		}
	}
	for _, e := range st.Errors {
		fmt.Fprintf(w, "\nerror: %s", e)
	}
	if len(st.DeadLetters) > 0 {
		fmt.Fprintf(w, "\n%d recent dead letters (duplex dlq list)\n", len(st.DeadLetters))
	}
	fmt.Fprintln(w)
}

// parseSince reads a duration back from now ("2h", "90m") or a time
// (RFC 3339, or "2006-01-02 15:04:05" in UTC).
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration back from now (2h) or a time (2026-11-24T03:00:00Z)", s)
}

func replayCmd(g *globals) *cobra.Command {
	var t tool
	var flow, since string
	var fromSeq uint64
	c := &cobra.Command{
		Use:   "replay --flow FLOW (--since DURATION|TIME | --from-seq N)",
		Short: "Re-apply a flow from a point of the retained stream (events the target already holds are skipped)",
		Long: `replay re-applies a flow from a point of the retained stream: after the
target was restored from a backup, events after the backup's applied
position (kept inside the target, in duplex.applied) are applied again and
the older ones skipped. A running duplex performs the replay itself; when
none runs, this command runs the flow until it caught up.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := t.config()
			if err != nil {
				return err
			}
			f := cfg.Flow(flow)
			if f == nil {
				return fmt.Errorf("replay: no flow %q in %s", flow, t.cfgPath)
			}
			var from app.ReplayFrom
			switch {
			case fromSeq > 0 && since != "":
				return errors.New("replay: give --since or --from-seq, not both")
			case fromSeq > 0:
				from.Seq = fromSeq
			case since != "":
				if from.Time, err = parseSince(since, time.Now()); err != nil {
					return err
				}
			default:
				return errors.New("replay: give --since DURATION|TIME or --from-seq N")
			}
			ctx := cmd.Context()
			if st, live := t.running(ctx); live {
				return replayRunning(ctx, g, &t, st, flow, from)
			}
			bus, err := app.OpenBus(ctx, cfg, t.dataDir, nil, true)
			if err != nil {
				return err
			}
			defer bus.Close()
			fmt.Fprintf(g.stdout, "no running duplex answered on %s: replaying %s here\n", t.listen, flow)
			bar := progressFor(g, "replay "+flow)
			counts, err := app.ReplayOffline(ctx, cfg, bus, flow, from, g.logger(), func(p app.ReplayProgress) {
				bar(int64(p.Total-min(p.Pending, p.Total)), int64(p.Total))
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "\nreplay of %s done: %d events re-read, %d applied, %d skipped (already in the target), %d dead-lettered\n",
				flow, counts.Applied+counts.Skipped+counts.DeadLetters, counts.Applied, counts.Skipped, counts.DeadLetters)
			return nil
		},
	}
	t.flags(c)
	c.Flags().StringVar(&flow, "flow", "", "flow to replay (e.g. to-erp)")
	c.Flags().StringVar(&since, "since", "", "replay what was stored since this time (RFC 3339) or this long ago (2h)")
	c.Flags().Uint64Var(&fromSeq, "from-seq", 0, "replay from this DUPLEX stream sequence")
	_ = c.MarkFlagRequired("flow")
	return c
}

// progressFor returns a function drawing a bar on a terminal and printing
// a line every few seconds otherwise.
func progressFor(g *globals, label string) func(done, total int64) {
	if progress.IsTerminal(g.stdout) {
		b := progress.New(g.stdout, label)
		return b.Update
	}
	var last time.Time
	return func(done, total int64) {
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			fmt.Fprintf(g.stdout, "%s: %d of %d messages\n", label, done, total)
		}
	}
}

func flowOf(st *app.Status, flow string) *app.FlowStatus {
	for i := range st.Flows {
		if st.Flows[i].Name == flow {
			return &st.Flows[i]
		}
	}
	return nil
}

// replayRunning asks the running instance to replay and follows its status
// until the flow caught up.
func replayRunning(ctx context.Context, g *globals, t *tool, before *app.Status, flow string, from app.ReplayFrom) error {
	b0 := flowOf(before, flow)
	if b0 == nil {
		return fmt.Errorf("replay: the running duplex has no flow %s", flow)
	}
	body, _ := json.Marshal(ops.ReplayRequest{Flow: flow, FromSeq: from.Seq, Since: from.Time})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+t.listen+"/api/replay", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("replay: ask the running duplex: %w", err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("replay: the running duplex refused: %s %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	fmt.Fprintf(g.stdout, "the running duplex is replaying %s\n", flow)
	bar := progressFor(g, "replay "+flow)
	var total uint64
	started := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
		st, ok := t.running(ctx)
		if !ok {
			continue
		}
		f := flowOf(st, flow)
		if f == nil {
			continue
		}
		total = max(total, f.Pending)
		bar(int64(total-min(f.Pending, total)), int64(total))
		if f.Pending == 0 && f.State == "running" && time.Since(started) > time.Second {
			applied, skipped, dl := f.Applied-b0.Applied, f.Skipped-b0.Skipped, int64(f.DeadLetters)-int64(b0.DeadLetters)
			fmt.Fprintf(g.stdout, "\nreplay of %s done: %d events re-read, %d applied, %d skipped (already in the target), %d dead-lettered\n",
				flow, applied+skipped+max(dl, 0), applied, skipped, max(dl, 0))
			return nil
		}
	}
}

func dlqCmd(g *globals) *cobra.Command {
	var t tool
	c := &cobra.Command{
		Use:   "dlq",
		Short: "Dead letters: list, show, retry after a fix, drop",
	}
	withBus := func(cmd *cobra.Command, f func(ctx context.Context, cfg *config.Config, bus *app.Bus) error) error {
		cfg, err := t.config()
		if err != nil {
			return err
		}
		bus, err := app.OpenBus(cmd.Context(), cfg, t.dataDir, nil, true)
		if err != nil {
			return err
		}
		defer bus.Close()
		return f(cmd.Context(), cfg, bus)
	}
	var flow string
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters: sequence, flow, entity, key, source position, error",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withBus(cmd, func(ctx context.Context, _ *config.Config, bus *app.Bus) error {
				dls, err := pipeline.ListDeadLetters(ctx, bus.JetStream(), flow, 0)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(dls)
				}
				if len(dls) == 0 {
					fmt.Fprintln(g.stdout, "no dead letters")
					return nil
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tFLOW\tSTAGE\tENTITY\tKEY\tPOSITION\tFAILED AT\tERROR")
				for _, d := range dls {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s/%d\t%s\t%s\n", d.Seq, d.Flow, d.Stage, d.Entity, d.Key, d.Position.LSN, d.Position.Index,
						d.FailedAt.Format(time.RFC3339), oneLine(d.Error, 400))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&flow, "flow", "", "only this flow's dead letters (capture-<source> for those of a capture)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	seqArg := func(args []string) (uint64, error) {
		if len(args) != 1 {
			return 0, errors.New("give the dead letter's sequence (duplex dlq list)")
		}
		n, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("sequence %q: %w", args[0], err)
		}
		return n, nil
	}
	show := &cobra.Command{
		Use:   "show SEQ",
		Short: "Show one dead letter in full, with its event",
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := seqArg(args)
			if err != nil {
				return err
			}
			return withBus(cmd, func(ctx context.Context, _ *config.Config, bus *app.Bus) error {
				d, err := pipeline.GetDeadLetter(ctx, bus.JetStream(), seq)
				if err != nil {
					return err
				}
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			})
		},
	}
	retry := &cobra.Command{
		Use:   "retry SEQ...",
		Short: "Apply dead letters again after the data or the mapping was fixed (newer events of the same key win)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("give the dead letters' sequences (duplex dlq list)")
			}
			return withBus(cmd, func(ctx context.Context, cfg *config.Config, bus *app.Bus) error {
				failed := 0
				for _, a := range args {
					seq, err := seqArg([]string{a})
					if err != nil {
						return err
					}
					out, err := app.RetryDeadLetter(ctx, cfg, bus, seq, g.logger())
					if err != nil {
						failed++
						fmt.Fprintln(g.stderr, "duplex:", err)
						continue
					}
					fmt.Fprintln(g.stdout, out)
				}
				if failed > 0 {
					return exitError{code: 1}
				}
				return nil
			})
		},
	}
	drop := &cobra.Command{
		Use:   "drop SEQ...",
		Short: "Remove dead letters for good",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("give the dead letters' sequences (duplex dlq list)")
			}
			return withBus(cmd, func(ctx context.Context, _ *config.Config, bus *app.Bus) error {
				for _, a := range args {
					seq, err := seqArg([]string{a})
					if err != nil {
						return err
					}
					if err := pipeline.DropDeadLetter(ctx, bus.JetStream(), seq); err != nil {
						return err
					}
					fmt.Fprintf(g.stdout, "dead letter %d dropped\n", seq)
				}
				return nil
			})
		},
	}
	for _, sub := range []*cobra.Command{list, show, retry, drop} {
		t.flags(sub)
		c.AddCommand(sub)
	}
	return c
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}
