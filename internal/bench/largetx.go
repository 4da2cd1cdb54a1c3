package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// largeTx commits one CRM transaction of o.LargeTxRows rows while duplex
// runs as a separate process (`duplex run`, against a NATS server of this
// process) and reports how long it took to reach the ERP, whether a reader
// of the ERP ever saw part of it, and the duplex process's peak RSS.
func largeTx(ctx context.Context, env *demo.Env, o Options) (*Result, error) {
	cmd, logPath, stopDuplex, err := startDuplex(ctx, env, o, "largetx", nil)
	if err != nil {
		return nil, err
	}
	defer stopDuplex()
	crm, erp, err := env.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer crm.Close(context.WithoutCancel(ctx))
	defer erp.Close(context.WithoutCancel(ctx))

	// A first account proves duplex streams.
	probe := uuid.New()
	if _, err := crm.Exec(ctx, `INSERT INTO accounts (id, name, currency) VALUES ($1, 'probe', 'EUR')`, probe); err != nil {
		return nil, err
	}
	if _, err := waitQuery(ctx, erp, fmt.Sprintf(`SELECT count(*) > 0 FROM customers WHERE crm_account_id = '%s'`, probe), 2*time.Minute); err != nil {
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("duplex did not start streaming: %w; its log:\n%s", err, b)
	}
	before := procStatus(cmd.Process.Pid, "VmRSS")

	var stop atomic.Bool
	var partial atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		reader, err := pgx.Connect(ctx, env.ERP.DSN("erp"))
		if err != nil {
			return
		}
		defer reader.Close(context.WithoutCancel(ctx))
		for !stop.Load() {
			n, err := count(ctx, reader, "sales_order_lines")
			if err == nil && n != 0 && n < o.LargeTxRows*6/9 {
				partial.Add(1)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	fmt.Fprintf(o.Out, "large transaction: one CRM transaction of %d rows (accounts, orders, lines) while duplex runs as its own process …\n", o.LargeTxRows)
	t0 := time.Now()
	n, err := bulk(ctx, env.CRM.DSN("crm"), o.LargeTxRows, o.LargeTxRows)
	if err != nil {
		return nil, err
	}
	committed := time.Now()
	end, err := waitCount(ctx, erp, n+1, 60*time.Minute, "customers", "sales_orders", "sales_order_lines")
	stop.Store(true)
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("large transaction (log %s): %w", logPath, err)
	}
	d := end.Sub(committed)
	fmt.Fprintf(o.Out, "  inserted and committed in the CRM in %s\n", committed.Sub(t0).Round(time.Millisecond))
	fmt.Fprintf(o.Out, "  duplex: %d rows in the ERP %s after the CRM commit (%.0f rows/s); readers saw part of it %d times\n",
		n, d.Round(time.Millisecond), float64(n)/d.Seconds(), partial.Load())
	fmt.Fprintf(o.Out, "  duplex process RSS: %s before, peak %s (VmHWM)\n", before, procStatus(cmd.Process.Pid, "VmHWM"))
	if partial.Load() > 0 {
		return nil, fmt.Errorf("large transaction: a reader saw part of it %d times", partial.Load())
	}
	return &Result{Rows: n, DuplexBulk: d, DuplexRowsPerSec: float64(n) / d.Seconds()}, nil
}

// procStatus reads a field of /proc/PID/status (Linux), or "unknown".
func procStatus(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			return strings.TrimSpace(strings.TrimPrefix(line, field+":"))
		}
	}
	return "unknown"
}

// startDuplex runs `duplex run` as a separate process against nats (a NATS
// server of this process, started when nil), so that its memory can be
// measured alone.
func startDuplex(ctx context.Context, env *demo.Env, o Options, name string, nats *harness.NATS) (*exec.Cmd, string, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", nil, err
	}
	own := nats == nil
	if own {
		if nats, err = harness.StartNATS(harness.NATSOptions{Logger: o.Logger}); err != nil {
			return nil, "", nil, err
		}
	}
	closeNATS := func() {
		if own {
			nats.Close()
		}
	}
	logPath := filepath.Join(env.Dir, "duplex-"+name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		closeNATS()
		return nil, "", nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "run", "--config", env.URLConfigPath, "--data-dir", filepath.Join(env.Dir, "child"),
		"--log-level", "info", "--listen", "off")
	cmd.Env = append(os.Environ(), "CRM_DSN="+env.CRM.DSN("crm"), "ERP_DSN="+env.ERP.DSN("erp"), "NATS_URL="+nats.URL())
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		closeNATS()
		return nil, "", nil, fmt.Errorf("start duplex: %w", err)
	}
	return cmd, logPath, func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		lf.Close()
		closeNATS()
	}, nil
}
