package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
)

func resyncCmd(g *globals) *cobra.Command {
	var cfgPath, dataDir, flow, table string
	var chunk int
	c := &cobra.Command{
		Use:   "resync --flow FLOW [--table TABLE]",
		Short: "Recover from a lost or replaced replication slot: record the slot as it is now and backfill the flow's source tables",
		Long: `resync is the recovery duplex names when it refuses to stream because the
source's replication slot is not the one it created (dropped, created again,
moved by another client, invalidated with wal_status lost, or in another
cluster): the changes committed meanwhile never reached the flow.

resync acknowledges that loss: it creates the slot if it is missing (or
invalidated), records the slot as it is now in the source's duplex.slots,
and requests a backfill (duplex backfill) of every table the flow's source
publishes, or of TABLE only. duplex run performs the backfills (restart it
if its capture stopped on the slot); then duplex verify agrees. A row
deleted in the source while the slot was lost is not deleted in the target
by a backfill: duplex verify lists it.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, m, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			f := cfg.Flow(flow)
			if f == nil {
				return fmt.Errorf("resync: no flow %q in %s", flow, cfgPath)
			}
			ctx := cmd.Context()
			bus, err := openToolBus(ctx, cfg, dataDir)
			if err != nil {
				return err
			}
			defer bus.Close()
			return audited(ctx, g, cfg, bus, "resync", func() (string, error) {
				tables := m.SourceTables(f.From)
				if table != "" {
					qualified, err := m.PublishedTable(f.From, table)
					if err != nil {
						return "", fmt.Errorf("resync: %w", err)
					}
					tables = []string{qualified}
				}
				sys := cfg.Systems[f.From]
				conn, err := pgx.Connect(ctx, sys.DSN)
				if err != nil {
					return "", fmt.Errorf("resync: connect to %s: %w", f.From, err)
				}
				defer conn.Close(context.WithoutCancel(ctx))
				r, err := pgcapture.ResetSlot(ctx, conn, sys.Slot)
				if err != nil {
					return "", fmt.Errorf("resync: %w", err)
				}
				w := g.stdout
				fmt.Fprintf(w, "resync of flow %s (%s → %s), source slot %s\n", f.Name, f.From, f.To, sys.Slot)
				fmt.Fprintf(w, "  server:  system identifier %s\n", r.System)
				if r.Recorded {
					fmt.Fprintf(w, "  record:  created at %s in system %s on %s, last confirmed %s\n", r.Record.CreatedLSN, r.Record.SystemIdentifier,
						r.Record.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"), r.Record.ConfirmedLSN)
				} else {
					fmt.Fprintln(w, "  record:  none")
				}
				if r.Existed {
					fmt.Fprintf(w, "  slot:    confirmed_flush_lsn %s, wal_status %s\n", r.Confirmed, r.WALStatus)
				} else {
					fmt.Fprintln(w, "  slot:    missing")
				}
				if r.Problem != nil {
					fmt.Fprintf(w, "  found:   %s\n", r.Problem.Reason)
				} else {
					fmt.Fprintln(w, "  found:   the slot matches its record; resyncing anyway, as asked")
				}
				if r.Dropped {
					fmt.Fprintf(w, "  dropped: the invalidated slot %s\n", sys.Slot)
				}
				if r.Created {
					fmt.Fprintf(w, "  created: slot %s at %s\n", sys.Slot, r.Position)
				}
				fmt.Fprintf(w, "  recorded: slot %s from %s\n", sys.Slot, r.Position)
				var ids []string
				for _, t := range tables {
					id, err := pgcapture.RequestBackfill(ctx, conn, sys.Slot, t, "", chunk)
					if err != nil {
						return "", fmt.Errorf("resync: %w", err)
					}
					fmt.Fprintf(w, "  backfill %d of %s requested\n", id, t)
					ids = append(ids, fmt.Sprintf("%d of %s", id, t))
				}
				fmt.Fprintf(w, "%d backfill(s) requested. duplex run performs them (restart it if its capture of %s stopped on the slot); "+
					"follow them with duplex status, then check with duplex verify. Rows deleted in %s while the slot was lost are not deleted by a backfill.\n",
					len(tables), f.From, f.From)
				return fmt.Sprintf("slot %s recorded from %s; %d backfill(s) requested: %s", sys.Slot, r.Position, len(ids), strings.Join(ids, ", ")), nil
			})
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&dataDir, "data-dir", "", dataDirUsage)
	c.Flags().StringVar(&flow, "flow", "", "flow whose source slot was lost or replaced (e.g. to-erp)")
	c.Flags().StringVar(&table, "table", "", "only this source table, as in the mapping (default: every table the source publishes)")
	c.Flags().IntVar(&chunk, "chunk", 500, "rows per backfill chunk (1 to 100000)")
	_ = c.MarkFlagRequired("flow")
	return c
}
