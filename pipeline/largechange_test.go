package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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

// recordingSink keeps what it applied.
type recordingSink struct {
	mu  sync.Mutex
	txs []*transform.Tx
}

func (s *recordingSink) Apply(_ context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, tx := range txs {
		s.txs = append(s.txs, tx)
		n += len(tx.Events)
	}
	return pipeline.ApplyResult{Applied: n}, nil
}

func (s *recordingSink) applied() []*transform.Tx {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*transform.Tx(nil), s.txs...)
}

func named(i int, size int) capture.Change {
	ch := account(fmt.Sprintf("0d3f5a8e-1111-4c59-9d1b-%012d", i), "1.00")
	ch.New["name"] = strings.Repeat(string(rune('a'+i%26)), size)
	return ch
}

type busMsg struct {
	id   string
	size int
	tx   transform.Tx
}

func streamMsgs(t *testing.T, js jetstream.JetStream) []busMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	var out []busMsg
	for seq := uint64(1); ; seq++ {
		msg, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			break
		}
		m := busMsg{id: msg.Header.Get(jetstream.MsgIDHeader), size: len(msg.Data)}
		if err := json.Unmarshal(msg.Data, &m.tx); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestProducer_SplitsByBytes: chunks larger than a message are split,
// deterministically (captured again, JetStream deduplicates every part);
// an event larger than a message travels through the object store; one
// above max_change_bytes is dead-lettered naming table, key, size and
// limit; a flow gets every transaction whole and every value intact.
func TestProducer_SplitsByBytes(t *testing.T) {
	js, m := setup(t)
	ctx := context.Background()
	if err := pipeline.EnsureLargeChanges(ctx, js, 0, 1); err != nil {
		t.Fatal(err)
	}
	const limit, maxChange = 8 << 10, 64 << 10
	live := capture.TxInfo{System: "crm", CommitLSN: 200, EndLSN: 210, CommitTime: time.Now(), Xid: 2}
	snap := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 100, CommitTime: time.Now(), Snapshot: true}
	var c0, c1, s0 []capture.Change
	for i := range 20 {
		c0 = append(c0, named(i, 1000))
		s0 = append(s0, named(100+i, 1000))
	}
	c1 = append(c1, named(20, 20<<10), named(21, 100<<10), named(22, 10))
	chunks := []*capture.Chunk{
		{Tx: snap, Index: 0, Last: true, Changes: s0},
		{Tx: live, Index: 0, Changes: c0},
		{Tx: live, Index: 1, First: 20, Last: true, Changes: c1},
	}
	run := func() {
		src := &fakeSource{chunks: chunks, done: make(chan struct{})}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- pipeline.RunCapture(rctx, js, src, pipeline.ProducerConfig{Mapping: m, MaxInFlight: 4, MaxMessageBytes: limit, MaxChangeBytes: maxChange})
		}()
		select {
		case <-src.done:
		case <-time.After(20 * time.Second):
			t.Fatal("source was not drained")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if c := src.confirmed(); len(c) != 2 || c[1] != 210 {
			t.Errorf("confirmed %v, want the snapshot and the transaction", c)
		}
	}
	run()
	msgs := streamMsgs(t, js)
	var ids []string
	snapParts, liveChunks := 0, 0
	for i, bm := range msgs {
		ids = append(ids, bm.id)
		if bm.size > limit {
			t.Errorf("message %s is %d bytes, above the limit %d", bm.id, bm.size, limit)
		}
		if bm.tx.Snapshot {
			if want := fmt.Sprintf("crm:0/64:0.%d", snapParts); snapParts > 0 && bm.id != want || snapParts == 0 && bm.id != "crm:0/64:0" || !bm.tx.Last {
				t.Errorf("snapshot message %d: id %s last %v, want parts of chunk 0 standing alone", i, bm.id, bm.tx.Last)
			}
			snapParts++
			continue
		}
		if want := fmt.Sprintf("crm:0/C8:%d", liveChunks); bm.id != want {
			t.Errorf("message %d: id %s, want %s", i, bm.id, want)
		}
		liveChunks++
		if bm.tx.Last != (i == len(msgs)-1) {
			t.Errorf("message %s: last %v", bm.id, bm.tx.Last)
		}
	}
	if snapParts < 3 || liveChunks < 4 {
		t.Fatalf("messages %v: want the snapshot chunk and the transaction split by bytes", ids)
	}
	obs, err := js.ObjectStore(ctx, pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	first, err := obs.GetInfo(ctx, pipeline.LargeObjectName("crm", 200, 1, 0, false))
	if err != nil {
		t.Fatal(err)
	}
	// Captured again after a crash: the same ids, nothing new; the large
	// event's object is reused as it is (putting it again would need a
	// purge of the old chunks, which a capture's identity may not make).
	run()
	if again := streamMsgs(t, js); len(again) != len(msgs) {
		t.Errorf("captured again: %d messages, want %d (deduplicated)", len(again), len(msgs))
	}
	if again, err := obs.GetInfo(ctx, first.Name); err != nil || again.NUID != first.NUID {
		t.Errorf("captured again: the large event's object was stored again (%v)", err)
	}
	objs, err := obs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != pipeline.LargeObjectName("crm", 200, 1, 0, false) {
		t.Errorf("objects %v, want the one 20 KB event, once", objs)
	}
	// The 100 KB change is dead-lettered (once: the capture again is
	// deduplicated), naming table, key, size and limit.
	dls, err := pipeline.ListDeadLetters(ctx, js, "capture-crm", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 {
		t.Fatalf("dead letters %+v, want one", dls)
	}
	key21 := "0d3f5a8e-1111-4c59-9d1b-000000000021"
	if e := dls[0].Error; dls[0].Key != key21 || !strings.Contains(e, "public.accounts") || !strings.Contains(e, key21) ||
		!strings.Contains(e, fmt.Sprint(maxChange)) || dls[0].Change != nil {
		t.Errorf("dead letter %q key %s: want table, key, size and limit, without the row", e, dls[0].Key)
	}

	sink := &recordingSink{}
	ap, err := pipeline.NewApplier(js, pipeline.ApplierConfig{Flow: "to-erp", Source: "crm", Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ap.Run(actx) }()
	deadline := time.Now().Add(20 * time.Second)
	var got []*transform.Tx
	for time.Now().Before(deadline) {
		if got = sink.applied(); len(got) >= snapParts+1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	<-done
	if len(got) != snapParts+1 {
		t.Fatalf("applied %d transactions, want %d snapshot parts and one whole transaction", len(got), snapParts+1)
	}
	names := map[string]int{}
	for _, tx := range got {
		for _, ev := range tx.Events {
			if ev.DataRef != nil && ev.Data == nil {
				t.Errorf("event %s applied without its data", ev.ID)
			}
			names[ev.Key] = len(ev.Data["name"].(string))
		}
	}
	whole := got[len(got)-1]
	if whole.Snapshot || len(whole.Events) != 22 {
		t.Errorf("transaction applied with %d events, want 22 (23 less the dead letter)", len(whole.Events))
	}
	if n := names["0d3f5a8e-1111-4c59-9d1b-000000000020"]; n != 20<<10 {
		t.Errorf("the 20 KB value arrived with %d bytes", n)
	}
	if len(names) != 42 {
		t.Errorf("%d keys applied, want 42", len(names))
	}
}

// TestResolveData_ReadsChunksAndChecksThem: a large event's data is read
// back chunk by chunk without a consumer (a flow's identity may not make
// one) and checked against its meta: chunks gone are
// jetstream.ErrObjectNotFound, data that does not match the recorded
// digest is jetstream.ErrDigestMismatch (both dead-lettered by a flow,
// never applied).
func TestResolveData_ReadsChunksAndChecksThem(t *testing.T) {
	js, _ := setup(t)
	ctx := context.Background()
	if err := pipeline.EnsureLargeChanges(ctx, js, 0, 1); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("n", 700<<10) // six chunks
	put := func(object, value string) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"name": value})
		if _, err := obs.PutBytes(ctx, object, b); err != nil {
			t.Fatal(err)
		}
	}
	read := func(object string) (*transform.Event, error) {
		ev := &transform.Event{ID: "e", DataRef: &transform.DataRef{Bucket: pipeline.LargeBucket, Object: object}}
		return ev, pipeline.ResolveData(ctx, js, ev)
	}
	put("crm:0/1:c0:e0", name)
	put("crm:0/1:c0:e1", "other")
	if ev, err := read("crm:0/1:c0:e0"); err != nil || ev.Data["name"] != name {
		t.Fatalf("read back: %v", err)
	}

	// An object replaced by a whole new one (data and meta agree): only
	// the digest the signed event carries tells it from the original.
	h := sha256.New()
	b0, _ := json.Marshal(map[string]any{"name": name})
	h.Write(b0)
	signedDigest := jetstream.GetObjectDigestValue(h)
	put("crm:0/1:c0:e2", name)
	ev := &transform.Event{ID: "e", DataRef: &transform.DataRef{Bucket: pipeline.LargeBucket, Object: "crm:0/1:c0:e2", Digest: signedDigest}}
	if err := pipeline.ResolveData(ctx, js, ev); err != nil {
		t.Fatalf("read back against the event's digest: %v", err)
	}
	put("crm:0/1:c0:e2", "replaced")
	ev = &transform.Event{ID: "e", DataRef: &transform.DataRef{Bucket: pipeline.LargeBucket, Object: "crm:0/1:c0:e2", Digest: signedDigest}}
	if err := pipeline.ResolveData(ctx, js, ev); !errors.Is(err, jetstream.ErrDigestMismatch) || ev.Data != nil {
		t.Errorf("a replaced object: %v (data %v), want ErrDigestMismatch", err, ev.Data)
	}

	// A meta that records another digest (forged or damaged).
	info, err := obs.GetInfo(ctx, "crm:0/1:c0:e0")
	if err != nil {
		t.Fatal(err)
	}
	other, err := obs.GetInfo(ctx, "crm:0/1:c0:e1")
	if err != nil {
		t.Fatal(err)
	}
	forged := *info
	forged.Digest = other.Digest
	meta, _ := json.Marshal(forged)
	msg := nats.NewMsg("$O." + pipeline.LargeBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(info.Name)))
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = meta
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := read("crm:0/1:c0:e0"); !errors.Is(err, jetstream.ErrDigestMismatch) {
		t.Errorf("data against a forged digest: %v, want ErrDigestMismatch", err)
	}

	// Chunks gone.
	s, err := js.Stream(ctx, "OBJ_"+pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject("$O."+pipeline.LargeBucket+".C."+other.NUID)); err != nil {
		t.Fatal(err)
	}
	if _, err := read("crm:0/1:c0:e1"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("chunks gone: %v, want ErrObjectNotFound", err)
	}
	if _, err := read("crm:0/9:c0:e0"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("no such object: %v, want ErrObjectNotFound", err)
	}
}
