package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/transform"
)

// sinkFunc is a Sink made of a function.
type sinkFunc func(ctx context.Context, txs []*transform.Tx) (ApplyResult, error)

func (f sinkFunc) Apply(ctx context.Context, txs []*transform.Tx) (ApplyResult, error) {
	return f(ctx, txs)
}

// A permanent failure that no event can be blamed for (the target's
// schema does not fit) must stop the flow and retry with backoff, not
// spin: before, the loop dead-lettered nothing and tried again at once,
// forever, ignoring ctx.
func TestApplier_PermanentFailureWithoutEventsBacksOff(t *testing.T) {
	calls := 0
	sink := sinkFunc(func(context.Context, []*transform.Tx) (ApplyResult, error) {
		calls++
		return ApplyResult{}, &ApplyError{Kind: Permanent, Tx: -1, Event: -1, Err: errors.New("column sku does not exist")}
	})
	a := &Applier{cfg: ApplierConfig{Flow: "to-erp", Source: "crm", Sink: sink, Stats: &FlowStats{}, MaxWaitAttempts: 3}, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.apply(ctx, []*transform.Tx{{CommitLSN: 1, Last: true}}, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("apply returned %v, want the context's end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("apply did not return after its context ended")
	}
	if calls > 10 {
		t.Errorf("%d attempts in 0.7 s: the failure is retried without backing off", calls)
	}
	if st := a.cfg.Stats.Snapshot(); st.State != "retrying" || st.LastError == "" {
		t.Errorf("flow state %q, error %q: the stop must be visible", st.State, st.LastError)
	}
}
