package pipeline_test

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
)

// lockedBuffer is a log sink safe for the producer's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Changes of tables no entity maps are counted per table and logged once
// per table and session, a truncate's tables included; duplex's own schema
// and mapped tables are not reported.
func TestRunCapture_ReportsUnmappedTables(t *testing.T) {
	js, m := setup(t)
	tx := capture.TxInfo{System: "crm", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	audit := capture.Change{Schema: "public", Table: "audit", Op: capture.Insert, New: capture.Row{"id": int64(1)}, Partition: "public.audit_2026"}
	own := capture.Change{Schema: "duplex", Table: "slots", Op: capture.Update, New: capture.Row{"slot": "s"}}
	trunc := capture.Change{Op: capture.Truncate, Schema: "public", Table: "audit", Tables: []string{"public.audit", "public.other"}}
	src := &fakeSource{done: make(chan struct{}), chunks: []*capture.Chunk{{Tx: tx, Last: true, Changes: []capture.Change{
		audit, own, account("0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0c01", "1"), audit, trunc,
	}}}}
	stats := &pipeline.SourceStats{}
	var log lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- pipeline.RunCapture(ctx, js, src, pipeline.ProducerConfig{Mapping: m, Stats: stats, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	}()
	select {
	case <-src.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the source was not read")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"public.audit": 3, "public.other": 1}
	if got := stats.Snapshot().Unmapped; !maps.Equal(got, want) {
		t.Errorf("unmapped changes counted %v, want %v", got, want)
	}
	out := log.String()
	if n := strings.Count(out, "no entity maps"); n != 2 {
		t.Errorf("%d log lines about unmapped tables, want one per table (2):\n%s", n, out)
	}
	if !strings.Contains(out, "table=public.audit") || !strings.Contains(out, "partition=public.audit_2026") || strings.Contains(out, "duplex.slots") {
		t.Errorf("log does not name the unmapped table and partition (or names duplex's own):\n%s", out)
	}
}
