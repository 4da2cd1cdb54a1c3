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

// TestUnchanged_ValuesFoundForUpdates: an UPDATE that leaves an out-of-line
// (TOASTed) value unchanged reaches the handler with that value known:
// from the old row under REPLICA IDENTITY FULL (the value at the change,
// even when a later transaction changed it), else read from the source by
// key (the current row: the later value, whose own change follows in the
// slot); unknown when the row is gone; never NULL.
// streamInto streams src into a recorder until the test ends; a stream
// that ends before is logged.
func streamInto(t *testing.T, src *Source) *recorder {
	t.Helper()
	rec := &recorder{}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Stream(sctx, rec) }()
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		select {
		case err := <-done:
			t.Logf("stream ended: %v", err)
			done <- err
		case <-sctx.Done():
		}
	}()
	return rec
}

func TestUnchanged_ValuesFoundForUpdates(t *testing.T) {
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{})
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", `
		CREATE TABLE byKey (id int PRIMARY KEY, status text, body text);
		CREATE TABLE fullt (id int PRIMARY KEY, status text, body text);
		ALTER TABLE byKey ALTER body SET STORAGE EXTERNAL;
		ALTER TABLE fullt ALTER body SET STORAGE EXTERNAL;
		ALTER TABLE fullt REPLICA IDENTITY FULL;
		INSERT INTO byKey SELECT i, 'new', repeat('k' || i, 5000) FROM generate_series(1, 3) i;
		INSERT INTO fullt SELECT i, 'new', repeat('f' || i, 5000) FROM generate_series(1, 2) i;`); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "bf", Publication: "bf", Tables: []string{"public.bykey", "public.fullt"},
		Keys: map[string][]string{"public.bykey": {"id"}, "public.fullt": {"id"}}, Snapshot: SnapshotNever})
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
	for _, sql := range []string{
		// One transaction: 1 and 2 of byKey, 1 of fullt, status only.
		`UPDATE byKey SET status = 'a' WHERE id IN (1, 2); UPDATE fullt SET status = 'a' WHERE id = 1`,
		// Later: 2's body changed, 3 updated then deleted, fullt 1's body changed.
		`UPDATE byKey SET body = 'later' WHERE id = 2`,
		`UPDATE byKey SET status = 'b' WHERE id = 3`,
		`DELETE FROM byKey WHERE id = 3`,
		`UPDATE fullt SET body = 'later' WHERE id = 1`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	rec := streamInto(t, src)

	type seen struct {
		table, status string
		id            int64
		body          any
	}
	var updates []seen
	deadline := time.Now().Add(20 * time.Second)
	for len(updates) < 6 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		updates = nil
		for _, c := range rec.all() {
			for _, ch := range c.Changes {
				if ch.Op == capture.Update {
					updates = append(updates, seen{ch.Table, ch.New["status"].(string), ch.New["id"].(int64), ch.New["body"]})
				}
			}
		}
	}
	short := func(v any) any {
		switch x := v.(type) {
		case string:
			if len(x) > 12 {
				return x[:6] + "…" + string(rune('0'+len(x)/1000))
			}
		case capture.Unchanged:
			if s, ok := x.Value.(string); ok && len(s) > 12 {
				return capture.Unchanged{Known: x.Known, Value: s[:6] + "…"}
			}
		}
		return v
	}
	want := []struct {
		table, status string
		id            int64
		body          any
	}{
		{"bykey", "a", 1, capture.Unchanged{Known: true, Value: strings.Repeat("k1", 5000)}},
		{"bykey", "a", 2, capture.Unchanged{Known: true, Value: "later"}}, // the current row
		{"fullt", "a", 1, capture.Unchanged{Known: true, Value: strings.Repeat("f1", 5000)}},
		{"bykey", "a", 2, "later"},
		{"bykey", "b", 3, capture.Unchanged{}}, // deleted since: unknown
		{"fullt", "a", 1, "later"},
	}
	if len(updates) != len(want) {
		t.Fatalf("updates seen: %d, want %d: %v", len(updates), len(want), updates)
	}
	for i, w := range want {
		u := updates[i]
		if u.table != w.table || u.status != w.status || u.id != w.id || u.body != w.body {
			t.Errorf("update %d: %s %d %s body %v, want %s %d %s body %v", i, u.table, u.id, u.status, short(u.body), w.table, w.id, w.status, short(w.body))
		}
	}
}
