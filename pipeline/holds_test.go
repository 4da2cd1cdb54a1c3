package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// fakeHolds keeps holds in memory.
type fakeHolds struct {
	mu      sync.Mutex
	holding pipeline.Holding
	added   []pipeline.Hold
}

func (h *fakeHolds) Held(context.Context) (pipeline.Holding, error) { return h.holding, nil }

func (h *fakeHolds) Hold(_ context.Context, hd pipeline.Hold) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.added = append(h.added, hd)
	return nil
}

func (h *fakeHolds) Release(context.Context, string, capture.LSN) error { return nil }

// fakeVersions remembers the events it was asked to record (read after
// the capture stopped).
type fakeVersions struct {
	mu       sync.Mutex
	recorded []transform.Event
}

func (v *fakeVersions) Add(evs []transform.Event) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.recorded = append(v.recorded, evs...)
	return 0
}

func (v *fakeVersions) Flush(context.Context) error { return nil }

func (v *fakeVersions) Lookup(context.Context, string, []transform.Event) error { return nil }

// TestRunCapture_HeldEntity: a change without a mapped column at or below
// the position a released hold of its entity was read again up to is WAL
// the slot sends again (a crash restart of the source): left out, not held
// anew. Above it, the same change is a new drop and holds the entity; the
// held change is not published, but the version of its shared field is
// recorded.
func TestRunCapture_HeldEntity(t *testing.T) {
	js, m := setup(t)
	dropped := func(id, email string) capture.Change {
		ch := account(id, "1")
		delete(ch.New, "country")
		ch.New["email"] = email
		return ch
	}
	order := capture.Change{Schema: "public", Table: "orders", Op: capture.Insert, New: capture.Row{
		"id": "0d3f5a8e-2222-4c59-9d1b-2d7b6c1f0b01", "account_id": "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "currency": "EUR",
		"total": account("x", "5").New["credit_limit"], "status": "open", "ordered_at": time.Now(), "erp_order_no": nil, "erp_status": nil}}
	tx := func(lsn capture.LSN) capture.TxInfo {
		return capture.TxInfo{System: "crm", CommitLSN: lsn, EndLSN: lsn + 10, CommitTime: time.Now(), Xid: uint32(lsn)}
	}
	src := &fakeSource{done: make(chan struct{}), chunks: []*capture.Chunk{
		{Tx: tx(200), Last: true, Changes: []capture.Change{dropped("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "sent@again.example"), order}},
		{Tx: tx(400), Last: true, Changes: []capture.Change{dropped("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b02", "held@new.example")}},
		{Tx: tx(500), Last: true, Changes: []capture.Change{dropped("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b03", "held@too.example")}},
	}}
	holds := &fakeHolds{holding: pipeline.Holding{Now: 1000, Redone: map[string]capture.LSN{"customer": 300}}}
	versions := &fakeVersions{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- pipeline.RunCapture(ctx, js, src, pipeline.ProducerConfig{Mapping: m, MaxInFlight: 4, Holds: holds, Versions: versions})
	}()
	select {
	case <-src.done:
	case <-time.After(10 * time.Second):
		t.Fatal("source was not drained")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	if len(holds.added) != 1 || holds.added[0].Entity != "customer" || holds.added[0].Since != 400 {
		t.Errorf("holds added %+v, want customer since 0/190 only", holds.added)
	}
	var recorded []string
	for _, ev := range versions.recorded {
		if ev.Entity == "customer" {
			recorded = append(recorded, fmt.Sprint(ev.Data["email"]))
		}
	}
	if fmt.Sprint(recorded) != "[held@new.example held@too.example]" {
		t.Errorf("customer versions recorded from %v, want the two held changes (not the one sent again)", recorded)
	}
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
		var ents []string
		for _, ev := range tx.Events {
			ents = append(ents, ev.Entity)
		}
		got = append(got, fmt.Sprintf("%s %v", msg.Header.Get(jetstream.MsgIDHeader), ents))
	}
	if want := "[crm:0/C8:0 [order]]"; fmt.Sprint(got) != want {
		t.Errorf("published %v, want %s (only the order)", got, want)
	}
}
