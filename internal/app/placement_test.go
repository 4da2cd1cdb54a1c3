package app

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/harness"
)

// TestUntilPlaced_TriesAgainWhileJetStreamCannotPlace: a JetStream
// cluster that cannot place a bucket answers "no suitable peers for
// placement" (here, three nodes asked for five replicas; at start, a
// cluster whose meta leader has not heard from every peer yet, which
// made duplex exit at start in TestNATSCluster_EachNodeKilled).
// untilPlaced tries again on that answer, saying so each time, and
// returns at once any other error.
func TestUntilPlaced_TriesAgainWhileJetStreamCannotPlace(t *testing.T) {
	ctx := context.Background()
	cl := harness.NewNATSCluster(t, harness.NATSClusterOptions{})
	nc, err := nats.Connect(cl.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, unplaceable := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "FIVE", Replicas: 5})
	if !placementPending(unplaceable) {
		t.Fatalf("three nodes asked for five replicas: %v, want JetStream's answer that it cannot place it", unplaceable)
	}
	var logs bytes.Buffer
	calls := 0
	err = untilPlaced(ctx, slog.New(slog.NewTextHandler(&logs, nil)), "the lease bucket", func(ctx context.Context) error {
		calls++
		if calls <= 2 {
			return unplaceable // what the cluster answered
		}
		_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "THREE", Replicas: 3})
		return err
	})
	if err != nil || calls != 3 {
		t.Fatalf("untilPlaced: %v after %d calls, want success on the third", err, calls)
	}
	if n := strings.Count(logs.String(), "JetStream cannot place the lease bucket yet; trying again"); n != 2 {
		t.Errorf("%d waits said, want 2:\n%s", n, logs.String())
	}
	other := errors.New("nats: authorization violation")
	calls = 0
	if err := untilPlaced(ctx, slog.New(slog.DiscardHandler), "the lease bucket", func(context.Context) error { calls++; return other }); !errors.Is(err, other) || calls != 1 {
		t.Errorf("another error: %v after %d calls, want it at once", err, calls)
	}
}
