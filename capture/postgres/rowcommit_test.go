package postgres

import (
	"context"
	"testing"
	"time"
)

// TestSnapshotAndBackfill_RowCommitTime: the rows of a table of shared
// fields (Config.CommitTimes) copied by the initial snapshot and by a
// backfill carry the commit time of their last write, read with the row
// and not as one of its columns: the age the sink into this database
// gives a value it never versioned, which the copy must carry to the
// other system (a copy carrying the copy's time instead swapped two
// never-versioned values copied both ways).
func TestSnapshotAndBackfill_RowCommitTime(t *testing.T) {
	ctx := context.Background()
	b := newBackfillSetupWith(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
		INSERT INTO items SELECT g, 'orig' FROM generate_series(1, 6) g`, []string{"id"}, SnapshotInitial)
	b.src.cfg.CommitTimes = map[string]bool{"public.items": true}
	var inserted time.Time
	if err := b.conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM items WHERE id = 1`).Scan(&inserted); err != nil {
		t.Fatal(err)
	}
	if err := b.src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	b.stream(t)
	if _, err := b.conn.Exec(ctx, `UPDATE items SET v = 'later' WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	var updated time.Time
	if err := b.conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM items WHERE id = 3`).Scan(&updated); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the live update streams before the backfill's watermarks
	if n := b.run(t, "", 10); n != 6 {
		t.Fatalf("backfill read %d rows, want 6", n)
	}
	copies, live := 0, 0
	for _, c := range b.rec.all() {
		for _, ch := range c.Changes {
			if !c.Tx.Snapshot {
				live++
				if ch.RowCommitTime != nil {
					t.Errorf("a streamed change carries a row commit time")
				}
				continue
			}
			copies++
			if len(ch.New) != 2 {
				t.Errorf("copied row %v: want its two columns only", ch.New)
			}
			want := inserted
			if ch.New["id"] == int32(3) || ch.New["id"] == int64(3) {
				if ch.New["v"] == "later" {
					want = updated
				}
			}
			if ch.RowCommitTime == nil || !ch.RowCommitTime.Equal(want) {
				t.Errorf("copied row %v: row commit time %v, want %s", ch.New, ch.RowCommitTime, want)
			}
		}
	}
	if copies != 12 {
		t.Errorf("%d rows copied, want 6 by the snapshot and 6 by the backfill", copies)
	}
}
