package postgres_test

// Real schemas (issue 11), values: target tables with NOT NULL columns the mapping
// does not carry, defaults from the mapping, identity columns, unchanged
// TOASTed values for rows the target lacks.

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// itemMapping maps items(id int, note text, body text), all owned by the
// CRM; erpExtra is added under the ERP table (a default: block).
func itemMapping(t testing.TB, erpExtra string) *transform.Mapping {
	t.Helper()
	doc := `
version: 1
systems: [crm, erp]
entities:
  - name: item
    key: id
    fields:
      - {name: id,   type: integer, owner: crm}
      - {name: note, type: text,    owner: crm}
      - {name: body, type: text,    owner: crm}
    systems:
      crm:
        table: public.items
        key_column: id
        columns: {id: {column: id}, note: {column: note}, body: {column: body}}
      erp:
        table: public.items
        key_column: id
        columns: {id: {column: id}, note: {column: note}, body: {column: body}}
` + erpExtra
	m, err := transform.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// newItemTarget creates a database with ddl and a sink into it with m.
func newItemTarget(t testing.TB, ddl string, m *transform.Mapping) (*postgres.Sink, *pgx.Conn) {
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
	conn, err := pgx.Connect(ctx, cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return newItemSink(t, conn, m), conn
}

// newItemSink returns a sink into conn's database with m.
func newItemSink(t testing.TB, conn *pgx.Conn, m *transform.Mapping) *postgres.Sink {
	t.Helper()
	db := dbOf(conn)
	s, err := postgres.New(postgres.Config{Flow: flow, Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func itemEv(id string, data map[string]any) transform.Event {
	d := map[string]any{"id": id}
	for k, v := range data {
		d[k] = v
	}
	return transform.Event{Entity: "item", Op: transform.OpUpsert, Key: id, Data: d}
}

// applyRetried applies like the flow does with a transient error that
// asks for an immediate retry (RetryAfter), up to three times.
func applyRetried(t testing.TB, s *postgres.Sink, txs ...*transform.Tx) (pipeline.ApplyResult, error) {
	t.Helper()
	for i := 0; ; i++ {
		res, err := s.Apply(context.Background(), txs)
		if ae, ok := err.(*pipeline.ApplyError); ok && ae.Kind == pipeline.Transient && ae.RetryAfter > 0 && i < 3 {
			continue
		}
		return res, err
	}
}

func itemRow(t testing.TB, conn *pgx.Conn, cols, id string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), `SELECT row(`+cols+`)::text FROM items WHERE id = `+id).Scan(&s); err != nil {
		if err == pgx.ErrNoRows {
			return "no row"
		}
		t.Fatal(err)
	}
	return s
}

// TestSink_NotNullColumnAddedWhileRunning: the ERP adds a NOT NULL column
// the mapping does not carry (a DEFAULT added, then dropped) while the
// sink runs with the catalog it read before. An update of an existing row
// is applied (the sink reads the catalog again and updates what it cannot
// insert); an insert of a new row is refused permanently, naming the
// event, the column and the way out (default: in the mapping).
func TestSink_NotNullColumnAddedWhileRunning(t *testing.T) {
	s, conn := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text)`, itemMapping(t, ""))
	mustApply(t, s, tx(0x100, itemEv("1", map[string]any{"note": "a", "body": "b"}), itemEv("2", map[string]any{"note": "a", "body": "b"})))
	exec(t, conn, `ALTER TABLE items ADD region text NOT NULL DEFAULT 'EU'; ALTER TABLE items ALTER region DROP DEFAULT`)

	if _, err := applyRetried(t, s, tx(0x200, itemEv("1", map[string]any{"note": "changed"}))); err != nil {
		t.Fatalf("update of an existing row: %v", err)
	}
	if got := itemRow(t, conn, "note, body, region", "1"); got != "(changed,b,EU)" {
		t.Errorf("row 1 = %s, want (changed,b,EU)", got)
	}

	_, err := applyRetried(t, s, tx(0x300, itemEv("2", map[string]any{"note": "two"}), itemEv("3", map[string]any{"note": "new", "body": "x"})))
	ae := applyError(t, err, pipeline.Permanent)
	if ae != nil {
		if ae.Tx != 0 || ae.Event != 1 {
			t.Errorf("error names tx %d event %d, want 0, 1 (the insert of 3)", ae.Tx, ae.Event)
		}
		for _, want := range []string{"entity item key 3", "lacks [region]", "default:"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}
	// What the flow does next: the insert dead-lettered, the rest applied.
	if _, err := applyRetried(t, s, tx(0x300, itemEv("2", map[string]any{"note": "two"}))); err != nil {
		t.Fatalf("apply without the refused insert: %v", err)
	}
	if got := itemRow(t, conn, "note, region", "2"); got != "(two,EU)" {
		t.Errorf("row 2 = %s, want (two,EU)", got)
	}
	if got := itemRow(t, conn, "note", "3"); got != "no row" {
		t.Errorf("row 3 = %s, want none", got)
	}
}

// TestSink_DefaultsOfTheMapping: default: gives the rows duplex inserts a
// value for columns the event does not write, a constant or an SQL
// expression evaluated in the target; rows that exist keep theirs.
func TestSink_DefaultsOfTheMapping(t *testing.T) {
	m := itemMapping(t, `        default:
          region: "it's EU"
          code: {sql: "'C-' || nextval('public.item_codes')"}
          made: {value: '2024-02-29'}
`)
	s, conn := newItemTarget(t, `CREATE SEQUENCE item_codes START 7;
		CREATE TABLE items (id int PRIMARY KEY, note text, body text, region text NOT NULL, code text NOT NULL, made date NOT NULL)`, m)
	mustApply(t, s, tx(0x100, itemEv("1", map[string]any{"note": "a", "body": "b"})))
	if got := itemRow(t, conn, "note, region, code, made", "1"); got != `(a,"it's EU",C-7,2024-02-29)` {
		t.Errorf("inserted row = %s, want (a,\"it's EU\",C-7,2024-02-29)", got)
	}
	exec(t, conn, `UPDATE items SET region = 'local', code = 'mine' WHERE id = 1`)
	mustApply(t, s, tx(0x200, itemEv("1", map[string]any{"note": "changed"})))
	if got := itemRow(t, conn, "note, body, region, code", "1"); got != "(changed,b,local,mine)" {
		t.Errorf("updated row = %s, want (changed,b,local,mine): defaults are for inserts only", got)
	}
}

// TestSink_DefaultThatDoesNotFitIsRefusedAtConnect: a constant that is not
// valid for its column, or an expression that does not plan, stops the
// session with the reason (and check refuses it), instead of failing
// every insert later.
func TestSink_DefaultThatDoesNotFitIsRefusedAtConnect(t *testing.T) {
	for _, c := range []struct{ name, def, want string }{
		{"constant", "          qty: seven\n", `default for column qty integer`},
		{"expression", "          qty: {sql: no_such_function()}\n", `no_such_function`},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _ := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text, qty integer NOT NULL)`, itemMapping(t, "        default:\n"+c.def))
			_, err := s.Apply(context.Background(), []*transform.Tx{tx(0x100, itemEv("1", nil))})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "public.items") {
				t.Errorf("apply error = %v, want one naming public.items and %q", err, c.want)
			}
		})
	}
}

// TestSink_NotNullViolationThatRereadingDoesNotExplainIsPermanent: a NOT
// NULL column whose DEFAULT yields NULL fails every insert although the
// catalog shows a default. The sink reads the catalog again once; when
// that changes nothing the error is the data's (a dead letter), not a
// retry forever.
func TestSink_NotNullViolationThatRereadingDoesNotExplainIsPermanent(t *testing.T) {
	s, _ := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text, region text NOT NULL DEFAULT nullif('x', 'x'))`, itemMapping(t, ""))
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(0x100, itemEv("1", map[string]any{"note": "a"}))})
	applyError(t, err, pipeline.Transient) // the catalog may be stale: read again
	_, err = s.Apply(context.Background(), []*transform.Tx{tx(0x100, itemEv("1", map[string]any{"note": "a"}))})
	if ae := applyError(t, err, pipeline.Permanent); ae != nil && (ae.Tx != 0 || ae.Event != 0 || !strings.Contains(err.Error(), "region")) {
		t.Errorf("error %v names tx %d event %d, want 0, 0 and column region", err, ae.Tx, ae.Event)
	}
}

// TestSink_IdentityColumnFillsItself: a NOT NULL identity column has no
// DEFAULT in pg_attribute (atthasdef is false) but fills itself, so rows
// are inserted, not only updated.
func TestSink_IdentityColumnFillsItself(t *testing.T) {
	s, conn := newItemTarget(t, `CREATE TABLE items (no bigint GENERATED ALWAYS AS IDENTITY, id int PRIMARY KEY, note text, body text)`, itemMapping(t, ""))
	mustApply(t, s, tx(0x100, itemEv("1", map[string]any{"note": "a", "body": "b"})))
	if got := itemRow(t, conn, "no, note", "1"); got != "(1,a)" {
		t.Errorf("row = %s, want (1,a)", got)
	}
}

// toastUpdate is an update of item id's note that left body unchanged:
// with body's value when the capture found it, else without (unknown).
func toastUpdate(id, note string, body *string) transform.Event {
	ev := itemEv(id, map[string]any{"note": note})
	ev.Unchanged = []string{"body"}
	if body != nil {
		ev.Data["body"] = *body
	}
	return ev
}

// TestSink_UnchangedToastValueForAMissingRow: an update that left body
// unchanged creates a row the target lacks with body's value (never
// NULL), leaves an existing row's body as it is, and, when body's value is
// unknown, updates an existing row but refuses to create a missing one,
// naming the field.
func TestSink_UnchangedToastValueForAMissingRow(t *testing.T) {
	s, conn := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text)`, itemMapping(t, ""))
	mustApply(t, s, tx(0x100, itemEv("1", map[string]any{"note": "a", "body": "target's body"})))
	big := strings.Repeat("x", 10000)
	mustApply(t, s, tx(0x200, toastUpdate("1", "b", &big), toastUpdate("2", "b", &big)))
	if got := itemRow(t, conn, "note, left(body, 20)", "1"); got != "(b,\"target's body\")" {
		t.Errorf("existing row = %s, want its body kept", got)
	}
	if got := itemRow(t, conn, "note, length(body)", "2"); got != "(b,10000)" {
		t.Errorf("created row = %s, want (b,10000)", got)
	}

	mustApply(t, s, tx(0x300, toastUpdate("1", "c", nil)))
	if got := itemRow(t, conn, "note, left(body, 20)", "1"); got != "(c,\"target's body\")" {
		t.Errorf("existing row after an update with body unknown = %s, want (c,\"target's body\")", got)
	}
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(0x400, toastUpdate("1", "d", nil), toastUpdate("3", "d", nil))})
	if ae := applyError(t, err, pipeline.Permanent); ae != nil {
		if ae.Tx != 0 || ae.Event != 1 {
			t.Errorf("error names tx %d event %d, want 0, 1 (the update of 3)", ae.Tx, ae.Event)
		}
		for _, want := range []string{"entity item key 3", "[body] unchanged", "not created"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}
	if got := itemRow(t, conn, "note", "3"); got != "no row" {
		t.Errorf("row 3 = %s, want none (never a NULL body)", got)
	}
}

// TestSink_UnchangedToastValueFolded: an insert and a later update that
// left body unchanged, folded in one batch, create the row with the
// inserted body; the update's unchanged value never overrides a value a
// change of the batch wrote.
func TestSink_UnchangedToastValueFolded(t *testing.T) {
	s, conn := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text NOT NULL)`, itemMapping(t, ""))
	newer := "read later"
	mustApply(t, s,
		tx(0x100, itemEv("1", map[string]any{"note": "a", "body": "inserted"}), itemEv("2", map[string]any{"note": "a", "body": "inserted"})),
		tx(0x200, toastUpdate("1", "b", nil), toastUpdate("2", "b", &newer)))
	for _, id := range []string{"1", "2"} {
		if got := itemRow(t, conn, "note, body", id); got != "(b,inserted)" {
			t.Errorf("row %s = %s, want (b,inserted)", id, got)
		}
	}
	// Folded the other way round: a write after the unchanged value wins.
	mustApply(t, s, tx(0x300, toastUpdate("4", "a", &newer)), tx(0x400, itemEv("4", map[string]any{"note": "b", "body": "written"})))
	if got := itemRow(t, conn, "note, body", "4"); got != "(b,written)" {
		t.Errorf("row 4 = %s, want (b,written)", got)
	}
}

// TestSink_UnchangedToastValueUnknownForARowBornHere: an entity whose key
// the target owns lives and dies in the target; an update from the other
// side that finds no row (deleted here) is skipped, unknown unchanged
// values or not: no row with NULLs, and no dead letter.
func TestSink_UnchangedToastValueUnknownForARowBornHere(t *testing.T) {
	m := itemMapping(t, "")
	m.Entity("item").Field("id").Owner = "erp"
	s, conn := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text)`, m)
	mustApply(t, s, tx(0x100, toastUpdate("1", "b", nil)))
	if got := itemRow(t, conn, "note", "1"); got != "no row" {
		t.Errorf("row 1 = %s, want none", got)
	}
}

// TestSink_ChangeOfARowBornHereNotFoundIsSaid: an update from the other
// side of a row the target owns and does not have (deleted here while it
// travelled) is left out, as before, and now said at INFO with its key:
// silent, it hid a write-back that reached the CRM before the CRM's row
// was visible there. Rows all found and changed need no check.
func TestSink_ChangeOfARowBornHereNotFoundIsSaid(t *testing.T) {
	ctx := context.Background()
	m := itemMapping(t, "")
	m.Entity("item").Field("id").Owner = "erp"
	_, conn := newItemTarget(t, `CREATE TABLE items (id int PRIMARY KEY, note text, body text); INSERT INTO items VALUES (1, 'a', 'x')`, m)
	var logs bytes.Buffer
	db := dbOf(conn)
	s, err := postgres.New(postgres.Config{Flow: flow, Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	mustApply(t, s, tx(0x100, itemEv("1", map[string]any{"note": "b"}), itemEv("2", map[string]any{"note": "c"})))
	if got := itemRow(t, conn, "note", "1"); got != "(b)" {
		t.Errorf("row 1 = %s, want b", got)
	}
	if got := itemRow(t, conn, "note", "2"); got != "no row" {
		t.Errorf("row 2 = %s, want none", got)
	}
	if !strings.Contains(logs.String(), "left out") || !strings.Contains(logs.String(), "keys=[2]") || !strings.Contains(logs.String(), "rows=1") {
		t.Errorf("the change of row 2, left out, is not said:\n%s", logs.String())
	}
	logs.Reset()
	mustApply(t, s, tx(0x200, itemEv("1", map[string]any{"note": "d"})))
	if strings.Contains(logs.String(), "left out") {
		t.Errorf("a change of a row that is there is said to be left out:\n%s", logs.String())
	}
}
