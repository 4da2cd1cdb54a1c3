package postgres_test

import (
	"context"
	"io/fs"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) {
	var err error
	cluster, err = harness.StartCluster(context.Background(), harness.ClusterOptions{})
	if err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(runThen{m, func() { _ = cluster.Close() }})
}

// runThen runs the tests, then closes the shared cluster before goleak
// looks for goroutines that outlived them.
type runThen struct {
	m     *testing.M
	after func()
}

func (r runThen) Run() int {
	defer r.after()
	return r.m.Run()
}

var dbSeq int

// newTarget creates an ERP database and a sink into it.
func newTarget(t testing.TB) (*postgres.Sink, *pgx.Conn, *transform.Mapping) {
	t.Helper()
	ctx := context.Background()
	dbSeq++
	db := "erp_" + uuid.NewString()[:8]
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	// Replication origins are cluster-wide and each one holds one of the
	// max_replication_slots state slots until dropped: drop the test's
	// origin once every sink bound to it is closed (cleanups run last
	// registered first).
	t.Cleanup(func() { dropOrigin(t, "duplex_"+db) })
	sql, _ := fs.ReadFile(examples.OrderToCash, "order-to-cash/erp.sql")
	if err := cluster.Exec(ctx, db, string(sql)); err != nil {
		t.Fatal(err)
	}
	mb, _ := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	m, err := transform.Parse(mb)
	if err != nil {
		t.Fatal(err)
	}
	s, err := postgres.New(postgres.Config{Flow: "to-erp", Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	conn, err := pgx.Connect(ctx, cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return s, conn, m
}

func tx(lsn capture.LSN, events ...transform.Event) *transform.Tx {
	t := &transform.Tx{Version: 1, Source: "crm", CommitLSN: lsn, EndLSN: lsn + 1, CommitTime: time.Now().UTC(), Xid: uint32(lsn), Last: true}
	for i, e := range events {
		e.Version, e.Source = 1, "crm"
		e.Pos = transform.Position{LSN: lsn, CommitTime: t.CommitTime, Index: i}
		e.ID = transform.EventID("crm", lsn, i)
		t.Events = append(t.Events, e)
	}
	return t
}

func customer(id uuid.UUID, name string) transform.Event {
	return transform.Event{Entity: "customer", Op: transform.OpUpsert, Key: id.String(), Data: map[string]any{
		"account_id": id.String(), "name": name, "currency": "EUR", "credit_limit": transform.Money{Amount: "10.00", Currency: "EUR"}}}
}

func order(id, acc uuid.UUID) transform.Event {
	return transform.Event{Entity: "order", Op: transform.OpUpsert, Key: id.String(), Data: map[string]any{
		"order_id": id.String(), "account_id": acc.String(), "currency": "EUR", "total": transform.Money{Amount: "1.50", Currency: "EUR"},
		"status": "open", "ordered_at": time.Now().UTC().Format(time.RFC3339Nano)}}
}

func TestSink_ApplyParentAndChildInOneBatch(t *testing.T) {
	s, conn, _ := newTarget(t)
	ctx := context.Background()
	acc, ord := uuid.New(), uuid.New()
	res, err := s.Apply(ctx, []*transform.Tx{tx(100, customer(acc, "A")), tx(200, order(ord, acc))})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.Applied != 2 {
		t.Errorf("applied %d, want 2", res.Applied)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM sales_orders o JOIN customers c USING (customer_no) WHERE c.crm_account_id = $1`, acc).Scan(&n); err != nil || n != 1 {
		t.Errorf("order joined to customer: %d %v", n, err)
	}
	_ = pipeline.Permanent
}

// dropOrigin drops a replication origin, waiting for the closed sessions
// that held it to end.
func dropOrigin(t testing.TB, origin string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		t.Errorf("drop replication origin %s: %v", origin, err)
		return
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := conn.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1`, origin)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("drop replication origin %s: %v", origin, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
