package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/progress"
	"github.com/duplex-cdc/duplex/internal/reconcile"
	"github.com/duplex-cdc/duplex/transform"
)

// verifyResult is one flow's comparison.
type verifyResult struct {
	Flow   string            `json:"flow"`
	From   string            `json:"from"`
	To     string            `json:"to"`
	Equal  bool              `json:"equal"`
	Report *reconcile.Report `json:"report"`
}

func verifyCmd(g *globals) *cobra.Command {
	var cfgPath, only string
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify",
		Short: "Reconcile both systems through the mapping: counts, missing and differing rows, money totals per currency and per day; exit 1 when anything differs",
		Long: `verify compares, for each flow, every entity both systems store, over the
fields the flow carries: row counts, rows missing on either side, rows whose
mapped fields differ (with key and fields), and money totals per currency
and per day. Both sides are read in key order and compared as they stream,
so memory stays bounded however large the tables. Exit status: 0 when
everything agrees, 1 when something differs, 2 when the check could not run.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, m, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			var results []verifyResult
			equal := true
			started := time.Now()
			for _, f := range cfg.Flows {
				if only != "" && f.Name != only {
					continue
				}
				rep, err := verifyFlow(ctx, g, cfg, m, f, !asJSON)
				if err != nil {
					fmt.Fprintln(g.stderr, "duplex:", cleanLines(err.Error()))
					return exitError{code: 2}
				}
				results = append(results, verifyResult{Flow: f.Name, From: f.From, To: f.To, Equal: rep.Equal(), Report: rep})
				equal = equal && rep.Equal()
			}
			if asJSON {
				if err := writeJSON(g.stdout, results); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					verdict := "agree"
					if !r.Equal {
						verdict = "DIFFER"
					}
					// The report quotes keys and values of both systems.
					fmt.Fprintf(g.stdout, "\nflow %s: fields %s carries to %s — %s\n%s", r.Flow, r.From, r.To, verdict, cleanLines(r.Report.String()))
				}
				if equal {
					fmt.Fprintf(g.stdout, "\nverify: both systems agree (%s)\n", time.Since(started).Round(time.Millisecond))
				} else {
					fmt.Fprintf(g.stdout, "\nverify: the systems DIFFER (%s)\n", time.Since(started).Round(time.Millisecond))
				}
			}
			if !equal {
				return exitError{code: 1}
			}
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&only, "flow", "", "verify only this flow")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func verifyFlow(ctx context.Context, g *globals, cfg *config.Config, m *transform.Mapping, f *config.Flow, show bool) (*reconcile.Report, error) {
	src, err := pgx.Connect(ctx, cfg.Systems[f.From].DSN)
	if err != nil {
		return nil, fmt.Errorf("verify %s: connect to %s: %w", f.Name, f.From, err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := pgx.Connect(ctx, cfg.Systems[f.To].DSN)
	if err != nil {
		return nil, fmt.Errorf("verify %s: connect to %s: %w", f.Name, f.To, err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	tty := show && progress.IsTerminal(g.stdout)
	var last time.Time
	prog := func(entity string, a, b int64, done bool) {
		switch {
		case tty:
			fmt.Fprintf(g.stdout, "\r\033[Kverify %s %s: %d / %d rows", f.Name, entity, a, b)
			if done {
				fmt.Fprintln(g.stdout)
			}
		case show && (done || time.Since(last) > 5*time.Second):
			last = time.Now()
			state := "…"
			if done {
				state = "done"
			}
			fmt.Fprintf(g.stdout, "verify %s %s: %d %s rows, %d %s rows %s\n", f.Name, entity, a, f.From, b, f.To, state)
		}
	}
	rep, err := reconcile.CompareWith(ctx, m, reconcile.Side{System: f.From, Conn: src}, reconcile.Side{System: f.To, Conn: dst}, prog)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", f.Name, err)
	}
	return rep, nil
}
