package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/demo"
)

// verifyOnly copies o.VerifyRows CRM rows to the ERP (initial snapshot),
// changes one amount in the ERP by one cent, and times `duplex verify` as
// a separate process, with its peak RSS.
func verifyOnly(ctx context.Context, env *demo.Env, o Options) (*Result, error) {
	fmt.Fprintf(o.Out, "verify: %d rows in the CRM, copied to the ERP …\n", o.VerifyRows)
	n, _, _, err := seedAndSnapshot(ctx, env, o, o.VerifyRows)
	if err != nil {
		return nil, fmt.Errorf("verify: copy: %w", err)
	}
	erp, err := pgx.Connect(ctx, env.ERP.DSN("erp"))
	if err != nil {
		return nil, err
	}
	defer erp.Close(context.WithoutCancel(ctx))
	var key string
	if err := erp.QueryRow(ctx, `UPDATE sales_order_lines SET unit_price = unit_price + 0.01
		WHERE ctid = (SELECT ctid FROM sales_order_lines ORDER BY crm_line_id LIMIT 1 OFFSET 12345) RETURNING crm_line_id::text`).Scan(&key); err != nil {
		return nil, fmt.Errorf("verify: change one cent: %w", err)
	}
	fmt.Fprintf(o.Out, "  %d rows on each side; order line %s changed by one cent in the ERP\n", n, key)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "verify", "--config", env.ConfigPath, "--flow", "to-erp")
	cmd.Env = append(os.Environ(), "CRM_DSN="+env.CRM.DSN("crm"), "ERP_DSN="+env.ERP.DSN("erp"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// VmHWM of the child's own address space (rusage's maxrss would count
	// this process's size at the fork), read until it exits.
	hwm := make(chan string, 1)
	stop := make(chan struct{})
	go func() {
		last := "unknown"
		for {
			if v := procStatus(cmd.Process.Pid, "VmHWM"); v != "unknown" {
				last = v
			}
			select {
			case <-stop:
				hwm <- last
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err = cmd.Wait()
	d := time.Since(t0)
	close(stop)
	peak := <-hwm
	code := cmd.ProcessState.ExitCode()
	if code != 1 && err != nil {
		return nil, fmt.Errorf("verify exited %d (want 1): %w\n%s", code, err, out.String())
	}
	if code != 1 {
		return nil, fmt.Errorf("verify exited %d (want 1)\n%s", code, out.String())
	}
	found := strings.Contains(out.String(), key)
	fmt.Fprintf(o.Out, "  duplex verify: %s for %d rows per side (%.0f rows/s per side), exit %d, the changed line named: %v, peak RSS %s (VmHWM, sampled every 20 ms)\n",
		d.Round(time.Millisecond), n, float64(n)/d.Seconds(), code, found, peak)
	if !found {
		return nil, fmt.Errorf("verify did not name the changed line %s:\n%s", key, out.String())
	}
	return &Result{Rows: n}, nil
}
