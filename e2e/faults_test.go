package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/workload"
	"github.com/duplex-cdc/duplex/pipeline"
)

// load drives CRM traffic from several workers until stopped or until
// maxRows row changes were committed. Connection failures (a restarted
// CRM) are survived by reconnecting; a transaction that failed is not
// counted.
type load struct {
	rows   atomic.Int64
	txs    atomic.Int64
	errors atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startLoad(t *testing.T, dsn string, workers int, maxRows int64, perWorkerRate int) *load {
	return startLoadWith(t, dsn, workers, maxRows, perWorkerRate, false)
}

// startLoadWith is startLoad; keepOrders stops the CRM deleting orders
// (which the ERP refuses once it invoiced them).
func startLoadWith(t *testing.T, dsn string, workers int, maxRows int64, perWorkerRate int, keepOrders bool) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			gen := workload.New(uint64(w + 1))
			gen.KeepOrders = keepOrders
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			var pace <-chan time.Time
			if perWorkerRate > 0 {
				tk := time.NewTicker(time.Second / time.Duration(perWorkerRate))
				defer tk.Stop()
				pace = tk.C
			}
			for ctx.Err() == nil && (maxRows == 0 || l.rows.Load() < maxRows) {
				if pace != nil {
					select {
					case <-pace:
					case <-ctx.Done():
						return
					}
				}
				if conn == nil || conn.IsClosed() {
					c, err := pgx.Connect(ctx, dsn)
					if err != nil {
						l.errors.Add(1)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn = c
				}
				n, err := gen.Step(ctx, conn)
				if err != nil {
					l.errors.Add(1)
					conn.Close(context.Background())
					conn = nil
					continue
				}
				l.rows.Add(int64(n))
				l.txs.Add(1)
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() { l.cancel(); l.wg.Wait() }

func (l *load) waitRows(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, func() (bool, string) {
		return l.rows.Load() >= n, fmt.Sprintf("%d of %d row changes committed", l.rows.Load(), n)
	})
}

// TestCrash_KillDuplexDuringWorkload: duplex is killed with SIGKILL twice
// during 20,000 changes and restarted; the ERP ends equal to the CRM.
func TestCrash_KillDuplexDuringWorkload(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	d := f.startChild()
	f.waitSlot(t)
	const total = 20_000
	l := startLoad(t, f.env("CRM_DSN"), 3, total, 0)
	for i, at := range []int64{total / 3, 2 * total / 3} {
		l.waitRows(t, at, 2*time.Minute)
		d.kill(t)
		t.Logf("kill %d: duplex killed with SIGKILL after %d committed row changes", i+1, l.rows.Load())
		time.Sleep(300 * time.Millisecond)
		d = f.startChild()
	}
	l.waitRows(t, total, 3*time.Minute)
	l.stop()
	t.Logf("workload: %d transactions, %d row changes", l.txs.Load(), l.rows.Load())
	rep := f.waitConverged(2 * time.Minute)
	t.Logf("converged:\n%s", rep)
	d.stop(t)
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("duplex exited with %d after SIGTERM, want 0", code)
	}
	assertNoDeadLetters(t, f)
	// Compare again after the clean stop: nothing moved.
	if rep := f.compare(); !rep.Equal() {
		t.Errorf("after stop, ERP differs:\n%s", rep)
	}
}

// TestOutage_ERPThenNATSThenCRM: the ERP stops for a while, NATS stops and
// starts, the CRM restarts, all during a workload; each time the flow
// resumes by itself and the ERP converges.
func TestOutage_ERPThenNATSThenCRM(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	f.inProcess()
	ctx := context.Background()
	l := startLoad(t, f.env("CRM_DSN"), 2, 0, 100)
	step := func(name string, fault func()) {
		t.Helper()
		before := l.rows.Load()
		l.waitRows(t, before+500, time.Minute)
		t.Logf("%s (after %d row changes)", name, l.rows.Load())
		fault()
	}
	step("ERP down for 3s", func() {
		if err := f.erp.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if err := f.erp.Start(ctx); err != nil {
			t.Fatal(err)
		}
	})
	step("NATS down for 2s", func() {
		f.nats.Stop()
		time.Sleep(2 * time.Second)
		if err := f.nats.Start(); err != nil {
			t.Fatal(err)
		}
	})
	step("CRM crash and restart", func() {
		if err := f.crm.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if err := f.crm.Start(ctx); err != nil {
			t.Fatal(err)
		}
	})
	l.waitRows(t, l.rows.Load()+500, time.Minute)
	l.stop()
	t.Logf("workload: %d transactions, %d row changes, %d failed attempts during outages", l.txs.Load(), l.rows.Load(), l.errors.Load())
	rep := f.waitConverged(2 * time.Minute)
	t.Logf("converged:\n%s", rep)
	assertNoDeadLetters(t, f)
}

// waitSlot waits until the CRM slot of the fixture exists (duplex started).
func (f *fixture) waitSlot(t *testing.T) {
	t.Helper()
	c := f.conn("crm")
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, c, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, "duplex_crm_"+f.id)
		return n == 1, "slot not created yet"
	})
}

func assertNoDeadLetters(t *testing.T, f *fixture) {
	t.Helper()
	s, err := f.js().Stream(context.Background(), pipeline.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("%d dead letters, want none", info.State.Msgs)
	}
}
