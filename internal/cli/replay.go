package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/audit"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/internal/progress"
	"github.com/spf13/cobra"
)

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
			if cfg.Flow(flow) == nil {
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
			st, live, err := t.running(ctx)
			if err != nil {
				return fmt.Errorf("replay: %w", err)
			}
			if live {
				// The running duplex records the replay in DUPLEX_AUDIT.
				return replayRunning(ctx, g, &t, st, flow, from)
			}
			bus, err := app.OpenBus(ctx, cfg, t.dataDir, nil, true)
			if err != nil {
				return err
			}
			defer bus.Close()
			return audited(ctx, g, cfg, bus, "replay", func() (string, error) {
				fmt.Fprintf(g.stdout, "no running duplex answered on %s: replaying %s here\n", t.listen, flow)
				bar := progressFor(g, "replay "+flow)
				counts, err := app.ReplayOffline(ctx, cfg, bus, flow, from, g.logger(), func(p app.ReplayProgress) {
					bar(int64(p.Total-min(p.Pending, p.Total)), int64(p.Total))
				})
				if err != nil {
					return "", err
				}
				done := fmt.Sprintf("replay of %s done: %d events re-read, %d applied, %d skipped (already in the target), %d dead-lettered",
					flow, counts.Applied+counts.Skipped+counts.DeadLetters, counts.Applied, counts.Skipped, counts.DeadLetters)
				fmt.Fprintf(g.stdout, "\n%s\n", done)
				return done, nil
			})
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
	user, host := who()
	body, _ := json.Marshal(ops.ReplayRequest{Flow: flow, FromSeq: from.Seq, Since: from.Time, User: user, Host: host, Args: audit.RedactArgs(g.args, t.cfg.Secrets()...)})
	resp, err := t.do(ctx, http.MethodPost, "/api/replay", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("replay: ask the running duplex: %w", err)
	}
	msg := refusal(resp)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("replay: the running duplex refused: %s %s", resp.Status, msg)
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
		st, ok, err := t.running(ctx)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
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
