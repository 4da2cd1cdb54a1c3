package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/harness"
)

// TestPartition_CreatedInADecodedTransactionNotYetVisible: a partition
// created and filled in one transaction is routed to its mapped table even
// when the walsender decodes the transaction before other sessions can see
// it (between its commit record's flush and its leaving the proc array).
// The window is held open here by a synchronous standby that never answers:
// the committing backend waits for it after the flush, invisible, until
// its wait is cancelled. Found by CI: under load the rows of such a
// partition were reported as changes of an unmapped table and lost.
func TestPartition_CreatedInADecodedTransactionNotYetVisible(t *testing.T) {
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{Settings: map[string]string{
		"synchronous_standby_names": "nobody",
		// Every session commits without waiting but the one that holds
		// the window open.
		"synchronous_commit": "local",
	}})
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", `
		CREATE TABLE orders (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
		CREATE TABLE orders_1 PARTITION OF orders FOR VALUES FROM (0) TO (100);`); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "p", Publication: "p", Tables: []string{"public.orders"},
		Keys: map[string][]string{"public.orders": {"id"}}, Snapshot: SnapshotNever})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	rec := streamInto(t, src)

	conn, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var pid int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, `SET synchronous_commit = on;
			CREATE TABLE orders_2 PARTITION OF orders FOR VALUES FROM (100) TO (200);
			INSERT INTO orders VALUES (150, 'in the new partition')`)
		committed <- err
	}()
	admin, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// The transaction is flushed and waits for the standby: the capture
	// has it (or will) while no other session sees orders_2.
	waitUntil(t, 20*time.Second, "the insert waits for the synchronous standby", func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'`, pid).Scan(&n)
		return n == 1
	})
	time.Sleep(500 * time.Millisecond)
	if _, err := admin.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	// Cancelling the wait leaves the transaction committed (with a
	// warning), and visible.
	if err := <-committed; err != nil {
		t.Fatalf("the insert: %v", err)
	}
	var tables []string
	waitUntil(t, 20*time.Second, "the insert is captured", func() bool {
		tables = nil
		for _, c := range rec.all() {
			for _, ch := range c.Changes {
				tables = append(tables, ch.QualifiedTable()+" from "+ch.Partition)
			}
		}
		return len(tables) > 0
	})
	if want := "public.orders from public.orders_2"; strings.Join(tables, ", ") != want {
		t.Fatalf("captured %q, want %q", tables, want)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
