package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/pii"
	"github.com/duplex-cdc/duplex/internal/redact"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/spf13/cobra"
)

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
					return writeJSON(g.stdout, dls)
				}
				if len(dls) == 0 {
					fmt.Fprintln(g.stdout, "no dead letters")
					return nil
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tFLOW\tSTAGE\tENTITY\tKEY\tPOSITION\tFAILED AT\tERROR")
				for _, d := range dls {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s/%d\t%s\t%s\n", d.Seq, clean(d.Flow), clean(d.Stage), clean(d.Entity), clean(d.Key), d.Position.LSN, d.Position.Index,
						d.FailedAt.Format(time.RFC3339), clean(oneLine(d.Error, 400)))
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
	var full bool
	show := &cobra.Command{
		Use:   "show SEQ",
		Short: "Show one dead letter with its event (values cut to 64 characters; personal fields stay sealed)",
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
				if !full {
					shortValues(d)
				}
				return writeJSON(g.stdout, d)
			})
		},
	}
	show.Flags().BoolVar(&full, "full", false, "print values uncut (personal fields stay sealed)")
	retry := &cobra.Command{
		Use:   "retry SEQ...",
		Short: "Apply dead letters again after the data or the mapping was fixed (newer events of the same key win)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("give the dead letters' sequences (duplex dlq list)")
			}
			return withBus(cmd, func(ctx context.Context, cfg *config.Config, bus *app.Bus) error {
				return audited(ctx, g, cfg, bus, "dlq retry", func() (string, error) {
					var done []string
					failed := 0
					for _, a := range args {
						seq, err := seqArg([]string{a})
						if err != nil {
							return strings.Join(done, "; "), err
						}
						out, err := app.RetryDeadLetter(ctx, cfg, bus, seq, g.logger())
						if err != nil {
							failed++
							fmt.Fprintln(g.stderr, "duplex:", cleanLines(err.Error()))
							done = append(done, fmt.Sprintf("%d not retried: %s", seq, err))
							continue
						}
						fmt.Fprintln(g.stdout, clean(out.String()))
						done = append(done, fmt.Sprintf("%d: %s", seq, out))
					}
					if failed > 0 {
						return strings.Join(done, "; "), fmt.Errorf("%d of %d dead letters not retried", failed, len(args))
					}
					return strings.Join(done, "; "), nil
				})
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
			return withBus(cmd, func(ctx context.Context, cfg *config.Config, bus *app.Bus) error {
				return audited(ctx, g, cfg, bus, "dlq drop", func() (string, error) {
					var dropped []string
					for _, a := range args {
						seq, err := seqArg([]string{a})
						if err != nil {
							return "dropped: " + strings.Join(dropped, ", "), err
						}
						if err := pipeline.DropDeadLetter(ctx, bus.JetStream(), seq); err != nil {
							return "dropped: " + strings.Join(dropped, ", "), err
						}
						dropped = append(dropped, strconv.FormatUint(seq, 10))
						fmt.Fprintf(g.stdout, "dead letter %d dropped\n", seq)
					}
					return "dropped: " + strings.Join(dropped, ", "), nil
				})
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

// shortValues cuts the values of a dead letter's event and change to
// redact.MaxValue characters and shows a sealed personal value as
// "(pii, sealed with key <id>)".
func shortValues(d *pipeline.StoredDeadLetter) {
	if d.Event != nil && d.Event.Data != nil {
		data := make(map[string]any, len(d.Event.Data))
		for k, v := range d.Event.Data {
			data[k] = shortValue(v)
		}
		d.Event.Data = data
	}
	if d.Change != nil {
		for _, r := range []capture.Row{d.Change.New, d.Change.Old} {
			for k, v := range r {
				r[k] = shortValue(v)
			}
		}
	}
}

func shortValue(v any) any {
	switch x := v.(type) {
	case string:
		return redact.Value(x)
	case map[string]any:
		if kid, ok := x["kid"].(string); ok && pii.IsSealed(x) {
			return "(pii, sealed with key " + redact.Value(kid) + ")"
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = shortValue(e)
		}
		return out
	}
	return v
}
