package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// fakeSource hands out the chunks it was given, once per session, and
// records what was confirmed.
type fakeSource struct {
	sys    string // "crm" when empty
	chunks []*capture.Chunk
	mu     sync.Mutex
	conf   []capture.LSN
	done   chan struct{}
}

func (s *fakeSource) System() string {
	if s.sys != "" {
		return s.sys
	}
	return "crm"
}

func (s *fakeSource) Stream(ctx context.Context, h capture.Handler) error {
	for _, c := range s.chunks {
		if err := h.Chunk(ctx, c); err != nil {
			return err
		}
	}
	close(s.done)
	<-ctx.Done()
	_ = h.Drain(context.Background()) // the tests below check what was confirmed
	return ctx.Err()
}

func (s *fakeSource) Confirm(l capture.LSN) {
	s.mu.Lock()
	s.conf = append(s.conf, l)
	s.mu.Unlock()
}

func (s *fakeSource) confirmed() []capture.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]capture.LSN(nil), s.conf...)
}

func setup(t *testing.T) (jetstream.JetStream, *transform.Mapping) {
	t.Helper()
	js := harness.NewJetStream(t)
	if err := pipeline.EnsureStreams(context.Background(), js, pipeline.StreamConfig{Sources: []string{"crm", "erp"}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	b, _ := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	m, err := transform.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return js, m
}

func account(id string, limit string) capture.Change {
	return capture.Change{Schema: "public", Table: "accounts", Op: capture.Insert, New: capture.Row{
		"id": id, "name": "n", "email": nil, "country": nil, "currency": "EUR", "credit_limit": decimal.RequireFromString(limit), "updated_at": time.Now()}}
}

func runProducer(t *testing.T, js jetstream.JetStream, m *transform.Mapping, src *fakeSource) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pipeline.RunCapture(ctx, js, src, pipeline.ProducerConfig{Mapping: m, MaxInFlight: 4}) }()
	select {
	case <-src.done:
	case <-time.After(10 * time.Second):
		t.Fatal("source was not drained")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunCapture_ConfirmsDurableTransactionsAndDeduplicates(t *testing.T) {
	js, m := setup(t)
	tx1 := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	tx2 := capture.TxInfo{System: "crm", CommitLSN: 200, EndLSN: 210, CommitTime: time.Now(), Xid: 2}
	chunks := []*capture.Chunk{
		{Tx: tx1, Index: 0, Last: true, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "1.00")}},
		{Tx: tx2, Index: 0, Last: false, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b02", "2.00")}},
		{Tx: tx2, Index: 1, Last: true, First: 1, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b03", "3.00")}},
	}
	src := &fakeSource{chunks: chunks, done: make(chan struct{})}
	runProducer(t, js, m, src)
	if got := src.confirmed(); len(got) != 2 || got[0] != 110 || got[1] != 210 {
		t.Errorf("confirmed %v, want [0/6E 0/D2] (end LSNs of whole transactions only)", got)
	}
	// The same transactions captured again (a crash before the slot
	// advanced) are dropped by JetStream's deduplication.
	again := &fakeSource{chunks: chunks, done: make(chan struct{})}
	runProducer(t, js, m, again)
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("stream holds %d messages, want 3", info.State.Msgs)
	}
	msg, err := s.GetMsg(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != "crm:0/C8:0" {
		t.Errorf("Nats-Msg-Id = %q, want crm:0/C8:0", id)
	}
	var tx transform.Tx
	if err := json.Unmarshal(msg.Data, &tx); err != nil {
		t.Fatal(err)
	}
	if len(tx.Events) != 1 || tx.Events[0].Entity != "customer" || tx.Last {
		t.Errorf("message 2 = %+v", tx)
	}
	money := tx.Events[0].Data["credit_limit"].(map[string]any)
	if money["amount"] != "2.00" || money["currency"] != "EUR" {
		t.Errorf("credit_limit on the bus = %v, want amount \"2.00\" currency EUR", money)
	}
}

func TestRunCapture_DeadLettersWhatCannotBeNormalized(t *testing.T) {
	js, m := setup(t)
	tx := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	bad := account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "1")
	bad.New["credit_limit"] = capture.Special("NaN")
	// A personal column (email is pii: true) and one the mapping does not
	// map: neither is kept in the dead letter.
	bad.New["email"] = "secret.person@example.com"
	bad.New["internal_note"] = "not mapped"
	src := &fakeSource{chunks: []*capture.Chunk{{Tx: tx, Last: true, Changes: []capture.Change{bad, account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b02", "5")}}}, done: make(chan struct{})}
	runProducer(t, js, m, src)
	s, err := js.Stream(context.Background(), pipeline.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	var dl pipeline.DeadLetter
	if err := json.Unmarshal(msg.Data, &dl); err != nil {
		t.Fatal(err)
	}
	if dl.Stage != "capture" || dl.Entity != "customer" || dl.Key != "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01" || dl.Change == nil {
		t.Fatalf("dead letter = %+v", dl)
	}
	if _, ok := dl.Change.New["internal_note"]; ok || dl.Change.New["email"] != "(pii: not kept)" || dl.Change.New["id"] != "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01" ||
		strings.Contains(string(msg.Data), "secret.person") {
		t.Errorf("capture dead letter keeps %v, want the mapped columns only, the personal one not kept", dl.Change.New)
	}
	if got := src.confirmed(); len(got) != 1 || got[0] != 110 {
		t.Errorf("confirmed %v: the transaction must still be confirmed after its bad change was dead-lettered", got)
	}
	d, _ := js.Stream(context.Background(), pipeline.StreamName)
	info, _ := d.Info(context.Background())
	if info.State.Msgs != 1 {
		t.Errorf("DUPLEX holds %d messages, want 1 (the good change)", info.State.Msgs)
	}
}

// A transaction whose first chunks normalize to nothing (duplex's own
// applies, changes of unmapped tables) is renumbered so that a flow sees
// every chunk index up to the last; one that produces nothing at all puts
// nothing on the bus but is still confirmed.
func TestRunCapture_RenumbersChunksWithoutEvents(t *testing.T) {
	js, m := setup(t)
	unmapped := capture.Change{Schema: "public", Table: "audit", Op: capture.Insert, New: capture.Row{"id": int64(1)}}
	tx1 := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	tx2 := capture.TxInfo{System: "crm", CommitLSN: 200, EndLSN: 210, CommitTime: time.Now(), Xid: 2}
	src := &fakeSource{done: make(chan struct{}), chunks: []*capture.Chunk{
		{Tx: tx1, Index: 0, Changes: []capture.Change{unmapped}},
		{Tx: tx1, Index: 1, Changes: []capture.Change{unmapped}},
		{Tx: tx1, Index: 2, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "1")}},
		{Tx: tx1, Index: 3, Last: true, Changes: []capture.Change{unmapped}},
		{Tx: tx2, Index: 0, Changes: []capture.Change{unmapped}},
		{Tx: tx2, Index: 1, Last: true, Changes: []capture.Change{unmapped}},
	}}
	runProducer(t, js, m, src)
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for seq := uint64(1); ; seq++ {
		msg, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			break
		}
		var tx transform.Tx
		if err := json.Unmarshal(msg.Data, &tx); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s last=%v events=%d", msg.Header.Get(jetstream.MsgIDHeader), tx.Last, len(tx.Events)))
	}
	want := []string{"crm:0/64:0 last=false events=1", "crm:0/64:1 last=true events=0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("messages %v, want %v", got, want)
	}
	if c := src.confirmed(); len(c) != 2 || c[1] != 210 {
		t.Errorf("confirmed %v, want both transactions", c)
	}
}

// drainSource hands on its chunks, drains, and reports what Drain said.
type drainSource struct {
	fakeSource
	drained chan error
}

func (s *drainSource) Stream(ctx context.Context, h capture.Handler) error {
	for _, c := range s.chunks {
		if err := h.Chunk(ctx, c); err != nil {
			s.drained <- err
			<-ctx.Done()
			return ctx.Err()
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := h.Drain(dctx)
	cancel()
	s.drained <- err
	<-ctx.Done()
	return ctx.Err()
}

// TestProducer_DrainReportsRefusedPublish: a chunk JetStream refuses (here
// larger than the stream's max message size) makes Drain fail instead of
// reporting it durable, so a snapshot or backfill chunk is not recorded
// complete.
func TestProducer_DrainReportsRefusedPublish(t *testing.T) {
	js, m := setup(t)
	ctx := context.Background()
	s, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	tx := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1, Snapshot: true}
	src := &drainSource{fakeSource: fakeSource{chunks: []*capture.Chunk{
		{Tx: tx, Index: 0, Last: true, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b09", "9.00")}},
	}}, drained: make(chan error, 1)}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- pipeline.RunCapture(rctx, js, src, pipeline.ProducerConfig{Mapping: m, MaxInFlight: 4})
	}()
	select {
	case err := <-src.drained:
		if err == nil {
			t.Error("Drain reported a refused chunk durable")
		} else if !strings.Contains(err.Error(), "exceeds maximum") {
			t.Errorf("Drain error does not say why: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Drain did not return")
	}
	stop()
	<-done
	if got := src.confirmed(); len(got) != 0 {
		t.Errorf("confirmed %v after a refused publish", got)
	}
}
