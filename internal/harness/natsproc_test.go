package harness

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNATSProcess_KeepsStreamAcrossKill: the external server keeps its
// JetStream store across SIGKILL and restart on the same port.
func TestNATSProcess_KeepsStreamAcrossKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := NewNATSProcess(t, NATSProcessOptions{})
	nc, err := nats.Connect(p.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var msgs uint64
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s, err := js.Stream(ctx, "S")
		if err == nil {
			msgs = s.CachedInfo().State.Msgs
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if msgs != 1 {
		t.Errorf("after kill and restart the stream holds %d messages, want 1", msgs)
	}
}
