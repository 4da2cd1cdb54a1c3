package postgres

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
)

// recorder keeps every chunk handed on, in order.
type recorder struct {
	mu     sync.Mutex
	chunks []*capture.Chunk
}

func (r *recorder) Chunk(_ context.Context, c *capture.Chunk) error {
	r.mu.Lock()
	r.chunks = append(r.chunks, c)
	r.mu.Unlock()
	return nil
}

func (r *recorder) Drain(context.Context) error { return nil }

func (r *recorder) all() []*capture.Chunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.chunks)
}

// backfillSetup is a database with table items (id, v) filled by fill, a
// Source on it, and a connection for requests.
type backfillSetup struct {
	cl   *harness.Cluster
	src  *Source
	conn *pgx.Conn
	rec  *recorder
}

func newBackfillSetup(t *testing.T, fill string) *backfillSetup {
	t.Helper()
	return newBackfillSetupWith(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL); `+fill, []string{"id"}, SnapshotNever)
}

// newBackfillSetupWith is newBackfillSetup with the table items made by ddl,
// keyed by key, and the snapshot mode (SnapshotInitial copies in chunks of
// 4 rows).
func newBackfillSetupWith(t *testing.T, ddl string, key []string, snapshot string) *backfillSetup {
	t.Helper()
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{})
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", ddl); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "bf", Publication: "bf", Tables: []string{"public.items"},
		Keys: map[string][]string{"public.items": key}, Snapshot: snapshot, SnapshotChunk: 4})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &backfillSetup{cl: cl, src: src, conn: conn, rec: &recorder{}}
}

// stream runs the source until the test ends and waits until its slot is
// streamed.
func (b *backfillSetup) stream(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.src.Stream(ctx, b.rec) }()
	t.Cleanup(func() { cancel(); <-done })
	waitSlot(t, b.conn)
}

// run requests a backfill and waits until it is done; it returns the rows
// it read.
func (b *backfillSetup) run(t *testing.T, filter string, chunk int) int64 {
	t.Helper()
	ctx := context.Background()
	id, err := RequestBackfill(ctx, b.conn, "bf", "public.items", filter, chunk)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		bf, err := BackfillByID(ctx, b.conn, id)
		if err != nil {
			t.Fatal(err)
		}
		if bf.Status == "done" {
			return bf.Rows
		}
		if bf.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("backfill %s: %s", bf.Status, bf.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBackfill_LiveChangeBetweenWatermarksWins: a row updated after its
// chunk was read but before the high watermark is left out of the chunk,
// so the older copy the chunk read can never follow (and overwrite) the
// live change; the chunk comes after every change committed before the
// high watermark.
func TestBackfill_LiveChangeBetweenWatermarksWins(t *testing.T) {
	ctx := context.Background()
	b := newBackfillSetup(t, `INSERT INTO items SELECT g, 'orig' FROM generate_series(1, 10) g`)
	live, err := pgx.Connect(ctx, b.cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	b.src.afterBackfillRead = func(_ int64, chunk int) {
		if chunk == 0 {
			if _, err := live.Exec(ctx, `UPDATE items SET v = 'live' WHERE id = 3`); err != nil {
				t.Error(err)
			}
		}
	}
	b.stream(t)
	if n := b.run(t, "", 4); n != 10 {
		t.Errorf("backfill read %d rows, want 10", n)
	}
	rec := b.rec

	// In order: the live update of 3, then chunk 0 without 3, then the
	// other chunks; every other row exactly once, with its value.
	var order []string
	seen := map[int64]string{}
	for _, c := range rec.all() {
		for _, ch := range c.Changes {
			id := ch.New["id"].(int64)
			v := ch.New["v"].(string)
			if c.Tx.Snapshot {
				order = append(order, "chunk")
				if _, dup := seen[id]; dup {
					t.Errorf("row %d backfilled twice", id)
				}
				seen[id] = v
			} else {
				order = append(order, "live")
				if id != 3 || v != "live" {
					t.Errorf("unexpected live change %d=%s", id, v)
				}
			}
		}
	}
	if len(order) == 0 || order[0] != "live" {
		t.Errorf("the live change did not come first: %v", order)
	}
	if v, ok := seen[3]; ok {
		t.Errorf("row 3 changed between the watermarks and was backfilled anyway, with %q", v)
	}
	for i := int64(1); i <= 10; i++ {
		if i != 3 && seen[i] != "orig" {
			t.Errorf("row %d: backfilled %q, want orig", i, seen[i])
		}
	}
}

// TestBackfill_WhereSelectsRows: a backfill with a condition re-reads only
// the rows it selects, in chunks, and records how many.
func TestBackfill_WhereSelectsRows(t *testing.T) {
	b := newBackfillSetup(t, `INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	b.stream(t)
	if _, err := RequestBackfill(context.Background(), b.conn, "bf", "public.items", "no_such_column = 1", 10); err == nil {
		t.Error("a condition naming an unknown column was accepted")
	}
	if n := b.run(t, "id % 7 = 0", 4); n != 14 {
		t.Errorf("backfill read %d rows, want the 14 multiples of 7", n)
	}
	rec := b.rec
	var got []int64
	chunks := 0
	for _, c := range rec.all() {
		if c.Tx.Snapshot {
			chunks++
			for _, ch := range c.Changes {
				got = append(got, ch.New["id"].(int64))
			}
		}
	}
	if len(got) != 14 || chunks != 4 {
		t.Errorf("backfilled %v in %d chunks, want the 14 multiples of 7 in 4 chunks", got, chunks)
	}
	for _, v := range got {
		if v%7 != 0 {
			t.Errorf("row %d does not match the condition", v)
		}
	}
}

func waitSlot(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var active bool
		_ = conn.QueryRow(context.Background(), `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'bf'`).Scan(&active)
		if active {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the replication session did not start")
}

// TestSnapshotAndBackfill_CompositeKey: a table keyed by (company,
// entry_no) is copied by the initial snapshot and by a backfill in pages
// of 4 rows ordered by both columns (pages end inside a company), each row
// exactly once; a row changed between a backfill chunk's watermarks is
// left out of the chunk by its whole key, and rows sharing one part of its
// key are not.
func TestSnapshotAndBackfill_CompositeKey(t *testing.T) {
	ctx := context.Background()
	b := newBackfillSetupWith(t, `CREATE TABLE items (company text NOT NULL, entry_no int NOT NULL, v text NOT NULL, PRIMARY KEY (company, entry_no));
		INSERT INTO items SELECT c, g, 'orig' FROM unnest(ARRAY['ACME', 'Beta, "Ltd"', 'Z']) c, generate_series(1, 6) g`,
		[]string{"company", "entry_no"}, SnapshotInitial)
	if err := b.src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	live, err := pgx.Connect(ctx, b.cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	b.src.afterBackfillRead = func(_ int64, chunk int) {
		if chunk == 1 {
			if _, err := live.Exec(ctx, `UPDATE items SET v = 'live' WHERE company = 'Beta, "Ltd"' AND entry_no = 2`); err != nil {
				t.Error(err)
			}
		}
	}
	b.stream(t)
	if n := b.run(t, "", 4); n != 18 {
		t.Errorf("backfill read %d rows, want 18", n)
	}
	type key struct {
		company string
		no      int64
	}
	snap, fill := map[key]int{}, map[key]string{}
	var snapOrder []key
	backfill := false
	for _, c := range b.rec.all() {
		for _, ch := range c.Changes {
			k := key{ch.New["company"].(string), ch.New["entry_no"].(int64)}
			switch {
			case !c.Tx.Snapshot:
				backfill = true // the live change: backfill chunks follow
				if k != (key{`Beta, "Ltd"`, 2}) || ch.New["v"] != "live" {
					t.Errorf("unexpected live change %v", ch.New)
				}
			case !backfill && c.Tx.CommitLSN == b.rec.all()[0].Tx.CommitLSN:
				snap[k]++
				snapOrder = append(snapOrder, k)
			default:
				if _, dup := fill[k]; dup {
					t.Errorf("row %v backfilled twice", k)
				}
				fill[k] = ch.New["v"].(string)
			}
		}
	}
	if len(snap) != 18 {
		t.Errorf("the snapshot copied %d distinct rows, want 18", len(snap))
	}
	for k, n := range snap {
		if n != 1 {
			t.Errorf("the snapshot copied %v %d times", k, n)
		}
	}
	if !slices.IsSortedFunc(snapOrder, func(a, b key) int {
		if a.company != b.company {
			return strings.Compare(a.company, b.company)
		}
		return int(a.no - b.no)
	}) {
		t.Errorf("the snapshot is not in key order: %v", snapOrder)
	}
	if _, ok := fill[key{`Beta, "Ltd"`, 2}]; ok {
		t.Error("the row changed between the watermarks was backfilled anyway")
	}
	if len(fill) != 17 {
		t.Errorf("backfilled %d rows, want the 17 not changed live: %v", len(fill), fill)
	}
}
