package postgres_test

// Review of 755879c: the versions an initial snapshot's copied rows carry
// (pgstate.VersionRecorder.Lookup), against the rules the sink applies to
// them (resolveShared), for a shared field neither side ever recorded.

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

const sharedEmail = `
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

// system is one side of a two-way pair: its database, the sink into it,
// and the recorder its capture uses.
type system struct {
	name    string
	mapping *transform.Mapping
	conn    *pgx.Conn
	sink    *postgres.Sink
	rec     *pgstate.VersionRecorder
}

func newSystem(t *testing.T, m *transform.Mapping, name, other, ddl string) *system {
	t.Helper()
	ctx := context.Background()
	db := name + "_" + uuid.NewString()[:8]
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropOrigin(t, "duplex_"+db) })
	if err := cluster.Exec(ctx, db, ddl); err != nil {
		t.Fatal(err)
	}
	s, err := postgres.New(postgres.Config{Flow: "to-" + name, Source: other, System: name, DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	conn, err := pgx.Connect(ctx, cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	rec := pgstate.NewVersionRecorder(name, cluster.DSN(db), m)
	t.Cleanup(func() { rec.Close(context.Background()) })
	return &system{name: name, mapping: m, conn: conn, sink: s, rec: rec}
}

// exportSnapshot is what creating the capture's slot does: the server's
// clock just before (the copy's time), and a snapshot exported by a
// transaction that stays open until the test ends.
func (s *system) exportSnapshot(t *testing.T) (time.Time, string) {
	t.Helper()
	ctx := context.Background()
	var at time.Time
	if err := s.conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&at); err != nil {
		t.Fatal(err)
	}
	exporter, err := pgx.Connect(ctx, s.conn.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exporter.Close(context.Background()) })
	tx, err := exporter.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	var name string
	if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	return at.UTC(), name
}

// copyOf is the copy of key that the system's initial snapshot hands on:
// the row read in the exported snapshot with the commit time of its last
// write (as capture/postgres reads a table of shared fields), normalized,
// with the versions Lookup gives it.
func (s *system) copyOf(t *testing.T, snapshot string, at time.Time, key, email string) *transform.Tx {
	t.Helper()
	ctx := context.Background()
	const lsn = capture.LSN(0x5000)
	table, col := "accounts", "id"
	if s.name == "erp" {
		table, col = "customers", "crm_id"
	}
	tx, err := s.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		t.Fatal(err)
	}
	var held string
	var committed time.Time
	if err := tx.QueryRow(ctx, `SELECT email, pg_xact_commit_timestamp(xmin) FROM `+table+` WHERE `+col+` = $1`, key).Scan(&held, &committed); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	if held != email {
		t.Fatalf("the %s's snapshot holds %s, the test copies %s", s.name, held, email)
	}
	info := &capture.TxInfo{System: s.name, CommitLSN: lsn, EndLSN: lsn, CommitTime: at, Snapshot: true, SnapshotName: snapshot}
	committed = committed.UTC()
	ch := &capture.Change{Schema: "public", Table: table, Op: capture.Insert, New: capture.Row{col: key, "email": email}, RowCommitTime: &committed}
	evs, err := s.mapping.Normalize(s.name, info, 0, ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.rec.Lookup(ctx, snapshot, evs); err != nil {
		t.Fatal(err)
	}
	return &transform.Tx{Version: 1, Source: s.name, CommitLSN: lsn, EndLSN: lsn, CommitTime: at, Last: true, Snapshot: true, Events: evs}
}

func (s *system) email(t *testing.T, table, keyCol, key string) string {
	t.Helper()
	var e string
	if err := s.conn.QueryRow(context.Background(), `SELECT email FROM `+table+` WHERE `+keyCol+` = $1`, key).Scan(&e); err != nil {
		t.Fatal(err)
	}
	return e
}

func newPair(t *testing.T, key, crmEmail, erpEmail string) (crm, erp *system) {
	t.Helper()
	m, err := transform.Parse([]byte(sharedEmail))
	if err != nil {
		t.Fatal(err)
	}
	crm = newSystem(t, m, "crm", "erp", `CREATE TABLE accounts (id uuid PRIMARY KEY, email text);
		ALTER TABLE accounts REPLICA IDENTITY FULL;
		INSERT INTO accounts VALUES ('`+key+`', '`+crmEmail+`')`)
	erp = newSystem(t, m, "erp", "crm", `CREATE TABLE customers (crm_id uuid PRIMARY KEY, email text);
		ALTER TABLE customers REPLICA IDENTITY FULL;
		INSERT INTO customers VALUES ('`+key+`', '`+erpEmail+`')`)
	return crm, erp
}

// TestSnapshot_NeverVersionedFieldCopiedBothWays: both systems hold the
// customer before duplex starts, with different e-mails that neither
// recorded; each capture's initial snapshot copies its row. A copy goes
// out with its snapshot's time, and the sink takes the value it would
// overwrite as old as its row's last commit (resolveShared): both copies
// win, and the two systems end with each other's e-mail, silently (no
// conflict). When the ERP's copy is applied in the CRM before the CRM's
// chunk is looked up, 755879c's rule gives the CRM's copy a version just
// older than the ERP's copy's: in the ERP, which recorded nothing, that
// is still newer than the row's last commit, and the values swap all the
// same. Whichever value wins, the two must end equal.
func TestSnapshot_NeverVersionedFieldCopiedBothWays(t *testing.T) {
	for _, tc := range []struct {
		name        string
		erpCopyLate bool // the ERP's copy applied in the CRM before the CRM's look-up
	}{
		{"each chunk looked up before the other's copy is applied", false},
		{"the ERP's copy applied in the CRM before the CRM's chunk is looked up", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := uuid.NewString()
			crm, erp := newPair(t, key, "crm@example.com", "erp@example.com")
			crmAt, crmSnap := crm.exportSnapshot(t)
			erpAt, erpSnap := erp.exportSnapshot(t)
			toCRM := erp.copyOf(t, erpSnap, erpAt, key, "erp@example.com")
			if tc.erpCopyLate {
				mustApply(t, crm.sink, toCRM)
			}
			toERP := crm.copyOf(t, crmSnap, crmAt, key, "crm@example.com")
			mustApply(t, erp.sink, toERP)
			if !tc.erpCopyLate {
				mustApply(t, crm.sink, toCRM)
			}
			c, e := crm.email(t, "accounts", "id", key), erp.email(t, "customers", "crm_id", key)
			if c != e {
				t.Errorf("after both initial snapshots: CRM holds %s, ERP holds %s (the CRM's copy carried %+v)", c, e, toERP.Events[0].Versions)
			}
		})
	}
}

// TestSnapshot_OtherFlowAppliesAfterTheChunksLookup: the CRM's initial
// snapshot copies a customer whose e-mail was never versioned; the ERP
// wrote the customer's e-mail after that value was written, just before
// the CRM's slot was created (its capture recorded the write), and flow
// to-crm applies it after the CRM's snapshot read the row. 755879c gives
// the copy a version "just older than the write that replaced it" only
// when that write was recorded before the chunk's Lookup; applied after
// it, the copy goes out with the copy's time, newer than the ERP's
// write: the ERP takes the CRM's older value while the CRM keeps the
// ERP's (it is newer than the row's last commit), silently.
func TestSnapshot_OtherFlowAppliesAfterTheChunksLookup(t *testing.T) {
	for _, tc := range []struct {
		name         string
		beforeLookup bool
	}{
		{"before the chunk's look-up", true},
		{"after the chunk's look-up", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			key := uuid.NewString()
			crm, erp := newPair(t, key, "old@example.com", "new@example.com")
			// The ERP's write, as its capture publishes and records it.
			var at time.Time
			if err := erp.conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM customers`).Scan(&at); err != nil {
				t.Fatal(err)
			}
			write := transform.Event{Version: 1, Source: "erp", Entity: "customer", Op: transform.OpUpsert, Key: key,
				ID: transform.EventID("erp", 0x100, 0), Pos: transform.Position{LSN: 0x100, CommitTime: at.UTC()},
				Data: map[string]any{"id": key, "email": "new@example.com"}}
			if err := erp.rec.Record(ctx, []transform.Event{write}); err != nil {
				t.Fatal(err)
			}
			fromERP := &transform.Tx{Version: 1, Source: "erp", CommitLSN: 0x100, EndLSN: 0x101, CommitTime: at.UTC(), Xid: 7, Last: true, Events: []transform.Event{write}}
			// The CRM's slot is created (after the ERP's write); the
			// snapshot reads the CRM's row.
			crmAt, crmSnap := crm.exportSnapshot(t)
			if tc.beforeLookup {
				mustApply(t, crm.sink, fromERP)
			}
			copied := crm.copyOf(t, crmSnap, crmAt, key, "old@example.com")
			if !tc.beforeLookup {
				mustApply(t, crm.sink, fromERP)
			}
			mustApply(t, erp.sink, copied)
			c, e := crm.email(t, "accounts", "id", key), erp.email(t, "customers", "crm_id", key)
			if c != "new@example.com" || e != "new@example.com" {
				t.Errorf("CRM holds %s, ERP holds %s; want the ERP's newer new@example.com in both (the copy carried %+v)", c, e, copied.Events[0].Versions)
			}
		})
	}
}

// TestBackfill_SinkWriteAfterTheChunksReadKeepsApplying: a backfill
// (`duplex resync`) of the CRM reads a customer live; flow to-crm then
// applies the ERP's newer e-mail (after the chunk's high watermark, so
// the row stays in the chunk); the chunk's versions are looked up when the
// stream reaches the watermark. The copy's value then differs from the
// record and is taken for a write never read. On 755879c its version
// replaced the sink's newer record, which the row still matches: the next
// ERP write of the field waited for the CRM's capture to record a local
// write that never happened (dead-lettered after max_wait).
func TestBackfill_SinkWriteAfterTheChunksReadKeepsApplying(t *testing.T) {
	ctx := context.Background()
	key := uuid.NewString()
	crm, _ := newPair(t, key, "old@example.com", "old@example.com")
	var t0 time.Time
	if err := crm.conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM accounts`).Scan(&t0); err != nil {
		t.Fatal(err)
	}
	local := transform.Event{Version: 1, Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
		Pos: transform.Position{LSN: 0x100, CommitTime: t0.UTC()}, Data: map[string]any{"id": key, "email": "old@example.com"}}
	if err := crm.rec.Record(ctx, []transform.Event{local}); err != nil {
		t.Fatal(err)
	}
	// The chunk reads the row (clock_timestamp() after the low watermark).
	var read time.Time
	if err := crm.conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&read); err != nil {
		t.Fatal(err)
	}
	read = read.UTC()
	fromERP := func(lsn capture.LSN, at time.Time, email string) *transform.Tx {
		ev := transform.Event{Version: 1, Source: "erp", Entity: "customer", Op: transform.OpUpsert, Key: key,
			ID: transform.EventID("erp", lsn, 0), Pos: transform.Position{LSN: lsn, CommitTime: at},
			Data: map[string]any{"id": key, "email": email}}
		return &transform.Tx{Version: 1, Source: "erp", CommitLSN: lsn, EndLSN: lsn + 1, CommitTime: at, Xid: uint32(lsn), Last: true, Events: []transform.Event{ev}}
	}
	mustApply(t, crm.sink, fromERP(0x200, read.Add(time.Millisecond), "new@example.com"))
	// The stream reaches the chunk's high watermark: its versions.
	evs := []transform.Event{{Version: 1, Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: key,
		Pos: transform.Position{LSN: 0x150, CommitTime: read}, Data: map[string]any{"id": key, "email": "old@example.com"}}}
	if err := crm.rec.Lookup(ctx, "", evs); err != nil {
		t.Fatal(err)
	}
	if _, err := crm.sink.Apply(ctx, []*transform.Tx{fromERP(0x300, read.Add(time.Second), "newer@example.com")}); err != nil {
		t.Fatalf("the ERP's next write of the e-mail: %v", err)
	}
	if got := crm.email(t, "accounts", "id", key); got != "newer@example.com" {
		t.Errorf("CRM holds %s, want newer@example.com", got)
	}
}
