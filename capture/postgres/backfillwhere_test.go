package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// TestBackfill_ConditionCannotWrite: a condition refused at request time
// records nothing and runs nothing; a condition written into
// duplex.backfills by other means than RequestBackfill (calling a function
// that deletes rows) is read again by the capture, refused, and the
// backfill fails naming the reason, with the rows untouched.
func TestBackfill_ConditionCannotWrite(t *testing.T) {
	b := newBackfillSetup(t, `INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 20) g;
		CREATE FUNCTION purge() RETURNS boolean LANGUAGE sql AS 'DELETE FROM items RETURNING true';`)
	b.stream(t)
	ctx := context.Background()
	count := func() int {
		var n int
		if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, filter := range []string{"true; DELETE FROM items", "purge()", "id > 0) OR (purge()", "id IN (SELECT id FROM items WHERE purge())"} {
		if _, err := RequestBackfill(ctx, b.conn, "bf", "public.items", filter, 10); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("RequestBackfill where %q: %v, want a refusal", filter, err)
		}
	}
	if _, err := RequestBackfill(ctx, b.conn, "bf", "public.items", "id > 0", MaxBackfillChunk+1); err == nil {
		t.Errorf("a chunk of %d rows was accepted", MaxBackfillChunk+1)
	}
	var requested int
	if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM duplex.backfills`).Scan(&requested); err == nil && requested != 0 {
		t.Errorf("%d backfills recorded by refused requests", requested)
	}
	if n := count(); n != 20 {
		t.Fatalf("%d rows left after refused requests, want 20", n)
	}

	// Around RequestBackfill, straight into the table.
	if err := pgstate.Ensure(ctx, b.conn); err != nil {
		t.Fatal(err)
	}
	id, err := pgstate.RequestBackfill(ctx, b.conn, "bf", "public.items", `"public"."items"`, "purge()", 10)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		bf, err := BackfillByID(ctx, b.conn, id)
		if err != nil {
			t.Fatal(err)
		}
		if bf.Status == "failed" {
			if !strings.Contains(bf.Error, "function purge is not allowed") {
				t.Errorf("backfill failed with %q, want the refusal of purge", bf.Error)
			}
			break
		}
		if bf.Status == "done" || time.Now().After(deadline) {
			t.Fatalf("backfill with a forged condition: %s (%s), want failed", bf.Status, bf.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := count(); n != 20 {
		t.Errorf("%d rows left after the forged backfill, want 20", n)
	}
}
