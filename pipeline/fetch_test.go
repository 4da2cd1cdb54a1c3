package pipeline

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/transform"
)

// A backlog larger than one batch: JetStream ends a pull request that
// asked for a byte limit too with a "409 Batch Completed" status once it
// sent the whole batch. That is the normal end of a full fetch, not an
// error; before, fetch reported it, the flow session ended, dropped the
// batch it had in hand and started again from the ack floor, so a flow
// with a backlog of more than one batch crawled with backoff and never
// caught up (seen against a NATS cluster after a node was killed).
func TestApplier_FetchFullBatchIsNotAnError(t *testing.T) {
	js := fetchSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const total = 700
	publishN(ctx, t, js, total)
	a := fetchApplier(t, js)
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < total && ctx.Err() == nil {
		msgs, err := a.fetch(ctx, cons)
		if err != nil {
			t.Fatalf("fetch after %d of %d messages: %v", got, total, err)
		}
		for _, m := range msgs {
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
		}
		got += len(msgs)
	}
	if got != total {
		t.Errorf("fetched %d messages, want %d", got, total)
	}
	// The status itself, as a route can bring it: the normal end of a
	// pull request.
	if !fetchEnded(fmt.Errorf("wrapped: %w", jetstream.ErrBatchCompleted)) {
		t.Errorf("409 Batch Completed is taken as an error")
	}
}

// A delivery of the flow's consumer that never reached the applier (here
// taken by another pull request, as a message lost on a route while a
// cluster node dies): fetch must report the gap and hand on nothing after
// it, or the ack-all of a later message would acknowledge the lost one
// unapplied.
func TestApplier_FetchReportsDeliveryGap(t *testing.T) {
	js := fetchSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publishN(ctx, t, js, 10)
	a := fetchApplier(t, js)
	a.cfg.Batch = 3
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := a.fetch(ctx, cons)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("first fetch: %d messages, %v; want 3", len(msgs), err)
	}
	// Deliveries 4 and 5 go elsewhere and are lost.
	lost, err := cons.Fetch(2, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range lost.Messages() {
	}
	msgs, err = a.fetch(ctx, cons)
	if !errors.Is(err, errDeliveryGap) || len(msgs) != 0 {
		t.Fatalf("fetch after lost deliveries: %d messages, %v; want none and a delivery gap", len(msgs), err)
	}
	// The next session rewinds to the ack floor: everything comes again.
	if cons, err = a.ensureConsumer(ctx); err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < 10 && ctx.Err() == nil {
		msgs, err := a.fetch(ctx, cons)
		if err != nil {
			t.Fatalf("fetch after rewind: %v", err)
		}
		got += len(msgs)
	}
	if got != 10 {
		t.Errorf("after the rewind %d messages came, want 10", got)
	}
}

func fetchApplier(t *testing.T, js jetstream.JetStream) *Applier {
	t.Helper()
	sink := sinkFunc(func(context.Context, []*transform.Tx) (ApplyResult, error) { return ApplyResult{}, nil })
	a, err := NewApplier(js, ApplierConfig{Flow: "to-erp", Source: "crm", Sink: sink, Batch: 256})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func publishN(ctx context.Context, t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	for i := range n {
		if _, err := js.Publish(ctx, Subject("crm"), []byte(`{"v":1}`), jetstream.WithMsgID(fmt.Sprintf("crm:%d:0", i))); err != nil {
			t.Fatal(err)
		}
	}
}

func fetchSetup(t *testing.T) jetstream.JetStream {
	t.Helper()
	n := harness.NewNATS(t)
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureStreams(context.Background(), js, StreamConfig{Sources: []string{"crm"}}); err != nil {
		t.Fatal(err)
	}
	return js
}
