package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/audit"
	"github.com/duplex-cdc/duplex/internal/config"
)

// who is the OS user running this command and the machine's host name;
// what cannot be read is "unknown" (a user without a passwd entry is
// "uid <n>").
func who() (string, string) {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	} else if uid := os.Getuid(); uid >= 0 {
		name = "uid " + strconv.Itoa(uid)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return name, host
}

// audited runs act, an operator action, and records it in DUPLEX_AUDIT
// and the log (audit.Record: who, when, the command line with secrets
// replaced, the outcome and act's detail or error). The stream is made
// ready first: when it cannot be, nothing is done. When the record cannot
// be stored after act ran, the command fails saying so (the log still
// has the record).
func audited(ctx context.Context, g *globals, cfg *config.Config, bus *app.Bus, command string, act func() (detail string, err error)) error {
	js := bus.JetStream()
	if err := audit.Ready(ctx, js, cfg.Stream.Replicas); err != nil {
		return fmt.Errorf("%s: nothing done, since its audit record could not be kept: %w", command, err)
	}
	detail, err := act()
	secrets := cfg.Secrets()
	r := audit.Record{Time: time.Now().UTC(), Command: command, Args: audit.RedactArgs(g.args, secrets...), Outcome: audit.OK, Detail: detail}
	r.User, r.Host = who()
	if err != nil {
		r.Outcome = audit.Failed
		r.Detail = strings.TrimPrefix(strings.TrimSpace(detail+"; "+err.Error()), "; ")
	}
	r.Detail = audit.Secrets(oneLine(r.Detail, audit.MaxDetail), secrets...)
	// Recorded even when the command was interrupted.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	seq, aerr := audit.Append(actx, js, cfg.Stream.Replicas, r)
	attrs := []any{slog.String("user", r.User), slog.String("host", r.Host), slog.String("command", r.Command),
		slog.String("args", strings.Join(r.Args, " ")), slog.String("outcome", r.Outcome), slog.String("detail", r.Detail)}
	log := g.logger()
	if aerr != nil {
		log.Error("operator action: its audit record could not be stored in "+audit.Stream, append(attrs, slog.Any("error", aerr))...)
		return errors.Join(err, fmt.Errorf("%s: its audit record could not be stored in %s: %w", command, audit.Stream, aerr))
	}
	log.Info("operator action", append(attrs, slog.Uint64("audit_seq", seq))...)
	return err
}

func auditCmd(g *globals) *cobra.Command {
	var t tool
	c := &cobra.Command{
		Use:   "audit",
		Short: "The record of operator actions (replay, dlq retry, dlq drop, backfill, resync)",
	}
	var limit int
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List operator actions from DUPLEX_AUDIT, oldest first: when, who, command, arguments, outcome",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("audit list: --limit %d: want 0 (all) or more", limit)
			}
			cfg, err := t.config()
			if err != nil {
				return err
			}
			bus, err := app.OpenBus(cmd.Context(), cfg, t.dataDir, nil, true)
			if err != nil {
				return err
			}
			defer bus.Close()
			rs, err := audit.List(cmd.Context(), bus.JetStream(), limit)
			if err != nil {
				return err
			}
			if asJSON {
				if rs == nil {
					rs = []audit.Record{}
				}
				return writeJSON(g.stdout, rs)
			}
			if len(rs) == 0 {
				fmt.Fprintln(g.stdout, "no operator actions recorded")
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tUSER\tHOST\tCOMMAND\tOUTCOME\tARGUMENTS\tDETAIL")
			for _, r := range rs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.UTC().Format(time.RFC3339), clean(r.User), clean(r.Host), clean(r.Command), clean(r.Outcome),
					clean(oneLine(strings.Join(r.Args, " "), 200)), clean(oneLine(r.Detail, 300)))
			}
			return tw.Flush()
		},
	}
	t.flags(list)
	list.Flags().IntVar(&limit, "limit", 50, "show the last N records (0: all)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.AddCommand(list)
	return c
}

// dataDirUsage is the help of --data-dir for commands that need NATS only
// for their audit record (backfill, resync).
const dataDirUsage = "data directory: the embedded NATS store when no duplex runs, for the audit record in DUPLEX_AUDIT (default $DUPLEX_DATA_DIR, then data_dir of the config, then ./data)"

// openToolBus connects a command to NATS as the operator, as the other
// tools do (app.OpenBus with attach); dataDir "" means $DUPLEX_DATA_DIR,
// then data_dir of the configuration.
func openToolBus(ctx context.Context, cfg *config.Config, dataDir string) (*app.Bus, error) {
	if dataDir == "" {
		dataDir = envOr("DUPLEX_DATA_DIR", cfg.DataDir)
	}
	return app.OpenBus(ctx, cfg, dataDir, nil, true)
}
