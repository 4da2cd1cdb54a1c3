package pgstate_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/transform"
	"github.com/jackc/pgx/v5"
)

const sharedEmailMapping = `
version: 1
systems: [crm, erp]
entities:
  - name: customer
    key: id
    fields:
      - {name: id,    type: uuid, owner: crm}
      - {name: email, type: text, owner: both}
    systems:
      crm:
        table: public.accounts
        key_column: id
        columns: {id: {column: id}, email: {column: email}}
      erp:
        table: public.customers
        key_column: crm_id
        columns: {id: {column: crm_id}, email: {column: email}}
`

// TestVersionRecorder_Lookup: a copied row (snapshot, backfill) whose
// shared field still holds the recorded value carries that version; one
// whose value changed by a write the capture never read (before the slot,
// or lost with it) carries the copy's time, and that version is recorded,
// so that the sink into this database does not wait for a record that
// never comes; a field never versioned stays unrecorded.
func TestVersionRecorder_Lookup(t *testing.T) {
	ctx := context.Background()
	m, err := transform.Parse([]byte(sharedEmailMapping))
	if err != nil {
		t.Fatal(err)
	}
	db := newDB(t)
	conn := connect(t, db, "postgres", nil)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t1 := t0.Add(time.Hour)
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES
		('customer', 'k1', 'email', 'crm', '2026-01-02 03:04:05+00', $1),
		('customer', 'k2', 'email', 'erp', '2026-01-02 03:04:05+00', $2)`, *pgstate.HashCanonical("kept@example.com"), *pgstate.HashCanonical("erp@example.com"))
	copied := func(key, email string) transform.Event {
		return transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
			Pos: transform.Position{LSN: 0x5000, CommitTime: t1}, Data: map[string]any{"id": key, "email": email}}
	}
	evs := []transform.Event{copied("k1", "kept@example.com"), copied("k2", "unread@example.com"), copied("k3", "never@example.com")}
	r := pgstate.NewVersionRecorder("crm", cluster.DSN(db), m)
	defer r.Close(ctx)
	if err := r.Lookup(ctx, "", evs); err != nil {
		t.Fatal(err)
	}
	if v, ok := evs[0].Versions["email"]; !ok || v.Source != "crm" || !v.At.Equal(t0) {
		t.Errorf("copy of a value still recorded: versions %+v, want crm at %s", evs[0].Versions, t0)
	}
	for _, ev := range evs[1:] {
		if len(ev.Versions) != 0 {
			t.Errorf("copy of %s: versions %+v, want none (the copy's time stands)", ev.Key, ev.Versions)
		}
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1", "k2", "k3"})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(fv, func(a, b pgstate.FieldVersion) int { return strings.Compare(a.Key, b.Key) })
	if len(fv) != 2 {
		t.Fatalf("field versions %+v, want k1 and k2 only", fv)
	}
	if fv[0].Source != "crm" || !fv[0].CommitTime.Equal(t0) || !fv[0].Holds("kept@example.com", nil) {
		t.Errorf("k1 (value still recorded): %+v, want unchanged", fv[0])
	}
	if fv[1].Source != "crm" || !fv[1].CommitTime.Equal(t1) || !fv[1].Holds("unread@example.com", nil) {
		t.Errorf("k2 (changed by a write never read): %+v, want the copy's version (crm at %s)", fv[1], t1)
	}
}

// TestVersionRecorder_LookupInTheExportedSnapshot: the rows of an initial
// snapshot are compared with the versions recorded when the snapshot was
// taken, not with what the sink into this database recorded while the
// snapshot was being copied (the other flow applies meanwhile; a replay
// after a restore does so with every row). Compared with the live record,
// k1's copied value looked like a local write never read: it went out
// with the copy's time, later than the other system's newer write, and
// overwrote it there, and its record here was replaced by the copy's
// (found by TestOps_RestoreERPFromDumpThenReplay under load: 30 e-mails
// differed, with no conflict logged).
func TestVersionRecorder_LookupInTheExportedSnapshot(t *testing.T) {
	ctx := context.Background()
	r, conn := newRecorder(t)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t2, t1 := t0.Add(time.Hour), t0.Add(2*time.Hour) // the sink's write, the copy's time
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES ('customer', 'k1', 'email', 'crm', $1, $2)`, t0, *pgstate.HashCanonical("old@example.com"))
	// The slot's session exports the snapshot the rows are copied in.
	snapshot := exportSnapshot(t, conn)
	// Then the sink writes newer values of the other system, and records
	// their versions: k1 changed, k2 and k3 versioned for the first time
	// (k3 with the value the copy holds: the sink found it as old as the
	// row's last commit).
	exec(t, conn, `UPDATE duplex.field_versions SET commit_time = $1, value_hash = $2 WHERE key = 'k1'`, t2, *pgstate.HashCanonical("new@example.com"))
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES
		('customer', 'k2', 'email', 'crm', $1, $2), ('customer', 'k3', 'email', 'erp', $1, $3)`,
		t2, *pgstate.HashCanonical("new2@example.com"), *pgstate.HashCanonical("same@example.com"))
	copied := func(key, email string) transform.Event {
		return transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
			Pos: transform.Position{LSN: 0x5000, CommitTime: t1}, Data: map[string]any{"id": key, "email": email}}
	}
	evs := []transform.Event{copied("k1", "old@example.com"), copied("k2", "old2@example.com"), copied("k3", "same@example.com")}
	if err := r.Lookup(ctx, snapshot, evs); err != nil {
		t.Fatal(err)
	}
	want := []transform.FieldVersion{{Source: "crm", At: t0}, {Source: "crm", At: t2.Add(-time.Microsecond)}, {Source: "erp", At: t2}}
	for i, ev := range evs {
		if v, ok := ev.Versions["email"]; !ok || v.Source != want[i].Source || !v.At.Equal(want[i].At) {
			t.Errorf("copy of %s: versions %+v, want %s at %s", ev.Key, ev.Versions, want[i].Source, want[i].At)
		}
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || !fv[0].CommitTime.Equal(t2) || !fv[0].Holds("new@example.com", nil) {
		t.Errorf("k1's record after the copy: %+v, want the sink's (crm at %s, new@example.com)", fv, t2)
	}
	// A snapshot name that is not one is refused before it reaches SQL.
	if err := r.Lookup(ctx, "x'; DROP TABLE duplex.field_versions; --", evs[:1]); err == nil {
		t.Error("Lookup took a snapshot name with a quote")
	}
}

// TestVersionRecorder_KeyedHash: with a FieldHasher the recorded hash is
// an HMAC-SHA256 under the key (no md5 of the address, no address), both
// sides recognise it, another key's hash is read as legacy and never
// matched, and a row recorded by an older duplex (unkeyed md5) still
// matches the same value, so an upgrade keeps its versions.
func TestVersionRecorder_KeyedHash(t *testing.T) {
	ctx := context.Background()
	m, err := transform.Parse([]byte(sharedEmailMapping))
	if err != nil {
		t.Fatal(err)
	}
	db := newDB(t)
	conn := connect(t, db, "postgres", nil)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	h, err := pgstate.NewFieldHasher([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := pgstate.NewFieldHasher([]byte("fedcba9876543210fedcba9876543210"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES ('customer', 'old', 'email', 'erp', '2026-01-02 03:04:05+00', $1)`,
		*pgstate.HashCanonical("old@example.com"))
	r := pgstate.NewVersionRecorder("crm", cluster.DSN(db), m)
	r.Hasher = h
	defer r.Close(ctx)
	ev := transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: "new",
		Pos: transform.Position{LSN: 0x5000, CommitTime: t0}, Data: map[string]any{"id": "new", "email": "new@example.com"}}
	if err := r.Record(ctx, []transform.Event{ev}); err != nil {
		t.Fatal(err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"new", "old"})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(fv, func(a, b pgstate.FieldVersion) int { return strings.Compare(a.Key, b.Key) })
	if len(fv) != 2 || fv[0].ValueHash == nil {
		t.Fatalf("field versions %+v, want new and old", fv)
	}
	rec, old := fv[0], fv[1]
	md5 := strings.TrimPrefix(*pgstate.HashCanonical("new@example.com"), "canonical:")
	if !strings.HasPrefix(*rec.ValueHash, "hmac:"+h.KeyID()+":") || strings.Contains(*rec.ValueHash, md5) {
		t.Errorf("recorded hash %q: want hmac:%s:<HMAC-SHA256>, not the md5 %s", *rec.ValueHash, h.KeyID(), md5)
	}
	if !h.Holds(rec, "new@example.com", nil) || h.Holds(rec, "other@example.com", nil) || h.Legacy(rec) {
		t.Errorf("the recording key does not match its own hash %q", *rec.ValueHash)
	}
	if other.Holds(rec, "new@example.com", nil) || !other.Legacy(rec) {
		t.Errorf("another key matches hash %q, or does not read it as legacy", *rec.ValueHash)
	}
	if !h.Holds(old, "old@example.com", nil) || h.Holds(old, "x@example.com", nil) || !h.Legacy(old) {
		t.Errorf("a version an older duplex recorded (md5 %q) is not read as before", *old.ValueHash)
	}
	// A copy of the old row still carries the old version.
	cp := transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: "old",
		Pos: transform.Position{LSN: 0x6000, CommitTime: t0.Add(time.Hour)}, Data: map[string]any{"id": "old", "email": "old@example.com"}}
	evs := []transform.Event{cp}
	if err := r.Lookup(ctx, "", evs); err != nil {
		t.Fatal(err)
	}
	if v, ok := evs[0].Versions["email"]; !ok || v.Source != "erp" || !v.At.Equal(t0) {
		t.Errorf("copy of a value an older duplex recorded: versions %+v, want erp at %s", evs[0].Versions, t0)
	}
}

// newRecorder is a recorder of crm's shared e-mail (sharedEmailMapping)
// on a new database, closed when the test ends, and a connection to it.
func newRecorder(t *testing.T) (*pgstate.VersionRecorder, *pgx.Conn) {
	t.Helper()
	m, err := transform.Parse([]byte(sharedEmailMapping))
	if err != nil {
		t.Fatal(err)
	}
	db := newDB(t)
	conn := connect(t, db, "postgres", nil)
	r := pgstate.NewVersionRecorder("crm", cluster.DSN(db), m)
	t.Cleanup(func() { r.Close(context.Background()) })
	return r, conn
}

// exportSnapshot is what creating a slot with EXPORT_SNAPSHOT (or the
// copy's own transaction) does: a snapshot of conn's database, exported by
// a transaction that stays open until the test ends.
func exportSnapshot(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	ctx := context.Background()
	exporter := connect(t, conn.Config().Database, "postgres", nil)
	tx, err := exporter.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	var snapshot string
	if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&snapshot); err != nil {
		t.Fatal(err)
	}
	return snapshot
}

// TestVersionRecorder_SameTimeLaterWins: two local writes of one shared
// field with the same commit time (two statements of one transaction: an
// INSERT and an UPDATE, or two UPDATEs) recorded in one flush record the
// later one's value, the one the row holds. Recording the earlier one
// made the sink into this database take the row's value for a local
// write not recorded yet and wait for it up to max_wait, then dead-letter
// the other system's write.
func TestVersionRecorder_SameTimeLaterWins(t *testing.T) {
	ctx := context.Background()
	r, conn := newRecorder(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	write := func(key, email string, lsn uint64, at time.Time) transform.Event {
		return transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
			Pos: transform.Position{LSN: capture.LSN(lsn), CommitTime: at}, Data: map[string]any{"id": key, "email": email}}
	}
	// k1: one transaction, two statements. k2: two transactions, added
	// separately (the capture adds a chunk at a time), flushed together.
	r.Add([]transform.Event{write("k1", "first@example.com", 0x5000, t0), write("k1", "second@example.com", 0x5000, t0)})
	r.Add([]transform.Event{write("k2", "first@example.com", 0x5000, t0)})
	r.Add([]transform.Event{write("k2", "second@example.com", 0x6000, t0)})
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1", "k2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 2 {
		t.Fatalf("field versions %+v, want k1 and k2", fv)
	}
	for _, v := range fv {
		if !v.Holds("second@example.com", nil) {
			t.Errorf("%s: the recorded hash is not the later write's (second@example.com): %+v", v.Key, v)
		}
	}
}

// TestVersionRecorder_FailedFlushKept: versions a flush could not write
// stay pending for the next flush. The capture's tracker confirms the
// slot after a successful flush; when a flush made on the capture's path
// (a look-up of copied rows, or many pending) failed and dropped them, the
// tracker's next flush had nothing to write and the slot could be
// confirmed past local writes whose versions were never recorded.
func TestVersionRecorder_FailedFlushKept(t *testing.T) {
	ctx := context.Background()
	r, conn := newRecorder(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := func(key string) transform.Event {
		return transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
			Pos: transform.Position{LSN: 0x5000, CommitTime: t0}, Data: map[string]any{"id": key, "email": key + "@example.com"}}
	}
	// The recorder's session exists (Ensure ran on it).
	if err := r.Record(ctx, []transform.Event{ev("k0")}); err != nil {
		t.Fatal(err)
	}
	r.Add([]transform.Event{ev("k1")})
	// The recorder's session is cut: the flush fails.
	exec(t, conn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err := r.Flush(ctx); err == nil {
		t.Fatal("flush on a terminated session: no error")
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || !fv[0].Holds("k1@example.com", nil) {
		t.Fatalf("after a failed flush and a successful one: versions %+v, want k1's", fv)
	}
}
