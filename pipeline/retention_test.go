package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

// retentionSetup starts NATS and creates the streams for crm and erp with
// the given ceiling.
func retentionSetup(t *testing.T, maxStore int64) jetstream.JetStream {
	t.Helper()
	js := harness.NewJetStream(t)
	if err := pipeline.EnsureStreams(context.Background(), js, pipeline.StreamConfig{Sources: []string{"crm", "erp"}, MaxStoreBytes: maxStore}); err != nil {
		t.Fatal(err)
	}
	return js
}

// publish stores n messages of size bytes on source's subject and returns
// their sequences.
func publish(t *testing.T, js jetstream.JetStream, source string, n, size int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := 0; i < n; i++ {
		ack, err := js.Publish(context.Background(), pipeline.Subject(source), []byte(strings.Repeat("x", size)))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	return seqs
}

// flowConsumer creates a durable consumer as a flow has: ack-all on the
// source's subjects.
func flowConsumer(t *testing.T, js jetstream.JetStream, name, source string) jetstream.Consumer {
	t.Helper()
	c, err := js.CreateConsumer(context.Background(), pipeline.StreamName, jetstream.ConsumerConfig{Durable: name,
		FilterSubject: pipeline.SourceFilter(source), AckPolicy: jetstream.AckAllPolicy, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyUpTo fetches from c up to stream sequence seq and acknowledges it
// (ack-all): the flow applied everything up to seq.
func applyUpTo(t *testing.T, c jetstream.Consumer, seq uint64) {
	t.Helper()
	for {
		b, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var got jetstream.Msg
		for m := range b.Messages() {
			got = m
		}
		if got == nil {
			t.Fatalf("consumer: nothing more to fetch before %d (%v)", seq, b.Error())
		}
		md, _ := got.Metadata()
		if md.Sequence.Stream >= seq {
			if err := got.DoubleAck(context.Background()); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

// stored says which of seqs are still in the stream.
func stored(t *testing.T, js jetstream.JetStream, seqs []uint64) []bool {
	t.Helper()
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]bool, len(seqs))
	for i, q := range seqs {
		_, err := s.GetMsg(context.Background(), q)
		switch {
		case err == nil:
			out[i] = true
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			t.Fatal(err)
		}
	}
	return out
}

func pass(t *testing.T, r *pipeline.Retention) {
	t.Helper()
	if err := r.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// wantStored checks that seqs[i] is stored exactly for i >= from.
func wantStored(t *testing.T, js jetstream.JetStream, what string, seqs []uint64, from int) {
	t.Helper()
	for i, ok := range stored(t, js, seqs) {
		if ok != (i >= from) {
			t.Errorf("%s: message %d (seq %d) stored=%t, want %t", what, i, seqs[i], ok, i >= from)
		}
	}
}

// TestRetention_Pass_AgeOnlyBelowSlowestFlow: two flows read crm, one of
// them lagging; messages older than max age are removed only below the
// lagging flow's ack floor, and newer ones stay however applied. The erp
// source, whose flow has no consumer, keeps everything.
func TestRetention_Pass_AgeOnlyBelowSlowestFlow(t *testing.T) {
	js := retentionSetup(t, 0)
	const maxAge = time.Second
	old := publish(t, js, "crm", 10, 100)
	oldERP := publish(t, js, "erp", 3, 100)
	time.Sleep(maxAge + 200*time.Millisecond) // the first ten age past max age
	young := publish(t, js, "crm", 10, 100)
	fast, slow := flowConsumer(t, js, "fast", "crm"), flowConsumer(t, js, "slow", "crm")
	applyUpTo(t, fast, young[9])
	applyUpTo(t, slow, old[4])
	r := pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: map[string][]string{"crm": {"fast", "slow"}, "erp": {"to-crm"}}, MaxAge: maxAge})

	pass(t, r)
	wantStored(t, js, "slow flow applied 5 of the old ones", old, 5)
	wantStored(t, js, "young crm", young, 0)
	wantStored(t, js, "erp without consumer", oldERP, 0)
	if why := r.Stats().Blocked["erp"]; !strings.Contains(why, "to-crm does not exist") {
		t.Errorf("erp blocked for %q, want the missing consumer named", why)
	}

	applyUpTo(t, slow, young[9])
	pass(t, r)
	wantStored(t, js, "all applied, old", old, len(old))
	wantStored(t, js, "all applied, young (within max age)", young, 0)
	if st := r.Stats(); st.FirstSeq != oldERP[0] {
		t.Errorf("first sequence %d, want %d (erp's oldest, unapplied)", st.FirstSeq, oldERP[0])
	}
}

// TestRetention_Pass_BytesOnlyBelowSlowestFlow: with max bytes, the oldest
// messages are removed only once both flows applied them.
func TestRetention_Pass_BytesOnlyBelowSlowestFlow(t *testing.T) {
	js := retentionSetup(t, 0)
	seqs := publish(t, js, "crm", 20, 1000)
	fast, slow := flowConsumer(t, js, "fast", "crm"), flowConsumer(t, js, "slow", "crm")
	applyUpTo(t, fast, seqs[19])
	applyUpTo(t, slow, seqs[9])
	r := pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: map[string][]string{"crm": {"fast", "slow"}}, MaxBytes: 5000})

	pass(t, r)
	wantStored(t, js, "slow flow applied 10", seqs, 10)
	applyUpTo(t, slow, seqs[19])
	pass(t, r)
	st := r.Stats()
	if st.Bytes > 5000 || st.Bytes < 4000 {
		t.Errorf("stream holds %d bytes, want within max bytes 5000 and no more removed than needed", st.Bytes)
	}
	if got := stored(t, js, seqs); !got[19] || got[10] {
		t.Errorf("stored %v: want the newest kept and the oldest removed", got)
	}
}

// TestRetention_Pass_MissingConsumerBlocks: a configured flow without a
// consumer (not started yet, or being re-pointed) keeps its source whole.
func TestRetention_Pass_MissingConsumerBlocks(t *testing.T) {
	js := retentionSetup(t, 0)
	seqs := publish(t, js, "crm", 5, 100)
	fast := flowConsumer(t, js, "fast", "crm")
	applyUpTo(t, fast, seqs[4])
	r := pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: map[string][]string{"crm": {"fast", "ghost"}}, MaxAge: time.Nanosecond, MaxBytes: 1})
	pass(t, r)
	wantStored(t, js, "ghost has no consumer", seqs, 0)

	flowConsumer(t, js, "ghost", "crm") // starts from the beginning: applied nothing
	pass(t, r)
	wantStored(t, js, "ghost applied nothing", seqs, 0)
}

// TestRetention_Pass_FullStreamWaitsForRoom: at the ceiling JetStream
// refuses new messages (nothing is discarded), the refusal is recognized
// as the stream being full, and Retention says full until the flow applied
// and it removed enough; then publishing goes on.
func TestRetention_Pass_FullStreamWaitsForRoom(t *testing.T) {
	const ceiling = 64 << 10
	js := retentionSetup(t, ceiling)
	c := flowConsumer(t, js, "to-erp", "crm")
	var seqs []uint64
	var refused error
	for i := 0; i < 100 && refused == nil; i++ {
		ack, err := js.Publish(context.Background(), pipeline.Subject("crm"), []byte(strings.Repeat("x", 4000)))
		if err != nil {
			refused = err
			break
		}
		seqs = append(seqs, ack.Sequence)
	}
	if refused == nil {
		t.Fatalf("JetStream stored %d messages of 4 KB under a 64 KiB ceiling", len(seqs))
	}
	if !pipeline.IsStreamFull(refused) {
		t.Fatalf("publish at the ceiling: %v, want it recognized as the stream being full", refused)
	}
	r := pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: map[string][]string{"crm": {"to-erp"}}})
	pass(t, r)
	if !r.Full() {
		t.Fatalf("not full at %d bytes of %d", r.Stats().Bytes, ceiling)
	}
	wantStored(t, js, "full of unapplied changes", seqs, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := r.WaitForRoom(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForRoom on a full stream: %v, want it to wait", err)
	}

	applyUpTo(t, c, seqs[len(seqs)-1])
	pass(t, r)
	if r.Full() {
		t.Errorf("still full at %d bytes after everything was applied", r.Stats().Bytes)
	}
	if b := r.Stats().Bytes; b > ceiling*80/100 {
		t.Errorf("%d bytes after the pass, want applied messages removed down to 80%% of %d", b, ceiling)
	}
	if err := r.WaitForRoom(context.Background()); err != nil {
		t.Fatal(err)
	}
	publish(t, js, "crm", 1, 4000)
}

// TestEnsureStreams_UpgradesOldRetention: a DUPLEX made by an older duplex
// (limits with max age, max bytes, discard old) and a DLQ kept forever are
// updated in place, with their messages.
func TestEnsureStreams_UpgradesOldRetention(t *testing.T) {
	js := harness.NewJetStream(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: pipeline.StreamName, Subjects: []string{pipeline.SourceFilter("crm"), pipeline.SourceFilter("erp")},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, MaxAge: 168 * time.Hour, MaxBytes: 10 << 30, Duplicates: 2 * time.Minute, Discard: jetstream.DiscardOld}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: pipeline.DLQStream, Subjects: []string{"duplex.dlq.>"}, Storage: jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy, Duplicates: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	seqs := publish(t, js, "crm", 3, 100)
	if err := pipeline.EnsureStreams(ctx, js, pipeline.StreamConfig{Sources: []string{"crm", "erp"}}); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	for _, tc := range []struct {
		name     string
		stream   string
		maxAge   time.Duration
		maxBytes int64
		discard  jetstream.DiscardPolicy
	}{
		{"DUPLEX", pipeline.StreamName, 0, -1, jetstream.DiscardNew},
		{"DUPLEX_DLQ", pipeline.DLQStream, pipeline.DefaultDLQMaxAge, -1, jetstream.DiscardOld},
	} {
		s, err := js.Stream(ctx, tc.stream)
		if err != nil {
			t.Fatal(err)
		}
		c := s.CachedInfo().Config
		if got := fmt.Sprint(c.MaxAge, c.MaxBytes, c.Discard); got != fmt.Sprint(tc.maxAge, tc.maxBytes, tc.discard) {
			t.Errorf("%s: max age, max bytes, discard = %s, want %s", tc.name, got, fmt.Sprint(tc.maxAge, tc.maxBytes, tc.discard))
		}
	}
	wantStored(t, js, "after the upgrade", seqs, 0)
}

// fakeRoom is a stream full until opened.
type fakeRoom struct{ open chan struct{} }

func (r *fakeRoom) WaitForRoom(ctx context.Context) error {
	select {
	case <-r.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestRunCapture_WaitsForRoom: while the stream has no room, the capture
// publishes nothing and confirms nothing; then it goes on.
func TestRunCapture_WaitsForRoom(t *testing.T) {
	js, m := setup(t)
	tx := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	src := &fakeSource{chunks: []*capture.Chunk{{Tx: tx, Index: 0, Last: true, Changes: []capture.Change{account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", "1.00")}}}, done: make(chan struct{})}
	room := &fakeRoom{open: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pipeline.RunCapture(ctx, js, src, pipeline.ProducerConfig{Mapping: m, Room: room}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-src.done:
		t.Fatal("the source was streamed while the stream had no room")
	case <-time.After(300 * time.Millisecond):
	}
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 0 || len(src.confirmed()) != 0 {
		t.Fatalf("%d messages stored, %v confirmed while full; want none", n, src.confirmed())
	}
	close(room.open)
	select {
	case <-src.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the source was not streamed once the stream had room")
	}
	waitConfirmed(t, src, 110)
}

func waitConfirmed(t *testing.T, src *fakeSource, lsn capture.LSN) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c := src.confirmed(); len(c) > 0 && c[len(c)-1] == lsn {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed %v, want %s", src.confirmed(), lsn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRetention_Pass_LargeObjectsGoWithTheirMessages: an object of
// DUPLEX_LARGE stored before the first message its source keeps is
// removed; one stored after it stays until that message is removed too.
func TestRetention_Pass_LargeObjectsGoWithTheirMessages(t *testing.T) {
	js := retentionSetup(t, 0)
	ctx := context.Background()
	if err := pipeline.EnsureLargeChanges(ctx, js, 0, 1); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string) {
		t.Helper()
		if _, err := obs.PutBytes(ctx, name, []byte(strings.Repeat("y", 1000))); err != nil {
			t.Fatal(err)
		}
	}
	has := func(name string) bool {
		t.Helper()
		_, err := obs.GetInfo(ctx, name)
		if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	put("crm:0/10:c0:e0") // its message, seqs[0], is removed below
	time.Sleep(20 * time.Millisecond)
	seqs := publish(t, js, "crm", 3, 10)
	time.Sleep(20 * time.Millisecond)
	put("crm:0/30:c0:e0") // referred to by a kept message
	c := flowConsumer(t, js, "to-erp", "crm")
	r := pipeline.NewRetention(js, pipeline.RetentionConfig{Readers: map[string][]string{"crm": {"to-erp"}, "erp": {"to-crm"}},
		MaxAge: time.Millisecond, LargeGrace: -1})
	applyUpTo(t, c, seqs[0])
	pass(t, r)
	wantStored(t, js, "after applying the first message", seqs, 1)
	if has("crm:0/10:c0:e0") {
		t.Error("the object stored before the first kept message is still there")
	}
	if !has("crm:0/30:c0:e0") {
		t.Error("an object a kept message may refer to was removed")
	}
	applyUpTo(t, c, seqs[2])
	time.Sleep(20 * time.Millisecond)
	pass(t, r)
	wantStored(t, js, "after applying everything", seqs, 3)
	if has("crm:0/30:c0:e0") {
		t.Error("the object outlived every message of its source")
	}
}
