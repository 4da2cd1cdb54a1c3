package postgres

import (
	"strings"
	"testing"
	"time"
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
	cl := syncRepCluster(t)
	rec := streamingSource(t, cl, partitionedOrders, "public.orders")
	// The transaction is flushed and waits for the standby: the capture
	// has it (or will) while no other session sees orders_2. Cancelling
	// the wait leaves it committed (with a warning), and visible.
	heldCommit(t, cl, "src", `CREATE TABLE orders_2 PARTITION OF orders FOR VALUES FROM (100) TO (200);
		INSERT INTO orders VALUES (150, 'in the new partition')`, 500*time.Millisecond)
	tables := capturedFrom(t, rec)
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
