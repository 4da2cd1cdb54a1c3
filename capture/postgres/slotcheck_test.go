package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

func TestCheckSlot(t *testing.T) {
	rec := pgstate.SlotRecord{Slot: "s", SystemIdentifier: "7001", CreatedLSN: 0x1000, ConfirmedLSN: 0x5000}
	tests := []struct {
		name       string
		system     string
		st         slotState
		wantReason string // "" when the slot is accepted
	}{
		{name: "at the record", system: "7001", st: slotState{exists: true, confirmed: 0x5000, walStatus: "reserved"}},
		{name: "behind the record: a crash between recording and reporting", system: "7001", st: slotState{exists: true, confirmed: 0x4000, walStatus: "reserved"}},
		{name: "behind the record, WAL beyond max_wal_size", system: "7001", st: slotState{exists: true, confirmed: 0x1000, walStatus: "extended"}},
		{name: "unreserved is a warning, not a loss", system: "7001", st: slotState{exists: true, confirmed: 0x5000, walStatus: "unreserved"}},
		{name: "ahead of the record: replaced", system: "7001", st: slotState{exists: true, confirmed: 0x5001, walStatus: "reserved"}, wantReason: "replaced"},
		{name: "missing", system: "7001", st: slotState{}, wantReason: "dropped"},
		{name: "wal lost", system: "7001", st: slotState{exists: true, confirmed: 0x5000, walStatus: "lost"}, wantReason: "wal lost"},
		{name: "another cluster", system: "7002", st: slotState{exists: true, confirmed: 0x10, walStatus: "reserved"}, wantReason: "other cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkSlot(rec, tt.system, tt.st)
			switch {
			case tt.wantReason == "" && got != nil:
				t.Fatalf("refused: %v", got)
			case tt.wantReason != "" && got == nil:
				t.Fatalf("accepted, want %s", tt.wantReason)
			case got != nil && got.Reason != tt.wantReason:
				t.Fatalf("reason %q, want %q", got.Reason, tt.wantReason)
			}
		})
	}
}

// confirming hands every transaction back to its source as durable.
type confirming struct {
	src *Source
	n   int
}

func (c *confirming) Chunk(_ context.Context, ch *capture.Chunk) error {
	if ch.Last {
		c.src.Confirm(ch.Tx.EndLSN)
	}
	c.n++
	return nil
}

func (c *confirming) Drain(context.Context) error { return nil }

// slotSetup is a database with table items, a Source on slot "sc" that
// confirms what it reads, and a connection.
type slotSetup struct {
	cl   *harness.Cluster
	src  *Source
	conn *pgx.Conn
}

func newSlotSetup(t *testing.T, settings map[string]string) *slotSetup {
	t.Helper()
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{Settings: settings})
	if err := cl.CreateDatabase(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "src", `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{System: "crm", DSN: cl.DSN("src"), Slot: "sc", Publication: "sc", Tables: []string{"public.items"},
		Keys: map[string][]string{"public.items": {"id"}}, Snapshot: SnapshotNever, Flows: []string{"to-erp"}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &slotSetup{cl: cl, src: src, conn: conn}
}

func (s *slotSetup) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (s *slotSetup) lsn(t *testing.T, sql string) capture.LSN {
	t.Helper()
	var text string
	if err := s.conn.QueryRow(context.Background(), sql).Scan(&text); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	l, err := capture.ParseLSN(text)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// streamUntil streams (confirming everything) until the slot confirmed
// the WAL written so far, then stops the session.
func (s *slotSetup) streamUntilConfirmed(t *testing.T) {
	t.Helper()
	target := s.lsn(t, `SELECT pg_current_wal_lsn()::text`)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.src.Stream(ctx, &confirming{src: s.src}) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c := s.lsn(t, `SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = 'sc'`); c >= target {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("the slot did not confirm %s within 30s (session: %v)", target, <-done)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stream: %v", err)
	}
}

func (s *slotSetup) record(t *testing.T) pgstate.SlotRecord {
	t.Helper()
	rec, ok, err := pgstate.ReadSlotRecord(context.Background(), s.conn, "sc")
	if err != nil || !ok {
		t.Fatalf("slot record: ok %v, %v", ok, err)
	}
	return rec
}

// TestSource_SlotReplacedWhileStoppedIsRefused: a source that streamed and
// stopped starts again without complaint (its slot is never ahead of what
// it recorded); once the slot is dropped and created again with writes in
// between, it refuses to start, naming slot and positions, until
// ResetSlot records the new slot; a dropped slot is refused the same way.
func TestSource_SlotReplacedWhileStoppedIsRefused(t *testing.T) {
	s := newSlotSetup(t, nil)
	ctx := context.Background()
	if err := s.src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	created := s.record(t)
	for i := range 3 {
		s.exec(t, `INSERT INTO items SELECT g, 'v' FROM generate_series($1::int, $1::int + 99) g`, i*100)
		s.streamUntilConfirmed(t)
		rec := s.record(t)
		slot := s.lsn(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sc'`)
		if slot > rec.ConfirmedLSN || rec.ConfirmedLSN <= created.ConfirmedLSN {
			t.Fatalf("session %d: slot at %s, recorded %s (created at %s): the record must be at or ahead of the slot and move", i, slot, rec.ConfirmedLSN, created.CreatedLSN)
		}
		// A new Source is a restarted duplex.
		again, err := New(s.src.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := again.Ensure(ctx); err != nil {
			t.Fatalf("restart after session %d refused: %v", i, err)
		}
	}
	before := s.record(t)
	s.exec(t, `SELECT pg_drop_replication_slot('sc')`)
	s.exec(t, `INSERT INTO items VALUES (1000, 'lost')`)
	s.exec(t, `SELECT pg_create_logical_replication_slot('sc', 'pgoutput')`)
	found := s.lsn(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sc'`)
	err := s.src.Ensure(ctx)
	var lost *SlotLostError
	if !errors.As(err, &lost) || lost.Reason != "replaced" || lost.Expected != before.ConfirmedLSN || lost.Found != found {
		t.Fatalf("Ensure of a replaced slot: %v, want replaced, expected %s, found %s", err, before.ConfirmedLSN, found)
	}
	for _, want := range []string{"capture crm", "slot sc", before.ConfirmedLSN.String(), found.String(), "duplex resync --flow to-erp"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if err := s.src.Stream(ctx, &confirming{src: s.src}); !errors.As(err, &lost) || !lost.Permanent() {
		t.Fatalf("Stream of a replaced slot: %v, want a permanent SlotLostError", err)
	}
	r, err := ResetSlot(ctx, s.conn, "sc")
	if err != nil || r.Problem == nil || r.Problem.Reason != "replaced" || r.Created || r.Position != found {
		t.Fatalf("ResetSlot: %+v, %v", r, err)
	}
	if err := s.src.Ensure(ctx); err != nil {
		t.Fatalf("Ensure after ResetSlot: %v", err)
	}

	s.exec(t, `SELECT pg_drop_replication_slot('sc')`)
	err = s.src.Ensure(ctx)
	if !errors.As(err, &lost) || lost.Reason != "dropped" || !strings.Contains(err.Error(), "slot sc no longer exists") {
		t.Fatalf("Ensure of a dropped slot: %v", err)
	}
	var n int64
	if err := s.conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sc'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused Ensure created the slot: %d, %v", n, err)
	}
	if r, err = ResetSlot(ctx, s.conn, "sc"); err != nil || !r.Created || r.Problem == nil || r.Problem.Reason != "dropped" {
		t.Fatalf("ResetSlot of a dropped slot: %+v, %v", r, err)
	}
	if err := s.src.Ensure(ctx); err != nil {
		t.Fatalf("Ensure after ResetSlot: %v", err)
	}
}

// TestSource_RecordingStopsWhenIdle: once nothing but duplex's own
// bookkeeping is written, the capture stops recording (its own write would
// otherwise make the next one).
func TestSource_RecordingStopsWhenIdle(t *testing.T) {
	s := newSlotSetup(t, nil)
	if err := s.src.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.src.Stream(ctx, &confirming{src: s.src}) }()
	defer func() { cancel(); <-done }()
	s.exec(t, `INSERT INTO items SELECT g, 'v' FROM generate_series(1, 100) g`)
	target := s.lsn(t, `SELECT pg_current_wal_lsn()::text`)
	deadline := time.Now().Add(30 * time.Second)
	for s.record(t).ConfirmedLSN < target {
		if time.Now().After(deadline) {
			t.Fatalf("the record did not reach %s", target)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Allow the idle recording (WAL by the server itself) to settle.
	time.Sleep(idleRecordEvery + 2*time.Second)
	at := s.record(t).ConfirmedAt
	time.Sleep(idleRecordEvery + 2*time.Second)
	if now := s.record(t); !now.ConfirmedAt.Equal(at) {
		t.Errorf("recorded again on an idle database: %s, then %s (%s)", at, now.ConfirmedAt, now.ConfirmedLSN)
	}
}

// TestSource_SlotWithWALLostIsRefused: a slot invalidated because it
// retained more than max_slot_wal_keep_size (wal_status lost) is refused;
// ResetSlot drops it and creates it again.
func TestSource_SlotWithWALLostIsRefused(t *testing.T) {
	s := newSlotSetup(t, map[string]string{"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"})
	ctx := context.Background()
	if err := s.src.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		s.exec(t, `INSERT INTO items VALUES ($1, 'v')`, i)
		s.exec(t, `SELECT pg_switch_wal()`)
	}
	s.exec(t, `CHECKPOINT`)
	var status string
	if err := s.conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'sc'`).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "lost" {
		t.Fatalf("wal_status %q after 4 segments with max_slot_wal_keep_size 1MB; the test cannot provoke the loss", status)
	}
	err := s.src.Ensure(ctx)
	var lost *SlotLostError
	if !errors.As(err, &lost) || lost.Reason != "wal lost" || !strings.Contains(err.Error(), "wal_status lost") {
		t.Fatalf("Ensure of an invalidated slot: %v", err)
	}
	r, err := ResetSlot(ctx, s.conn, "sc")
	if err != nil || !r.Dropped || !r.Created {
		t.Fatalf("ResetSlot of an invalidated slot: %+v, %v", r, err)
	}
	if err := s.src.Ensure(ctx); err != nil {
		t.Fatalf("Ensure after ResetSlot: %v", err)
	}
}
