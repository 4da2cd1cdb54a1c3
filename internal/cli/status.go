package cli

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/spf13/cobra"
)

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
				st, live, err := t.running(ctx)
				if err != nil {
					return err
				}
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
					if err := writeJSON(g.stdout, st); err != nil {
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
		fmt.Fprintf(w, "duplex is running (status at %s); NATS %s, connected %v\n", st.At.Format(time.RFC3339), clean(st.NATS.URL), st.NATS.Connected)
		fmt.Fprintf(w, "this instance: %s, %s\n\n", clean(st.Instance), clean(st.Role))
	} else {
		fmt.Fprintf(w, "no running duplex answered; read from PostgreSQL and JetStream at %s\n\n", st.At.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLOW\tSTATE\tWAL BEHIND\tPENDING\tSECONDS BEHIND\tLAST APPLIED\tAPPLIED AT\tDEAD LETTERS\tACTIVE INSTANCE")
	for _, f := range st.Flows {
		last := "-"
		if f.LastLSN != "" {
			last = clean(f.LastLSN)
			if f.LastCommit != nil {
				last += " @ " + f.LastCommit.Format(time.RFC3339)
			}
		}
		at := "-"
		if f.LastApplied != nil {
			at = f.LastApplied.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s (%s→%s)\t%s\t%s\t%d\t%.1f\t%s\t%s\t%d\t%s\n", clean(f.Name), clean(f.From), clean(f.To), clean(f.State), humanBytes(f.WALBehind), f.Pending, f.SecondsBehind, last, at, f.DeadLetters, clean(orDash(f.ActiveInstance)))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tSLOT\tSTREAMING\tWAL BEHIND\tWAL RETAINED\tHELD\tACTIVE INSTANCE")
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
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\n", clean(s.System), clean(slot), s.Slot.Active, humanBytes(s.Slot.BehindBytes), humanBytes(s.Slot.RetainedBytes),
			clean(held), clean(orDash(s.ActiveInstance)))
	}
	tw.Flush()
	for _, s := range st.Sources {
		if len(s.OwnershipViolations) > 0 {
			var vs []string
			for k, n := range s.OwnershipViolations {
				vs = append(vs, fmt.Sprintf("%s %d", k, n))
			}
			slices.Sort(vs)
			fmt.Fprintf(w, "\n%s: ownership violations (entity/kind count): %s", s.System, strings.Join(vs, ", "))
		}
	}
	for _, s := range st.Sources {
		if s.Stopped {
			fmt.Fprintf(w, "\ncapture %s stopped: %s", clean(s.System), clean(s.LastError))
		}
	}
	for _, f := range st.Flows {
		if f.LastError != "" {
			fmt.Fprintf(w, "\n%s: %s", clean(f.Name), clean(f.LastError))
		}
	}
	for _, e := range st.Errors {
		fmt.Fprintf(w, "\nerror: %s", clean(e))
	}
	if len(st.DeadLetters) > 0 {
		fmt.Fprintf(w, "\n%d recent dead letters (duplex dlq list)\n", len(st.DeadLetters))
	}
	fmt.Fprintln(w)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
