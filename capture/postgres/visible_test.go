package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// heldCommit runs sql in a session of db that commits with
// synchronous_commit on against a synchronous standby that never answers
// (the cluster's synchronous_standby_names names nobody): the transaction
// is flushed, decoded by the walsender, and invisible to other sessions
// until the wait is cancelled, hold after it began. It returns when the
// transaction committed.
func heldCommit(t *testing.T, cl *harness.Cluster, db, sql string, hold time.Duration) {
	t.Helper()
	heldCommitDuring(t, cl, db, sql, hold, nil)
}

// heldCommitDuring is heldCommit that runs during (when set) once the
// transaction waits, before the hold.
func heldCommitDuring(t *testing.T, cl *harness.Cluster, db, sql string, hold time.Duration, during func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cl.DSN(db))
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
		_, err := conn.Exec(ctx, "SET synchronous_commit = on;\n"+sql)
		committed <- err
	}()
	admin, err := pgx.Connect(ctx, cl.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	waitUntil(t, 20*time.Second, "the transaction waits for the synchronous standby", func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'`, pid).Scan(&n)
		return n == 1
	})
	if during != nil {
		during()
	}
	time.Sleep(hold)
	if _, err := admin.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	if err := <-committed; err != nil {
		t.Fatalf("the held transaction: %v", err)
	}
}

// syncRepCluster is a cluster whose synchronous standby never answers;
// only a session that sets synchronous_commit = on waits for it.
func syncRepCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	return harness.NewCluster(t, harness.ClusterOptions{Settings: map[string]string{
		"synchronous_standby_names": "nobody",
		"synchronous_commit":        "local",
		// No transaction ID is assigned behind the tests' backs.
		"autovacuum": "off",
	}})
}

// streamingSource creates database src on cl with ddl, a Source "crm"
// of table (key id, no snapshot) on it, and streams it into a recorder
// until the test ends.
func streamingSource(t *testing.T, cl *harness.Cluster, ddl, table string) *recorder {
	t.Helper()
	ctx := context.Background()
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", ddl); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "p", Publication: "p", Tables: []string{table},
		Keys: map[string][]string{table: {"id"}}, Snapshot: SnapshotNever})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	return streamInto(t, src)
}

// partitionedOrders is orders, partitioned by range of id, with one
// partition (0-99).
const partitionedOrders = `
	CREATE TABLE orders (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
	CREATE TABLE orders_1 PARTITION OF orders FOR VALUES FROM (0) TO (100);`

// capturedFrom waits for a captured change and returns each as "<table>
// from <partition>".
func capturedFrom(t *testing.T, rec *recorder) []string {
	t.Helper()
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
	return tables
}

// TestPartition_NotYetVisibleWithAnOlderTransactionOpen: as
// TestPartition_CreatedInADecodedTransactionNotYetVisible, with an older
// transaction still open (any concurrent load): the decoded transaction's
// ID is then newer than the xmax of a new snapshot (latestCompletedXid +
// 1), and widening it to the epoch of that xmax took it for a
// transaction of the future, "not in progress": the catalog was read at
// once, the new partition was not seen and its row reported as a change
// of an unmapped table.
func TestPartition_NotYetVisibleWithAnOlderTransactionOpen(t *testing.T) {
	ctx := context.Background()
	cl := syncRepCluster(t)
	rec := streamingSource(t, cl, partitionedOrders, "public.orders")

	// An older transaction with an ID, open throughout.
	older, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer older.Close(ctx)
	otx, err := older.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = otx.Rollback(ctx) }()
	if _, err := otx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	heldCommit(t, cl, "src", `CREATE TABLE orders_2 PARTITION OF orders FOR VALUES FROM (100) TO (200);
		INSERT INTO orders VALUES (150, 'in the new partition')`, 500*time.Millisecond)
	tables := capturedFrom(t, rec)
	if want := "public.orders from public.orders_2"; strings.Join(tables, ", ") != want {
		t.Fatalf("captured %q, want %q", tables, want)
	}
}

// TestUnchanged_ReadAtCommitWaitsUntilVisible: the unchanged TOASTed
// values of a transaction's last chunk (read when its commit is decoded)
// are read once the transaction is visible. Read before, the row is the
// one before the transaction: an update that changed the value and a
// later one of the same transaction that left it as it was carried the
// value from before the first.
func TestUnchanged_ReadAtCommitWaitsUntilVisible(t *testing.T) {
	cl := syncRepCluster(t)
	rec := streamingSource(t, cl, `
		CREATE TABLE docs (id int PRIMARY KEY, body text, note text);
		ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
		INSERT INTO docs VALUES (1, repeat('w', 10000), 'a');`, "public.docs")

	heldCommit(t, cl, "src", `BEGIN;
		UPDATE docs SET body = repeat('x', 10000) WHERE id = 1;
		UPDATE docs SET note = 'b' WHERE id = 1;
		COMMIT`, 500*time.Millisecond)
	var changes []capture.Change
	waitUntil(t, 20*time.Second, "the updates are captured", func() bool {
		changes = nil
		for _, c := range rec.all() {
			changes = append(changes, c.Changes...)
		}
		return len(changes) >= 2
	})
	if len(changes) != 2 {
		t.Fatalf("captured %d changes, want the 2 updates", len(changes))
	}
	u, ok := changes[1].New["body"].(capture.Unchanged)
	if !ok {
		t.Fatalf("second update: body is %T, want capture.Unchanged (pgoutput's 'u')", changes[1].New["body"])
	}
	if got, _ := u.Value.(string); !u.Known || got != strings.Repeat("x", 10000) {
		t.Fatalf("second update: body known %v, value %.12q…, want the first update's (xxx…)", u.Known, got)
	}
}

// visibilityRecorder records, for each chunk it is handed, how many of the
// rows the chunk inserted into items a new snapshot of the source shows
// at that moment.
type visibilityRecorder struct {
	recorder
	conn    *pgx.Conn
	visible []int // per chunk handed on
	rows    []int
}

func (r *visibilityRecorder) Chunk(ctx context.Context, c *capture.Chunk) error {
	var ids []int64
	for _, ch := range c.Changes {
		if id, ok := ch.New["id"].(int64); ok {
			ids = append(ids, id)
		}
	}
	var n int
	if err := r.conn.QueryRow(ctx, `SELECT count(*) FROM items WHERE id = ANY($1)`, ids).Scan(&n); err != nil {
		return err
	}
	r.mu.Lock()
	r.visible = append(r.visible, n)
	r.rows = append(r.rows, len(ids))
	r.mu.Unlock()
	return r.recorder.Chunk(ctx, c)
}

// TestStream_HandsOnATransactionOnceVisible: a transaction is handed on
// only once a new snapshot of its database shows it. The walsender
// decodes it as soon as its commit record is flushed, before the
// committing backend leaves the proc array; handed on at once, its
// changes reached the other system, whose write-back (the ERP's order
// number for a sales order duplex inserted) came back to this database
// while the row was not yet visible there: the update found no row, and
// the write-back was left out as if the row had been deleted, silently
// (TestOps_RestoreERPFromDumpThenReplay under CPU load: an order without
// its order_no).
func TestStream_HandsOnATransactionOnceVisible(t *testing.T) {
	ctx := context.Background()
	cl := syncRepCluster(t)
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", `CREATE TABLE items (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "p", Publication: "p", Tables: []string{"public.items"},
		Keys: map[string][]string{"public.items": {"id"}}, Snapshot: SnapshotNever})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rec := &visibilityRecorder{conn: conn}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Stream(sctx, rec) }()
	defer func() { cancel(); <-done }()

	// A newer transaction ends while the insert waits: a new snapshot's
	// xmax is then above the insert's ID, which only xip shows running.
	heldCommitDuring(t, cl, "src", `INSERT INTO items VALUES (1, 'a'), (2, 'b')`, time.Second, func() {
		if _, err := conn.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
			t.Fatal(err)
		}
	})
	waitUntil(t, 20*time.Second, "the insert is handed on", func() bool { return len(rec.all()) > 0 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.visible) != 1 || rec.rows[0] != 2 || rec.visible[0] != 2 {
		t.Fatalf("handed on %d chunks with %v rows, of which a new snapshot showed %v when handed on; want 1 chunk of 2 rows, both visible", len(rec.visible), rec.rows, rec.visible)
	}
}
