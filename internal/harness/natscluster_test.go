package harness

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNATSCluster_ReplicatedStreamSurvivesEachNodeKilled: a stream at
// three replicas keeps every message while each node in turn is SIGKILLed
// and started again.
func TestNATSCluster_ReplicatedStreamSurvivesEachNodeKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := NewNATSCluster(t, NATSClusterOptions{})
	if c.Size() != 3 {
		t.Fatalf("cluster of %d nodes, want 3", c.Size())
	}
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	publish := func() {
		t.Helper()
		for {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := js.Publish(pctx, "s.1", []byte("x"))
			cancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	publish()
	for i := range c.Size() {
		c.Node(i).Kill()
		publish() // two of three nodes are a quorum
		if err := c.StartNode(ctx, i); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitHealthy(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().State.Msgs; got != 4 {
		t.Errorf("the stream holds %d messages, want 4", got)
	}
	if n := len(s.CachedInfo().Cluster.Replicas); n != 2 {
		t.Errorf("the stream has %d replicas besides its leader, want 2", n)
	}
}
