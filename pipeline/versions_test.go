package pipeline_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
)

// roomAfterFirst lets the first wait for room through (RunCapture's, before
// the session) and holds every later one (each publish's) until opened.
type roomAfterFirst struct {
	calls atomic.Int32
	open  chan struct{}
}

func (r *roomAfterFirst) WaitForRoom(ctx context.Context) error {
	if r.calls.Add(1) == 1 {
		return nil
	}
	select {
	case <-r.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestRunCapture_VersionsRecordedWhileThePublishWaits: the version of a
// local write to a shared field is recorded while its message waits to be
// published (here for room in the stream), not only once it is
// acknowledged: the sink into the same database waits for that record
// before it applies the other system's writes of the field, and the flows
// that make room in the stream may be the ones waiting.
func TestRunCapture_VersionsRecordedWhileThePublishWaits(t *testing.T) {
	js, m := setup(t)
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{})
	if err := cl.CreateDatabase(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	rec := pgstate.NewVersionRecorder("crm", cl.DSN("crm"), m)
	defer rec.Close(ctx)
	id := "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01"
	ch := account(id, "1.00")
	ch.New["email"] = "a@example.com"
	tx := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	src := &fakeSource{chunks: []*capture.Chunk{{Tx: tx, Index: 0, Last: true, Changes: []capture.Change{ch}}}, done: make(chan struct{})}
	room := &roomAfterFirst{open: make(chan struct{})}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- pipeline.RunCapture(rctx, js, src, pipeline.ProducerConfig{Mapping: m, Room: room, Versions: rec})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	conn, err := pgx.Connect(ctx, cl.DSN("crm"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		// The table exists once the recorder's session ran Ensure.
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM duplex.field_versions WHERE entity = 'customer' AND key = $1 AND field = 'email'`, id).Scan(&n)
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the version of the local write of email is not recorded within 5s while its message waits for room (%d publish waits so far)", room.calls.Load()-1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(src.confirmed()) != 0 {
		t.Fatalf("confirmed %v before the message was published", src.confirmed())
	}
	close(room.open)
	waitConfirmed(t, src, 110)
}
