package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestNATSCluster_EachNodeKilled: duplex against three nats-server nodes
// (nats.url lists all three) with its streams at three replicas. During a
// two-way order-to-cash workload each node in turn is SIGKILLed and, after
// a while, started again; the cluster is let heal before the next kill.
// Both systems end equal, every committed CRM transaction was applied to
// the ERP (ticks), and nothing was dead-lettered.
func TestNATSCluster_EachNodeKilled(t *testing.T) {
	f, _ := newStandbyFixture(t, 5*time.Second)
	cl := harness.NewNATSCluster(t, harness.NATSClusterOptions{Dir: filepath.Join(f.dir, "nats")})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i := range cl.Size() {
			b, _ := os.ReadFile(cl.Node(i).LogPath())
			var notable []string
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "[WRN]") || strings.Contains(line, "[ERR]") || strings.Contains(line, "leader") {
					notable = append(notable, line)
				}
			}
			t.Logf("nats node n%d (%s):\n%s", i+1, cl.Node(i).LogPath(), tail(strings.Join(notable, "\n"), 40))
		}
	})
	t.Cleanup(func() {
		if dir := os.Getenv("DUPLEX_E2E_KEEP_LOGS"); t.Failed() && dir != "" {
			dumpStream(t, cl.URLs(), filepath.Join(dir, t.Name()+"-stream.txt"))
		}
	})
	cfg, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(cfg)
	// newStandbyFixture pointed nats.url at its own server: point it at
	// the cluster instead, streams at three replicas.
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "  url: ") {
			text = strings.Replace(text, line, "  url: "+cl.URLs(), 1)
		}
	}
	text = strings.Replace(text, "  duplicates: 2m\n", "  duplicates: 2m\n  replicas: 3\n", 1)
	if err := os.WriteFile(f.cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d := f.startChild()
	waitRole(t, d, "active", 60*time.Second)
	f.waitSlot(t)
	js := natsJS(t, cl.URLs())
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("stream %s has %d replicas, want 3", pipeline.StreamName, r)
	}

	const total = 12_000
	l := startLoadWith(t, f.env("CRM_DSN"), 3, total, 50, true)
	erp := startERP(t, f.env("ERP_DSN"), true)
	ctx := context.Background()
	for i := range cl.Size() {
		l.waitRows(t, int64(i+1)*total/5, 2*time.Minute)
		cl.Node(i).Kill()
		at := l.rows.Load()
		t.Logf("node n%d SIGKILLed after %d committed row changes", i+1, at)
		l.waitRows(t, at+total/20, time.Minute)
		if err := cl.StartNode(ctx, i); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := cl.WaitHealthy(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("node n%d started again; the cluster was healthy after %s", i+1, time.Since(start).Round(time.Millisecond))
		if n := l.rows.Load(); n >= total {
			t.Errorf("kill %d: the workload already ended (%d row changes)", i+1, n)
		}
	}
	l.waitRows(t, total, 3*time.Minute)
	l.stop()
	erp.stop()
	settleERP(t, f.env("ERP_DSN"))
	t.Logf("workload: %d CRM transactions, %d row changes; %d ERP operations", l.txs.Load(), l.rows.Load(), erp.ops.Load())
	a, b := f.waitBothConverged(2 * time.Minute)
	t.Logf("converged:\ncrm → erp:\n%s\nerp → crm:\n%s", a, b)
	crm, erpc := f.conn("crm"), f.conn("erp")
	committed := queryInt(t, crm, `SELECT count(*) FROM duplex_test_ticks`)
	var applied int64
	waitFor(t, time.Minute, func() (bool, string) {
		applied = queryInt(t, erpc, `SELECT count(*) FROM duplex_test_ticks`)
		return applied == committed, fmt.Sprintf("%d of %d CRM transactions applied to the ERP", applied, committed)
	})
	t.Logf("CRM transactions: %d committed (the workload counted %d), %d applied", committed, l.txs.Load(), applied)
	if committed < l.txs.Load() {
		t.Errorf("the CRM counted %d transactions, fewer than the %d the workload committed", committed, l.txs.Load())
	}
	dlq, err := js.Stream(ctx, pipeline.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("%d dead letters, want none", info.State.Msgs)
	}
	d.stop(t)
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("duplex exited with %d after SIGTERM, want 0", code)
	}
}

// dumpStream writes every message of the DUPLEX stream (sequence, subject,
// message id, data) and the flows' consumer states to path, to find where
// a lost change went.
func dumpStream(t *testing.T, url, path string) {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Logf("dump stream: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Logf("dump stream: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := os.Create(path)
	if err != nil {
		t.Logf("dump stream: %v", err)
		return
	}
	defer out.Close()
	for _, flow := range []string{"to-erp", "to-crm"} {
		if c, err := js.Consumer(ctx, pipeline.StreamName, flow); err == nil {
			i := c.CachedInfo()
			fmt.Fprintf(out, "consumer %s delivered=%+v ack_floor=%+v ack_pending=%d redelivered=%d waiting=%d\n",
				flow, i.Delivered, i.AckFloor, i.NumAckPending, i.NumRedelivered, i.NumWaiting)
		}
	}
	s, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Logf("dump stream: %v", err)
		return
	}
	oc, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Logf("dump stream: %v", err)
		return
	}
	for {
		b, err := oc.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			break
		}
		n := 0
		for m := range b.Messages() {
			n++
			md, _ := m.Metadata()
			fmt.Fprintf(out, "%d %s %s %s\n", md.Sequence.Stream, m.Subject(), m.Headers().Get("Nats-Msg-Id"), m.Data())
		}
		if n == 0 {
			break
		}
	}
	t.Logf("stream dumped to %s", path)
}
