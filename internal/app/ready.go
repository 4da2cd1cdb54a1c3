package app

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Readiness is whether duplex is connected to both databases and NATS and
// its flows are running, with the reasons when not.
type Readiness struct {
	Ready bool `json:"ready"`
	// Role is "active", "standby" or "partly active" (lease.go): a
	// healthy standby is ready.
	Role    string            `json:"role"`
	Reasons []string          `json:"reasons,omitempty"`
	Checks  map[string]string `json:"checks"`
}

// Ready checks NATS, every database, every slot and every flow. A
// database is checked with SELECT 1 on one connection per system that the
// App keeps open for this, at most once per readyCacheTTL: within it, every
// caller gets the last result, so /readyz polled by many probes neither
// opens a connection per request nor queries the databases more than once
// every few seconds. A flow this instance stands by for is healthy
// ("standby"): an orchestrator must not restart a standby, which is what
// takes over when the active instance dies.
func (a *App) Ready(ctx context.Context) Readiness {
	r := Readiness{Ready: true, Role: a.Role(), Checks: map[string]string{}}
	fail := func(check, reason string) {
		r.Ready = false
		r.Checks[check] = reason
		r.Reasons = append(r.Reasons, check+": "+reason)
	}
	if down := a.bus.Disconnected(); len(down) == 0 {
		r.Checks["nats"] = "ok"
	} else {
		fail("nats", "not connected: "+strings.Join(down, ", "))
	}
	cfg := a.opts.Config
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range sortedSystems(cfg) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := a.probe(name).check(ctx, cfg.Systems[name].DSN)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fail("database "+name, err.Error())
			} else {
				r.Checks["database "+name] = "ok"
			}
		}()
	}
	wg.Wait()
	for name, st := range a.SrcStat {
		if c := st.Snapshot(); c.Stopped {
			fail("capture "+name, "stopped: "+c.LastError)
		}
	}
	for name, l := range a.Slots() {
		switch {
		case l.Error != "":
			fail("slot "+name, l.Error)
		case !l.Active:
			fail("slot "+name, fmt.Sprintf("slot %s is not being streamed", l.Slot))
		default:
			r.Checks["slot "+name] = "ok"
		}
	}
	for _, l := range a.Lag(ctx) {
		if f := cfg.Flow(l.Flow); l.State == "waiting" && f != nil && !l.WaitingSince.IsZero() && time.Since(l.WaitingSince) > f.WaitAlertAfter {
			// A wait is expected to last moments; a long one is a flow
			// that does not move (LastError names entity, key, field).
			fail("flow "+l.Flow, fmt.Sprintf("waiting for %s (wait_alert_after %s; dead-lettered after max_wait %s): %s",
				time.Since(l.WaitingSince).Round(time.Second), f.WaitAlertAfter, f.MaxWait, l.LastError))
			continue
		}
		if l.State == "running" || l.State == "waiting" || l.State == "standby" {
			r.Checks["flow "+l.Flow] = l.State
			continue
		}
		reason := l.State
		if l.LastError != "" {
			reason += ": " + l.LastError
		}
		fail("flow "+l.Flow, reason)
	}
	return r
}

// readyCacheTTL is how long a database check's result is reused.
const readyCacheTTL = 3 * time.Second

// dbProbe is the readiness check of one database: its connection and last
// result.
type dbProbe struct {
	mu   sync.Mutex
	conn *pgx.Conn
	at   time.Time
	err  error
}

// probe returns the check of a system (created on first use).
func (a *App) probe(system string) *dbProbe {
	a.probesMu.Lock()
	defer a.probesMu.Unlock()
	if a.probes == nil {
		a.probes = map[string]*dbProbe{}
	}
	p := a.probes[system]
	if p == nil {
		p = &dbProbe{}
		a.probes[system] = p
	}
	return p
}

// check returns the last result if it is younger than readyCacheTTL;
// otherwise runs SELECT 1 (connecting first if the kept connection is
// gone), with a 2-second timeout that does not depend on the caller's
// context: a caller that gives up does not leave a cancelled result for
// the others.
func (p *dbProbe) check(ctx context.Context, dsn string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < readyCacheTTL {
		return p.err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	p.err = nil
	if p.conn == nil || p.conn.IsClosed() {
		p.conn, p.err = pgx.Connect(cctx, dsn)
	}
	if p.err == nil {
		if _, p.err = p.conn.Exec(cctx, "SELECT 1"); p.err != nil {
			_ = p.conn.Close(cctx)
			p.conn = nil
		}
	}
	p.at = time.Now()
	return p.err
}

func (p *dbProbe) close(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		_ = p.conn.Close(ctx)
		p.conn = nil
	}
}
