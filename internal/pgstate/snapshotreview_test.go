package pgstate_test

// Review of 755879c (the versions of an initial snapshot's copied rows read
// in the exported snapshot): the backfill, which reads its rows live.

import (
	"context"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/transform"
)

// TestVersionRecorder_BackfillKeepsANewerRecord: a backfill (`duplex
// resync`) reads its chunk live, and Lookup runs later, when the stream
// reaches the chunk's high watermark; the sink into this database may have
// written the field meanwhile (after the high watermark, so the row is
// not dropped from the chunk). The copy's value then differs from the
// record and is taken for a write never read. Before 755879c its version
// was recorded only over a record not newer than the copy
// (commit_time <= the copy's time); recordUnread replaces the record
// whenever it is the one read, however new: the record then names the
// copy's stale value while the row holds the sink's, and the sink into
// this database waits for the capture to record a local write that never
// happened, on every write of the field, until max_wait dead-letters it.
func TestVersionRecorder_BackfillKeepsANewerRecord(t *testing.T) {
	ctx := context.Background()
	r, conn := newRecorder(t)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t1, t2 := t0.Add(time.Hour), t0.Add(2*time.Hour) // the chunk's read, the ERP's write
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES ('customer', 'k1', 'email', 'crm', $1, $2)`, t0, *pgstate.HashCanonical("old@example.com"))
	// The chunk read k1 (old@example.com) at t1; then the sink applied
	// the ERP's newer write and recorded its version.
	if err := pgstate.RecordWritten(ctx, conn, pgstate.Written{Entity: "customer", Field: "email", Keys: []string{"k1"},
		Sources: []string{"erp"}, At: []time.Time{t2}, Hashes: []*string{pgstate.HashCanonical("new@example.com")}}); err != nil {
		t.Fatal(err)
	}
	evs := []transform.Event{{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: "k1",
		Pos: transform.Position{LSN: 0x5000, CommitTime: t1}, Data: map[string]any{"id": "k1", "email": "old@example.com"}}}
	if err := r.Lookup(ctx, "", evs); err != nil {
		t.Fatal(err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || fv[0].Source != "erp" || !fv[0].CommitTime.Equal(t2) || !fv[0].Holds("new@example.com", nil) {
		t.Errorf("k1's record after the backfill's copy: %+v (holds old@example.com: %v), want the sink's: erp at %s, new@example.com",
			fv, len(fv) == 1 && fv[0].Holds("old@example.com", nil), t2)
	}
}

// TestVersionRecorder_SnapshotReplacesARecordNewerThanTheCopy: the rows of
// an initial snapshot are compared with the versions of that snapshot, so
// a recorded version newer than the copy's time (the slot's creation) that
// the copied value does not match was replaced by a local write never
// read, made between the slot's creation and its consistent point: the
// copy's version is recorded over it, or the sink into this database
// would wait for that write's version until max_wait.
func TestVersionRecorder_SnapshotReplacesARecordNewerThanTheCopy(t *testing.T) {
	ctx := context.Background()
	r, conn := newRecorder(t)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t1, t2 := t0.Add(time.Hour), t0.Add(2*time.Hour) // the copy's time, the ERP's write
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES ('customer', 'k1', 'email', 'erp', $1, $2)`, t2, *pgstate.HashCanonical("erp@example.com"))
	snapshot := exportSnapshot(t, conn)
	evs := []transform.Event{{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: "k1",
		Pos: transform.Position{LSN: 0x5000, CommitTime: t1}, Data: map[string]any{"id": "k1", "email": "local@example.com"}}}
	if err := r.Lookup(ctx, snapshot, evs); err != nil {
		t.Fatal(err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || fv[0].Source != "crm" || !fv[0].CommitTime.Equal(t1) || !fv[0].Holds("local@example.com", nil) {
		t.Errorf("k1's record after the snapshot's copy: %+v, want the copy's: crm at %s, local@example.com", fv, t1)
	}
}
