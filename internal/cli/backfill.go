package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/internal/progress"
)

func backfillCmd(g *globals) *cobra.Command {
	var cfgPath, dataDir, flow, table, where string
	var chunk int
	var noWait bool
	c := &cobra.Command{
		Use:   "backfill --flow FLOW --table TABLE [--where CONDITION]",
		Short: "Re-read one source table into a flow while streaming goes on (watermark method: a live change is never overwritten by an older copy)",
		Long: `backfill asks the capture of the flow's source to re-read TABLE (optionally
only the rows matching CONDITION) in chunks, interleaved
with live changes by the watermark method of DBLog: a row changed while its
chunk is read is left to the live change. The request is kept in the source
database (duplex.backfills); a running 'duplex run' starts it within a
second, or the next one that starts. The command follows its progress
until it is done, unless --no-wait.

CONDITION is one boolean expression over the table's columns: literals,
comparisons, AND/OR/NOT, LIKE, IN (list), BETWEEN, IS [NOT] NULL, casts to
built-in types and a few built-in functions (lower, upper, length,
date_trunc, now, coalesce, ...), for example
  --where "country = 'DE' AND created_at > now() - interval '30 days'".
Anything else (a semicolon, comments, subqueries, other functions, other
tables' columns) is refused before anything is sent; the database then
checks the expression with EXPLAIN in a read-only transaction, and the
capture reads every chunk in a read-only transaction.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if chunk < 1 || chunk > pgcapture.MaxBackfillChunk {
				return fmt.Errorf("backfill: --chunk %d: want 1 to %d rows", chunk, pgcapture.MaxBackfillChunk)
			}
			cfg, m, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			f := cfg.Flow(flow)
			if f == nil {
				return fmt.Errorf("backfill: no flow %q in %s", flow, cfgPath)
			}
			ctx := cmd.Context()
			bus, err := openToolBus(ctx, cfg, dataDir)
			if err != nil {
				return err
			}
			defer bus.Close()
			return audited(ctx, g, cfg, bus, "backfill", func() (string, error) {
				qualified, err := m.PublishedTable(f.From, table)
				if err != nil {
					return "", fmt.Errorf("backfill: %w", err)
				}
				sys := cfg.Systems[f.From]
				conn, err := pgx.Connect(ctx, sys.DSN)
				if err != nil {
					return "", fmt.Errorf("backfill: connect to %s: %w", f.From, err)
				}
				defer conn.Close(context.WithoutCancel(ctx))
				id, err := pgcapture.RequestBackfill(ctx, conn, sys.Slot, qualified, where, chunk)
				if err != nil {
					return "", err
				}
				requested := fmt.Sprintf("backfill %d of %s requested for flow %s (slot %s)", id, qualified, f.Name, sys.Slot)
				fmt.Fprintln(g.stdout, requested)
				if noWait {
					return requested, nil
				}
				done, err := followBackfill(ctx, g, conn, id)
				return requested + "; " + done, err
			})
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&dataDir, "data-dir", "", dataDirUsage)
	c.Flags().StringVar(&flow, "flow", "", "flow whose source table is re-read (e.g. to-erp)")
	c.Flags().StringVar(&table, "table", "", "source table, as in the mapping (accounts or public.accounts)")
	c.Flags().StringVar(&where, "where", "", "condition selecting the rows to re-read: one boolean expression over the table's columns (default: all)")
	c.Flags().IntVar(&chunk, "chunk", 500, "rows per chunk (1 to 100000)")
	c.Flags().BoolVar(&noWait, "no-wait", false, "return once the backfill is requested")
	_ = c.MarkFlagRequired("flow")
	_ = c.MarkFlagRequired("table")
	return c
}

// followBackfill prints the progress of a backfill until it ends: a bar
// on a terminal, a line every few seconds otherwise.
func followBackfill(ctx context.Context, g *globals, conn *pgx.Conn, id int64) (string, error) {
	tty := progress.IsTerminal(g.stdout)
	var bar *progress.Bar
	lastLine := time.Time{}
	for {
		b, err := pgcapture.BackfillByID(ctx, conn, id)
		if err != nil {
			return "", err
		}
		if b.Status != "requested" && bar == nil && tty {
			bar = progress.New(g.stdout, "backfill "+b.Table)
		}
		switch b.Status {
		case "done":
			if bar != nil {
				bar.Done(b.Rows, b.Rows, "done")
			}
			took := time.Duration(0)
			if b.Started != nil && b.Finished != nil {
				took = b.Finished.Sub(*b.Started).Round(time.Millisecond)
			}
			done := fmt.Sprintf("backfill %d of %s done: %d rows re-read in %s", b.ID, b.Table, b.Rows, took)
			fmt.Fprintln(g.stdout, done)
			return done, nil
		case "failed":
			if bar != nil {
				fmt.Fprintln(g.stdout)
			}
			return "", fmt.Errorf("backfill %d of %s failed: %s", b.ID, b.Table, b.Error)
		}
		if bar != nil {
			bar.Update(b.Rows, b.Estimate)
		} else if time.Since(lastLine) > 5*time.Second {
			lastLine = time.Now()
			fmt.Fprintln(g.stdout, backfillLine(b))
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(g.stdout, "\nstopped following backfill %d; it goes on in duplex run\n", id)
			return "stopped following it; it goes on in duplex run", nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// backfillLine renders a backfill's progress for people.
func backfillLine(b *pgcapture.Backfill) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "backfill %d of %s", b.ID, b.Table)
	if b.Filter != "" {
		fmt.Fprintf(&sb, " where %s", clean(b.Filter))
	}
	fmt.Fprintf(&sb, ": %s, %s rows", b.Status, strconv.FormatInt(b.Rows, 10))
	if b.Estimate > 0 {
		fmt.Fprintf(&sb, " of about %d", b.Estimate)
	}
	if b.Error != "" {
		fmt.Fprintf(&sb, ": %s", clean(b.Error))
	}
	return sb.String()
}
