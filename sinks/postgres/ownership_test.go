package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// newCustomTarget makes a database from ddl and a sink of flow to-erp
// (source crm) into it under mapping.
func newCustomTarget(t *testing.T, ddl, mapping, slot string) (*postgres.Sink, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	db := "erp_" + uuid.NewString()[:8]
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropOrigin(t, "duplex_"+db) })
	if err := cluster.Exec(ctx, db, ddl); err != nil {
		t.Fatal(err)
	}
	m, err := transform.Parse([]byte(mapping))
	if err != nil {
		t.Fatal(err)
	}
	s, err := postgres.New(postgres.Config{Flow: "to-erp", Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m, Slot: slot})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	conn, err := pgx.Connect(ctx, cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return s, conn
}

const noteMapping = `
version: 1
systems: [crm, erp]
entities:
  - name: note
    key: id
    sequence: follow
    enforce: owner
    fields:
      - {name: id,     type: integer, owner: crm}
      - {name: note,   type: text,    owner: crm}
      - {name: amount, type: decimal, owner: crm}
      - {name: stamp,  type: text,    owner: erp}
    systems:
      crm:
        table: public.t
        key_column: id
        columns: {id: {column: id}, note: {column: note}, amount: {column: amount}, stamp: {column: stamp}}
      erp:
        table: public.t
        key_column: id
        columns: {id: {column: id}, note: {column: note}, amount: {column: amount}, stamp: {column: stamp}}
`

func noteEv(id, note string) transform.Event {
	return transform.Event{Entity: "note", Op: transform.OpUpsert, Key: id, Data: map[string]any{"id": id, "note": note, "amount": "1.00"}}
}

// sequence: follow (issue 11, case 10): the erp's own sequence is moved
// past the keys duplex writes, never back.
func TestSink_SequenceFollow(t *testing.T) {
	s, conn := newCustomTarget(t, `CREATE TABLE t (id serial PRIMARY KEY, note text, amount numeric(12,2), stamp text)`, noteMapping, "")
	mustApply(t, s, tx(0x100, noteEv("41", "a"), noteEv("7", "b")))
	var next int64
	if err := conn.QueryRow(context.Background(), `SELECT nextval('t_id_seq')`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	if next != 42 {
		t.Errorf("nextval after keys 41 and 7 were written = %d, want 42", next)
	}
	exec(t, conn, `SELECT setval('t_id_seq', 100)`)
	mustApply(t, s, tx(0x200, noteEv("50", "c")))
	if err := conn.QueryRow(context.Background(), `SELECT nextval('t_id_seq')`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	if next != 101 {
		t.Errorf("nextval after key 50 with the sequence at 100 = %d, want 101 (never moved back)", next)
	}
}

// enforce: owner (issue 11, case 11a), in the sink of the owner: an event
// reporting that erp edited a field crm owns writes nothing, and records a
// re-read of crm's row for crm's capture, in the same transaction.
func TestSink_EnforceOwnerRequestsAReRead(t *testing.T) {
	m := strings.ReplaceAll(noteMapping, "stamp,  type: text,    owner: erp", "stamp,  type: text,    owner: crm")
	// The sink writes into the owner here: flow from erp into crm.
	s, conn := newCustomTarget(t, `CREATE TABLE t (id int PRIMARY KEY, note text, amount numeric(12,2), stamp text)`,
		strings.ReplaceAll(m, "owner: crm", "owner: erp"), "duplex_erp_slot")
	exec(t, conn, `INSERT INTO t VALUES (5, 'owner''s', 3.00, 's')`)
	ev := transform.Event{Entity: "note", Op: transform.OpUpsert, Key: "5", Data: map[string]any{"id": "5"}, Violated: []string{"amount"}}
	res := mustApply(t, s, tx(0x300, ev))
	if res.Applied != 1 {
		t.Errorf("result %+v", res)
	}
	var slot, tbl, filter string
	if err := conn.QueryRow(context.Background(), `SELECT slot, tbl, filter FROM duplex.backfills`).Scan(&slot, &tbl, &filter); err != nil {
		t.Fatalf("no re-read recorded: %v", err)
	}
	if slot != "duplex_erp_slot" || tbl != "public.t" || filter != `"id" IN ('5')` {
		t.Errorf("re-read = %s %s %q", slot, tbl, filter)
	}
	var amount string
	if err := conn.QueryRow(context.Background(), `SELECT amount::text FROM t WHERE id = 5`).Scan(&amount); err != nil || amount != "3.00" {
		t.Errorf("owner's row: amount %s, %v", amount, err)
	}
}

// Triggers on the target (issue 11, case 11b): duplex applies with
// session_replication_role = replica, so an ordinary BEFORE trigger
// stamping a column and an AFTER trigger writing an audit table do not
// fire on replicated rows; an ENABLE ALWAYS trigger does (its function
// qualifies the table it writes: duplex applies with a pinned search_path,
// pinSearchPath).
func TestSink_OrdinaryTriggersDoNotFire(t *testing.T) {
	s, conn := newCustomTarget(t, `CREATE TABLE t (id int PRIMARY KEY, note text, amount numeric(12,2), stamp text);
CREATE TABLE audit (id int, op text);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := 'stamped'; RETURN NEW; END $$;
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.audit VALUES (NEW.id, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER t_stamp BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TRIGGER t_audit AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION audit();`, noteMapping, "")
	mustApply(t, s, tx(0x100, noteEv("1", "from crm")))
	var note string
	var audits int
	if err := conn.QueryRow(context.Background(), `SELECT note, (SELECT count(*) FROM audit) FROM t WHERE id = 1`).Scan(&note, &audits); err != nil {
		t.Fatal(err)
	}
	if note != "from crm" || audits != 0 {
		t.Errorf("note %q, %d audit rows; want the replicated value and no audit row", note, audits)
	}
	exec(t, conn, `ALTER TABLE t ENABLE ALWAYS TRIGGER t_audit`)
	s2 := sinkForDSN(t, s, conn)
	mustApply(t, s2, tx(0x200, noteEv("1", "again")))
	if err := conn.QueryRow(context.Background(), `SELECT note, (SELECT count(*) FROM audit) FROM t WHERE id = 1`).Scan(&note, &audits); err != nil {
		t.Fatal(err)
	}
	if note != "again" || audits != 1 {
		t.Errorf("with ENABLE ALWAYS on the audit trigger: note %q, %d audit rows; want again and 1", note, audits)
	}
}

// sinkForDSN closes s and returns a new sink on the same database, so that
// it reads the catalog anew.
func sinkForDSN(t *testing.T, s *postgres.Sink, conn *pgx.Conn) *postgres.Sink {
	t.Helper()
	s.Close(context.Background())
	db := conn.Config().Database
	m, err := transform.Parse([]byte(noteMapping))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := postgres.New(postgres.Config{Flow: "to-erp", Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close(context.Background()) })
	return s2
}

// Foreign keys under session_replication_role = replica are checked by
// the sink: a delete of an order an erp invoice still references is a
// permanent error naming the constraint; an ON DELETE CASCADE child the
// mapping does not carry goes with its parent.
func TestSink_ForeignKeysCheckedByDuplex(t *testing.T) {
	s, conn, _ := newTarget(t)
	ctx := context.Background()
	acc, ord, ord2 := uuid.New(), uuid.New(), uuid.New()
	mustApply(t, s, tx(0x100, customer(acc, "A"), order(ord, acc), order(ord2, acc)))
	exec(t, conn, `INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
		SELECT order_no, customer_no, 'EUR', 1, 'open', now(), current_date FROM sales_orders WHERE crm_order_id = $1`, ord)
	exec(t, conn, `INSERT INTO sales_order_lines (crm_line_id, order_no, sku, quantity, unit_price)
		SELECT gen_random_uuid(), order_no, 'ERP-ONLY', 1, 1 FROM sales_orders WHERE crm_order_id = $1`, ord2)
	_, err := s.Apply(ctx, []*transform.Tx{tx(0x200, deleteOf("order", ord))})
	if ae := applyError(t, err, pipeline.Permanent); ae != nil {
		if ae.Tx != 0 || ae.Event != 0 || !strings.Contains(ae.Err.Error(), "invoices_order_no_fkey") || !strings.Contains(ae.Err.Error(), "still referenced from table public.invoices") {
			t.Errorf("error %+v: want event 0 of tx 0 and the constraint named", ae)
		}
	}
	mustApply(t, s, tx(0x300, deleteOf("order", ord2)))
	var lines int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM sales_order_lines WHERE sku = 'ERP-ONLY'`).Scan(&lines); err != nil {
		t.Fatal(err)
	}
	if lines != 0 {
		t.Errorf("%d ERP-only lines of the deleted order left; ON DELETE CASCADE should remove them", lines)
	}
}
