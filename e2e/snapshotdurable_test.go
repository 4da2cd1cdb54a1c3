package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// TestSnapshot_NotCompleteUntilDurable: JetStream refuses the initial
// snapshot's last chunk (the stream is limited to one message fewer,
// discarding new ones). The snapshot is never recorded complete while that lasts;
// once the limit is lifted, the next session copies again and every row
// is on the stream before the snapshot counts as done.
func TestSnapshot_NotCompleteUntilDurable(t *testing.T) {
	const accounts = 2000
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{})
	if err := cl.CreateDatabase(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	schema, _ := fs.ReadFile(examples.OrderToCash, "order-to-cash/crm.sql")
	b, _ := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	m, err := transform.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "crm", string(schema)+fmt.Sprintf(`;
INSERT INTO accounts (id, name, currency, credit_limit)
	SELECT gen_random_uuid(), 'acc ' || i, 'EUR', 1000.00 FROM generate_series(1, %d) i`, accounts)); err != nil {
		t.Fatal(err)
	}
	js := harness.NewJetStream(t)
	if err := pipeline.EnsureStreams(ctx, js, pipeline.StreamConfig{Sources: []string{"crm", "erp"}}); err != nil {
		t.Fatal(err)
	}
	limit := func(maxMsgs int64) {
		t.Helper()
		s, err := js.Stream(ctx, pipeline.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		sc := s.CachedInfo().Config
		sc.MaxMsgs, sc.Discard = maxMsgs, jetstream.DiscardNew
		if _, err := js.UpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	// One message fewer than the snapshot's chunks (100 rows each): every
	// chunk but the last is accepted, so the last one's refusal is known
	// only after the snapshot handed everything on, when it drains.
	limit(accounts/100 - 1)

	keys := map[string][]string{}
	for _, e := range m.Entities {
		if e.Publishes("crm") {
			keys[e.Tables["crm"].QualifiedTable()] = e.Tables["crm"].KeyColumns()
		}
	}
	src, err := pgcapture.New(pgcapture.Config{System: "crm", DSN: cl.DSN("crm"), Slot: "snapdur", Publication: "snapdur",
		Tables: m.SourceTables("crm"), Keys: keys, Snapshot: pgcapture.SnapshotInitial, SnapshotChunk: 100})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	stats := &pipeline.SourceStats{}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- pipeline.RunCapture(rctx, js, src, pipeline.ProducerConfig{Mapping: m, Stats: stats})
	}()
	t.Cleanup(func() { stop(); <-done })
	conn, err := pgx.Connect(ctx, cl.DSN("crm"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	snapshotDone := func() bool {
		t.Helper()
		ok, err := pgstate.SnapshotDone(ctx, conn, "snapdur")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	// While JetStream refuses the chunks, sessions fail visibly and the
	// snapshot is not recorded.
	waitFor(t, 60*time.Second, func() (bool, string) {
		c := stats.Snapshot()
		return c.Reconnects >= 2, fmt.Sprintf("%d sessions ended (last error %q)", c.Reconnects, c.LastError)
	})
	if snapshotDone() {
		t.Fatal("the snapshot was recorded complete while JetStream refused its chunks")
	}
	if c := stats.Snapshot(); !strings.Contains(c.LastError, "maximum messages") && !strings.Contains(c.LastError, "not recorded complete") {
		t.Errorf("the failing sessions do not say why: %q", c.LastError)
	}

	// The fault is removed: the next session copies every row.
	limit(-1)
	waitFor(t, 120*time.Second, snapshotWaiter(snapshotDone))
	got := accountsOnStream(t, js)
	if got != accounts {
		t.Errorf("%d distinct accounts on the stream after the snapshot was recorded, want %d", got, accounts)
	}
}

func snapshotWaiter(done func() bool) func() (bool, string) {
	return func() (bool, string) { return done(), "snapshot not recorded complete" }
}

// accountsOnStream counts the distinct account keys in the crm messages
// of DUPLEX.
func accountsOnStream(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, pipeline.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{pipeline.Subject("crm")}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			var tx transform.Tx
			if err := json.Unmarshal(msg.Data(), &tx); err != nil {
				t.Fatal(err)
			}
			for _, ev := range tx.Events {
				if ev.Entity == "customer" || ev.Entity == "account" {
					seen[fmt.Sprint(ev.Key)] = true
				}
			}
		}
		if got == 0 {
			return len(seen)
		}
	}
}
