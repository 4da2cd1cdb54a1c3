package app

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestLeases_SplitUnitsGatherOnOneInstance: two running instances that
// hold the four units of one configuration between them (3 and 1, as a
// late renewal under load left them in the soak) converge: the one with
// fewer yields, the other acquires them, and the split does not come back.
func TestLeases_SplitUnitsGatherOnOneInstance(t *testing.T) {
	const ttl = 2 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	js := harness.NewJetStream(t)
	kv, err := pipeline.EnsureLeases(ctx, js, ttl, 1)
	if err != nil {
		t.Fatal(err)
	}
	newSet := func() *leases {
		l := &leases{kv: kv, self: pipeline.NewInstance("run"), ttl: ttl, flows: map[string]*pipeline.Lease{}, captures: map[string]*pipeline.Lease{}}
		for _, f := range []string{"to-erp", "to-crm"} {
			l.flows[f] = pipeline.NewLease(kv, pipeline.FlowLeaseKey(f), l.self, ttl, nil)
		}
		for _, s := range []string{"crm", "erp"} {
			l.captures[s] = pipeline.NewLease(kv, pipeline.CaptureLeaseKey(s), l.self, ttl, nil)
		}
		return l
	}
	a, b := newSet(), newSet()
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	work := func(ctx context.Context) error { <-ctx.Done(); return nil }
	run := func(ls *pipeline.Lease) { wg.Go(func() { _ = ls.Run(ctx, work) }) }
	held := func(l *leases) (n int) {
		for _, ls := range l.all() {
			if h, _, _ := ls.State(); h {
				n++
			}
		}
		return n
	}
	wait := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s (a holds %d, b holds %d)", what, timeout, held(a), held(b))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// b starts first on one unit, a on the other three; then each stands
	// by for the rest.
	run(b.captures["erp"])
	wait("b holds capture.erp", 5*time.Second, func() bool { return held(b) == 1 })
	run(a.flows["to-erp"])
	run(a.flows["to-crm"])
	run(a.captures["crm"])
	wait("a holds three units", 5*time.Second, func() bool { return held(a) == 3 })
	run(a.captures["erp"])
	run(b.flows["to-erp"])
	run(b.flows["to-crm"])
	run(b.captures["crm"])
	if k, split, err := a.keeper(ctx); err != nil || !split || k != a.self.ID {
		t.Fatalf("a.keeper = %q %v %v, want a (%s), split", k, split, err, a.self.ID)
	}
	if k, split, err := b.keeper(ctx); err != nil || !split || k != a.self.ID {
		t.Fatalf("b.keeper = %q %v %v, want a (%s), split", k, split, err, a.self.ID)
	}
	wg.Go(func() { a.converge(ctx, slog.New(slog.DiscardHandler)) })
	wg.Go(func() { b.converge(ctx, slog.New(slog.DiscardHandler)) })
	wait("the units gather on a", 8*ttl, func() bool { return held(a) == 4 && held(b) == 0 })
	time.Sleep(3 * ttl)
	if held(a) != 4 || held(b) != 0 {
		t.Fatalf("after converging: a holds %d, b holds %d, want 4 and 0", held(a), held(b))
	}
}
