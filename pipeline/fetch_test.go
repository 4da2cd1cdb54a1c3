package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/transform"
)

// A backlog larger than one batch, fetched through the session's one
// pull subscription: every message comes, in order, with no delivery
// reported missing. (Before, each fetch was its own pull request; a full
// one ended with "409 Batch Completed", which was taken as an error, and
// against a cluster whole responses to new inboxes were lost.)
func TestApplier_FetchFullBatchIsNotAnError(t *testing.T) {
	js := fetchSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const total = 700
	publishN(ctx, t, js, total)
	a := fetchApplier(t, js)
	p := openTestPuller(ctx, t, a)
	got := 0
	for got < total && ctx.Err() == nil {
		msgs, err := a.fetch(ctx, p)
		if err != nil {
			t.Fatalf("fetch after %d of %d messages: %v", got, total, err)
		}
		if len(msgs) > a.cfg.Batch {
			t.Fatalf("fetch returned %d messages, more than a batch", len(msgs))
		}
		for _, m := range msgs {
			if seq := seqOf(m); seq != uint64(got+1) {
				t.Fatalf("message %d has stream sequence %d", got+1, seq)
			}
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
			got++
		}
	}
	if got != total {
		t.Errorf("fetched %d messages, want %d", got, total)
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
	publishN(ctx, t, js, 20)
	a := fetchApplier(t, js)
	a.cfg.Batch = 3
	p := openTestPuller(ctx, t, a)
	msgs, err := a.fetch(ctx, p)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("first fetch: %d messages, %v; want 3", len(msgs), err)
	}
	// Two deliveries go elsewhere and are lost (the subscription may
	// already hold the next few; those come, then the gap).
	lost, err := p.cons.Fetch(2, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var lostSeqs []uint64
	for m := range lost.Messages() {
		lostSeqs = append(lostSeqs, seqOf(m))
	}
	if len(lostSeqs) != 2 {
		t.Fatalf("took %d deliveries elsewhere, want 2", len(lostSeqs))
	}
	next := uint64(4)
	for i := 0; ; i++ {
		if i == 10 {
			t.Fatal("no delivery gap reported after 10 fetches")
		}
		msgs, err := a.fetch(ctx, p)
		if errors.Is(err, errDeliveryGap) {
			if len(msgs) != 0 {
				t.Fatalf("fetch reporting the gap returned %d messages", len(msgs))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if seq := seqOf(m); seq != next || seq >= lostSeqs[0] {
				t.Fatalf("got stream sequence %d past the lost deliveries %v", seq, lostSeqs)
			}
			next++
		}
	}
	p.close()
	// The next session rewinds to the ack floor: everything comes again.
	p = openTestPuller(ctx, t, a)
	got, again := 0, 0
	for got < 20 && ctx.Err() == nil {
		msgs, err := a.fetch(ctx, p)
		if errors.Is(err, errDeliveryGap) && again < 3 {
			// Seen once under the race detector: a delivery of the
			// consumer just re-created went astray. The flow ends such a
			// session and rewinds again, and so does the test.
			t.Logf("fetch after rewind: %v; rewinding again", err)
			again++
			p.close()
			p = openTestPuller(ctx, t, a)
			got = 0
			continue
		}
		if err != nil {
			t.Fatalf("fetch after rewind: %v", err)
		}
		got += len(msgs)
	}
	if got != 20 {
		t.Errorf("after the rewind %d messages came, want 20", got)
	}
}

// openTestPuller starts a flow session's consumer and subscription, as
// session does.
func openTestPuller(ctx context.Context, t *testing.T, a *Applier) *puller {
	t.Helper()
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.openPuller(cons)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
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
	js := harness.NewJetStream(t)
	if err := EnsureStreams(context.Background(), js, StreamConfig{Sources: []string{"crm"}}); err != nil {
		t.Fatal(err)
	}
	return js
}

// A steady trickle of messages, each a millisecond or so after the last,
// does not hold a batch open: fetch returns what came within fetchLinger
// of its first message, not everything until Batch is full. With a fixed
// wait of 5 ms for every next message (before), the batch grew for as
// long as the trickle lasted (here 256 messages, about a quarter of a
// second), and every transaction in it waited that long to be applied.
func TestApplier_FetchDoesNotWaitForATrickle(t *testing.T) {
	js := fetchSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := fetchApplier(t, js)
	p := openTestPuller(ctx, t, a)
	pubCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		for i := 0; pubCtx.Err() == nil; i++ {
			if _, err := js.Publish(pubCtx, Subject("crm"), []byte(`{"v":1}`), jetstream.WithMsgID(fmt.Sprintf("crm:%d:0", i))); err != nil && pubCtx.Err() == nil {
				done <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
		done <- nil
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("publish: %v", err)
		}
	}()
	if _, err := a.fetch(ctx, p); err != nil { // the first message: the trickle has begun
		t.Fatal(err)
	}
	for range 5 {
		start := time.Now()
		msgs, err := a.fetch(ctx, p)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		// Generous: the first message may take a while under load, the
		// linger is 2 ms; a batch filled by the trickle takes 256 ms.
		if took > 100*time.Millisecond || len(msgs) == a.cfg.Batch {
			t.Fatalf("fetch took %s for %d messages of a trickle; want well under 100ms and less than a full batch", took, len(msgs))
		}
	}
}

// A batch holds at most batchMaxBytes of messages: a backlog of large
// messages (snapshot chunks) comes in several batches, each taken into
// memory, decoded and applied alone, in order and without a gap.
func TestApplier_FetchBoundsABatchByBytes(t *testing.T) {
	js := fetchSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const total, size = 12, 600 << 10
	body := []byte(`{"v":1,"pad":"` + strings.Repeat("x", size) + `"}`)
	for i := range total {
		if _, err := js.Publish(ctx, Subject("crm"), body, jetstream.WithMsgID(fmt.Sprintf("crm:%d:0", i))); err != nil {
			t.Fatal(err)
		}
	}
	a := fetchApplier(t, js)
	p := openTestPuller(ctx, t, a)
	got, batches := 0, 0
	for got < total && ctx.Err() == nil {
		msgs, err := a.fetch(ctx, p)
		if err != nil {
			t.Fatalf("fetch after %d of %d messages: %v", got, total, err)
		}
		if len(msgs) == 0 {
			continue
		}
		batches++
		bytes := 0
		for _, m := range msgs {
			if seq := seqOf(m); seq != uint64(got+1) {
				t.Fatalf("message %d has stream sequence %d", got+1, seq)
			}
			bytes += msgBytes(m)
			got++
		}
		if bytes > batchMaxBytes {
			t.Fatalf("a batch of %d messages holds %d bytes, more than %d", len(msgs), bytes, batchMaxBytes)
		}
		if err := msgs[len(msgs)-1].Ack(); err != nil { // the consumer acknowledges all before it
			t.Fatal(err)
		}
	}
	if got != total || batches < 2 {
		t.Errorf("fetched %d of %d messages in %d batches", got, total, batches)
	}
}
