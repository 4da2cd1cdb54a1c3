package harness

import (
	"context"
	"fmt"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TB is the part of testing.TB the helpers need. It is declared here so the
// package does not import "testing".
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	Logf(format string, args ...any)
}

// NewCluster starts a cluster and closes it when the test ends.
func NewCluster(t TB, opts ClusterOptions) *Cluster {
	t.Helper()
	c, err := StartCluster(context.Background(), opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("harness: close cluster: %v", err)
		}
	})
	return c
}

// NewNATS starts a NATS server with a temporary store and closes it when the
// test ends.
func NewNATS(t TB) *NATS {
	t.Helper()
	n, err := StartNATS(NATSOptions{})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(n.Close)
	return n
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewJetStream starts a NATS server with a temporary store (NewNATS) and
// returns a JetStream context on a connection to it; both end with the
// test.
func NewJetStream(t TB) jetstream.JetStream {
	t.Helper()
	n := NewNATS(t)
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatalf("harness: connect to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("harness: jetstream: %v", err)
	}
	return js
}
