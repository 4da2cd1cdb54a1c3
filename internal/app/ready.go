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

// Ready checks NATS, every database (a query with a short timeout), every
// slot and every flow. A flow this instance stands by for is healthy
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
			err := a.ping(ctx, cfg.Systems[name].DSN)
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

func (a *App) ping(ctx context.Context, dsn string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(cctx, "SELECT 1")
	return err
}
