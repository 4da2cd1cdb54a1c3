package pipeline_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

func leaseBucket(t *testing.T, ttl time.Duration) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	js := harness.NewJetStream(t)
	kv, err := pipeline.EnsureLeases(context.Background(), js, ttl, 1)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

// failingKV is a key-value bucket whose writes fail while fail is set
// (a holder cut off from NATS).
type failingKV struct {
	jetstream.KeyValue
	fail atomic.Bool
}

func (f *failingKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	if f.fail.Load() {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return f.KeyValue.Update(ctx, key, value, revision)
}

func (f *failingKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if f.fail.Load() {
		return 0, nats.ErrTimeout
	}
	return f.KeyValue.Create(ctx, key, value, opts...)
}

// span records when a holder's work ran.
type span struct {
	mu         sync.Mutex
	start, end []time.Time
	causes     []error
}

func (s *span) work(ctx context.Context) error {
	s.mu.Lock()
	s.start = append(s.start, time.Now())
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	s.end = append(s.end, time.Now())
	s.causes = append(s.causes, context.Cause(ctx))
	s.mu.Unlock()
	return nil
}

func (s *span) starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.start)
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLease_StandbyTakesOverAfterCleanStop: while the first holder runs,
// the second stands by (its work never starts); when the first stops, it
// releases the lease and the second takes over within a poll.
func TestLease_StandbyTakesOverAfterCleanStop(t *testing.T) {
	const ttl = 2 * time.Second
	js, kv := leaseBucket(t, ttl)
	a := pipeline.NewLease(kv, pipeline.FlowLeaseKey("to-erp"), pipeline.NewInstance("run"), ttl, nil)
	b := pipeline.NewLease(kv, pipeline.FlowLeaseKey("to-erp"), pipeline.NewInstance("run"), ttl, nil)
	var sa, sb span
	actx, stopA := context.WithCancel(context.Background())
	bctx, stopB := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(actx, sa.work) })
	waitUntil(t, 5*time.Second, "first holder starts", func() bool { return sa.starts() == 1 })
	wg.Go(func() { _ = b.Run(bctx, sb.work) })
	defer func() { stopA(); stopB(); wg.Wait() }()
	// Several TTLs: the first keeps renewing, the second keeps waiting.
	time.Sleep(2 * ttl)
	if n := sb.starts(); n != 0 {
		t.Fatalf("standby started %d times while the holder lives", n)
	}
	if held, h, ok := b.State(); held || !ok || h.ID == "" {
		t.Errorf("standby State = %v %v %v, want not held, holder known", held, h, ok)
	}
	h, ok, err := pipeline.ReadLease(context.Background(), js, pipeline.FlowLeaseKey("to-erp"))
	if err != nil || !ok {
		t.Fatalf("ReadLease = %v %v", ok, err)
	}
	if held, ah, _ := a.State(); !held || ah.ID != h.ID {
		t.Errorf("holder = %s, want the first instance %s", h.ID, ah.ID)
	}
	stopA()
	stopped := time.Now()
	waitUntil(t, ttl, "standby takes over after a clean stop", func() bool { return sb.starts() == 1 })
	t.Logf("takeover %s after the clean stop", time.Since(stopped))
}

// TestLease_LostLeaseStopsBeforeAnotherStarts: a holder whose renewals
// fail stops its work (cause ErrLeaseLost) about half a TTL after its last
// renewal, before the key expires and the standby starts.
func TestLease_LostLeaseStopsBeforeAnotherStarts(t *testing.T) {
	const ttl = 2 * time.Second
	_, kv := leaseBucket(t, ttl)
	cut := &failingKV{KeyValue: kv}
	_, _, sa, sb := holderAndStandby(t, ttl, cut, kv)
	time.Sleep(ttl)
	cutAt := time.Now()
	cut.fail.Store(true)
	waitUntil(t, 3*ttl, "standby takes over", func() bool { return sb.starts() == 1 })
	sa.mu.Lock()
	defer sa.mu.Unlock()
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if len(sa.end) != 1 {
		t.Fatalf("first holder stopped %d times, want once", len(sa.end))
	}
	if !errors.Is(sa.causes[0], pipeline.ErrLeaseLost) {
		t.Errorf("first holder's cause = %v, want ErrLeaseLost", sa.causes[0])
	}
	if !sa.end[0].Before(sb.start[0]) {
		t.Errorf("first holder stopped at %s, after the standby started at %s", sa.end[0], sb.start[0])
	}
	if gap := sb.start[0].Sub(sa.end[0]); gap < ttl/4 {
		t.Errorf("the standby started %s after the holder stopped, want a margin of at least %s", gap, ttl/4)
	}
	t.Logf("renewals cut at 0; holder fenced at %s; standby started at %s", sa.end[0].Sub(cutAt), sb.start[0].Sub(cutAt))
}

// TestLease_LostLeaseTakenBackBeforeItExpires: a holder whose renewals
// went unanswered for half a TTL (a slow NATS round trip under load)
// stops its work, and once NATS answers again it takes its own key back
// at once, before the key expires: the standby never starts, so the units
// of one instance are not scattered over two by a slow moment.
func TestLease_LostLeaseTakenBackBeforeItExpires(t *testing.T) {
	const ttl = 2 * time.Second
	_, kv := leaseBucket(t, ttl)
	slow := &failingKV{KeyValue: kv}
	a, _, sa, sb := holderAndStandby(t, ttl, slow, kv)
	time.Sleep(ttl / 2)
	slow.fail.Store(true)
	waitUntil(t, 2*ttl, "holder fenced", func() bool {
		sa.mu.Lock()
		defer sa.mu.Unlock()
		return len(sa.end) == 1
	})
	slow.fail.Store(false)
	waitUntil(t, 2*ttl, "holder takes its lease back", func() bool { return sa.starts() == 2 })
	time.Sleep(2 * ttl)
	if n := sb.starts(); n != 0 {
		t.Fatalf("standby started %d times; the holder had taken its lease back before it expired", n)
	}
	sa.mu.Lock()
	defer sa.mu.Unlock()
	if !errors.Is(sa.causes[0], pipeline.ErrLeaseLost) {
		t.Errorf("first stop's cause = %v, want ErrLeaseLost", sa.causes[0])
	}
	// The key lives a TTL after the last renewal and the holder stops half
	// a TTL after it: only taking its own key back restarts it sooner than
	// half a TTL after it stopped.
	if gap := sa.start[1].Sub(sa.end[0]); gap >= ttl/2 {
		t.Errorf("restarted %s after stopping, want before the key's expiry (< %s)", gap, ttl/2)
	}
	if held, h, _ := a.State(); !held || h.ID == "" {
		t.Errorf("holder State = %v %v, want held", held, h)
	}
}

// TestLease_YieldHandsTheLeaseOver: Yield stops the holder's work (cause
// ErrLeaseYielded) and releases the key; the standby acquires it within
// a poll, and the one that yielded stays out for a TTL.
func TestLease_YieldHandsTheLeaseOver(t *testing.T) {
	const ttl = 2 * time.Second
	_, kv := leaseBucket(t, ttl)
	a, b, sa, sb := holderAndStandby(t, ttl, kv, kv)
	time.Sleep(ttl / 2)
	b.Yield() // not held: nothing happens
	time.Sleep(ttl / 2)
	if sb.starts() != 0 || sa.starts() != 1 {
		t.Fatalf("a Yield by the standby changed something: holder started %d times, standby %d", sa.starts(), sb.starts())
	}
	a.Yield()
	waitUntil(t, ttl/2, "standby takes the yielded lease", func() bool { return sb.starts() == 1 })
	time.Sleep(ttl / 2)
	sa.mu.Lock()
	defer sa.mu.Unlock()
	if len(sa.end) != 1 || !errors.Is(sa.causes[0], pipeline.ErrLeaseYielded) {
		t.Fatalf("holder stopped %d times (causes %v), want once with ErrLeaseYielded", len(sa.end), sa.causes)
	}
	if len(sa.start) != 1 {
		t.Errorf("the instance that yielded started again (%d starts)", len(sa.start))
	}
}

// holderAndStandby starts a holder of the to-erp flow's lease on kvA and,
// once its work runs, a standby on kvB; both stop when the test ends.
func holderAndStandby(t *testing.T, ttl time.Duration, kvA, kvB jetstream.KeyValue) (a, b *pipeline.Lease, sa, sb *span) {
	t.Helper()
	a = pipeline.NewLease(kvA, pipeline.FlowLeaseKey("to-erp"), pipeline.NewInstance("run"), ttl, nil)
	b = pipeline.NewLease(kvB, pipeline.FlowLeaseKey("to-erp"), pipeline.NewInstance("run"), ttl, nil)
	sa, sb = &span{}, &span{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { _ = a.Run(ctx, sa.work) })
	waitUntil(t, 5*time.Second, "first holder starts", func() bool { return sa.starts() == 1 })
	wg.Go(func() { _ = b.Run(ctx, sb.work) })
	return a, b, sa, sb
}
