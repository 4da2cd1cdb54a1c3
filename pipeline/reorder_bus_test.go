package pipeline_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// lsnSink applies like the PostgreSQL sink as far as order goes: a
// streamed transaction whose commit LSN is not above the highest applied
// is skipped as already applied.
type lsnSink struct {
	mu      sync.Mutex
	applied []capture.LSN
	skipped []capture.LSN
	seen    capture.LSN
}

func (s *lsnSink) Apply(_ context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range txs {
		if t.CommitLSN <= s.seen {
			s.skipped = append(s.skipped, t.CommitLSN)
			continue
		}
		s.seen = t.CommitLSN
		s.applied = append(s.applied, t.CommitLSN)
	}
	return pipeline.ApplyResult{}, nil
}

func (s *lsnSink) AppliedLSN(context.Context) (capture.LSN, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen, nil
}

func (s *lsnSink) result() ([]capture.LSN, []capture.LSN) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]capture.LSN(nil), s.applied...), append([]capture.LSN(nil), s.skipped...)
}

// publishFour runs a capture of transactions 100, 200, 300 and 400 (one
// account each), checks the PrevLSN chain of what it published, and
// returns the message bodies with the stream purged.
func publishFour(ctx context.Context, t *testing.T, js jetstream.JetStream, m *transform.Mapping) [][]byte {
	t.Helper()
	var chunks []*capture.Chunk
	ids := []string{"0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b02", "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b03", "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b04"}
	for i, id := range ids {
		lsn := capture.LSN(100 * (i + 1))
		chunks = append(chunks, &capture.Chunk{Tx: capture.TxInfo{System: "crm", CommitLSN: lsn, EndLSN: lsn + 10, CommitTime: time.Now(), Xid: uint32(i + 1)},
			Last: true, Changes: []capture.Change{account(id, "1.00")}})
	}
	src := &fakeSource{chunks: chunks, done: make(chan struct{})}
	runProducer(t, js, m, src)

	// Read what the capture published, check the chain, and store it
	// again with 200 moved to the end.
	s, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	var bodies [][]byte
	var prev capture.LSN
	for seq := uint64(1); seq <= 4; seq++ {
		msg, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var tx transform.Tx
		if err := json.Unmarshal(msg.Data, &tx); err != nil {
			t.Fatal(err)
		}
		if tx.PrevLSN != prev {
			t.Errorf("message %d (transaction %s) has prev_lsn %s, want %s", seq, tx.CommitLSN, tx.PrevLSN, prev)
		}
		prev = tx.CommitLSN
		bodies = append(bodies, msg.Data)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	return bodies
}

func republish(ctx context.Context, t *testing.T, js jetstream.JetStream, bodies [][]byte) {
	t.Helper()
	for _, b := range bodies {
		msg := nats.NewMsg(pipeline.Subject("crm"))
		msg.Data = b
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
}

// runUntil runs a flow into sink until it has seen n transactions (or
// ctx ends).
func runUntil(ctx context.Context, t *testing.T, js jetstream.JetStream, sink *lsnSink, maxWait time.Duration, n int) {
	t.Helper()
	a, err := pipeline.NewApplier(js, pipeline.ApplierConfig{Flow: "to-erp", Source: "crm", Sink: sink, MaxWait: maxWait})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(rctx) }()
	for ctx.Err() == nil {
		if applied, skipped := sink.result(); len(applied)+len(skipped) >= n {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestApplier_LatePublishIsAppliedBeforeItsSuccessors: the capture
// publishes transactions 100, 200, 300, 400; JetStream stores 100, 300,
// 400, then 200 (its first publish failed while the later ones were
// stored, as during a NATS cluster leader change, and the next capture
// session published it again). Every transaction is applied, in LSN
// order, and none is skipped. Before PrevLSN, 200 came after 400 was
// applied and was skipped as already applied: lost.
func TestApplier_LatePublishIsAppliedBeforeItsSuccessors(t *testing.T) {
	js, m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bodies := publishFour(ctx, t, js, m)
	republish(ctx, t, js, [][]byte{bodies[0], bodies[2], bodies[3], bodies[1]})
	sink := &lsnSink{}
	runUntil(ctx, t, js, sink, time.Minute, 4)
	applied, skipped := sink.result()
	if len(applied) != 4 || applied[0] != 100 || applied[1] != 200 || applied[2] != 300 || applied[3] != 400 || len(skipped) != 0 {
		t.Errorf("applied %v, skipped %v; want [0/64 0/C8 0/12C 0/190] applied, none skipped", applied, skipped)
	}
}

// TestApplier_GivesUpWaitingAfterMaxWait: transaction 200 never comes
// (until much later): after max_wait the flow dead-letters the gap,
// naming both positions, and applies 300 and 400; when 200 comes after
// all it is dead-lettered, not skipped silently.
func TestApplier_GivesUpWaitingAfterMaxWait(t *testing.T) {
	js, m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bodies := publishFour(ctx, t, js, m)
	republish(ctx, t, js, [][]byte{bodies[0], bodies[2], bodies[3]})
	sink := &lsnSink{}
	start := time.Now()
	runUntil(ctx, t, js, sink, 2*time.Second, 3)
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("the flow applied past the gap after %s, before max_wait (2s)", took)
	}
	applied, _ := sink.result()
	if len(applied) != 3 || applied[1] != 300 {
		t.Fatalf("applied %v, want [0/64 0/12C 0/190]", applied)
	}
	dls, err := pipeline.ListDeadLetters(ctx, js, "to-erp", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || !strings.Contains(dls[0].Error, "0/C8") || !strings.Contains(dls[0].Error, "0/12C") || !strings.Contains(dls[0].Error, "resync") {
		t.Fatalf("dead letters = %+v, want one naming 0/C8, 0/12C and resync", dls)
	}
}
