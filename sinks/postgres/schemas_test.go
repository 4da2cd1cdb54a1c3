package postgres_test

// Real schemas the example does not have (issue 11): two source keys on one
// target key, unique values swapped inside a transaction, foreign keys the
// mapping does not declare.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgcatalog"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// newSchemaTarget creates a database with ddl and a to-erp sink into it
// with the mapping (a YAML document; the CRM side needs no database).
func newSchemaTarget(t *testing.T, ddl, mapping string) (*postgres.Sink, *pgx.Conn, *transform.Mapping) {
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
	s, err := postgres.New(postgres.Config{Flow: flow, Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	conn, err := pgx.Connect(ctx, cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return s, conn, m
}

// oneEntity is a mapping of one entity "item" with fields (name, type)
// owned by the CRM, stored in table items on both sides under the
// fields' names; key is the first field.
func oneEntity(fields ...[2]string) string {
	var fs, cs strings.Builder
	for _, f := range fields {
		fmt.Fprintf(&fs, "      - {name: %s, type: %s, owner: crm}\n", f[0], f[1])
		fmt.Fprintf(&cs, "          %s: {column: %s}\n", f[0], f[0])
	}
	return fmt.Sprintf(`version: 1
systems: [crm, erp]
entities:
  - name: item
    key: %[1]s
    fields:
%[2]s    systems:
      crm:
        table: public.items
        key_column: %[1]s
        columns:
%[3]s      erp:
        table: public.items
        key_column: %[1]s
        columns:
%[3]s`, fields[0][0], fs.String(), cs.String())
}

func upsert(entity, key string, data map[string]any) transform.Event {
	return transform.Event{Entity: entity, Op: transform.OpUpsert, Key: key, Data: data}
}

func del(entity, key string) transform.Event {
	return transform.Event{Entity: entity, Op: transform.OpDelete, Key: key}
}

// rows returns the query's rows, each as its columns' text joined by "|".
func rows(t *testing.T, conn *pgx.Conn, q string) []string {
	t.Helper()
	r, err := conn.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for r.Next() {
		vals, err := r.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func wantRows(t *testing.T, conn *pgx.Conn, q string, want ...string) {
	t.Helper()
	got := rows(t, conn, q)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got  %q\n want %q", q, got, want)
	}
}

// withoutEvent is what the pipeline applies after dead-lettering event ei
// of transaction ti.
func withoutEvent(txs []*transform.Tx, ti, ei int) []*transform.Tx {
	out := append([]*transform.Tx(nil), txs...)
	c := *out[ti]
	c.Events = append(append([]transform.Event(nil), c.Events[:ei]...), c.Events[ei+1:]...)
	out[ti] = &c
	return out
}

// ---- two source rows, one target key (case 5) --------------------------------

// Source keys that differ as text but are one value of the target's key
// column: a citext e-mail, a char(n) code that pads, a nondeterministic
// collation. In one batch the set-based upsert failed with SQLSTATE 21000,
// retried forever; now the later change is refused naming both keys and
// the rest applies.
func TestSink_TwoSourceKeysOneTargetKey(t *testing.T) {
	for _, tc := range []struct {
		name, ddl string
		a, b      string // two source keys, one target key
	}{
		{"citext", `CREATE EXTENSION citext; CREATE TABLE items (email citext PRIMARY KEY, note text)`, "Ann@example.com", "ann@example.com"},
		{"char(n)", `CREATE TABLE items (email char(8) PRIMARY KEY, note text)`, "ab", "ab "},
		{"nondeterministic collation", `CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
			CREATE TABLE items (email text COLLATE ci PRIMARY KEY, note text)`, "ANN", "ann"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, conn, _ := newSchemaTarget(t, tc.ddl, oneEntity([2]string{"email", "text"}, [2]string{"note", "text"}))
			ctx := context.Background()
			txs := []*transform.Tx{
				tx(100, upsert("item", tc.a, map[string]any{"email": tc.a, "note": "first"}), upsert("item", "other", map[string]any{"email": "other", "note": "o"})),
				tx(200, upsert("item", tc.b, map[string]any{"email": tc.b, "note": "second"})),
			}
			_, err := s.Apply(ctx, txs)
			ae := applyError(t, err, pipeline.Permanent)
			if ae == nil {
				return
			}
			if ae.Tx != 1 || ae.Event != 0 {
				t.Fatalf("error names tx %d event %d, want the later change (1, 0): %v", ae.Tx, ae.Event, err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.a) || !strings.Contains(msg, tc.b) {
				t.Errorf("error does not name both source keys %q and %q: %v", tc.a, tc.b, err)
			}
			mustApply(t, s, withoutEvent(txs, ae.Tx, ae.Event)...)
			wantRows(t, conn, `SELECT email::text, note FROM items ORDER BY note`, tc.a+"|first", "other|o")

			// The same collision across batches: the target row already
			// holds the other key.
			_, err = s.Apply(ctx, []*transform.Tx{tx(300, upsert("item", tc.b, map[string]any{"email": tc.b, "note": "third"}))})
			ae = applyError(t, err, pipeline.Permanent)
			if tc.name == "char(n)" && !strings.Contains(fmt.Sprint(err), "pads with spaces") {
				// char(n) keeps no trace of the trailing space: a source
				// key ending in one is refused whatever the batch.
				t.Errorf("cross-batch char(n): %v, want the refusal of a key ending in a space", err)
			}
			if ae != nil && (ae.Tx != 0 || ae.Event != 0 || !strings.Contains(err.Error(), tc.a) || !strings.Contains(err.Error(), tc.b)) {
				t.Errorf("cross-batch collision: %+v %v", ae, err)
			}
			wantRows(t, conn, `SELECT email::text, note FROM items ORDER BY note`, tc.a+"|first", "other|o")
		})
	}
}

// A key whose text changes within one target value (a CRM user fixes the
// case of an e-mail; the capture sends delete old + upsert new) is no
// collision: the target row takes the new text, in one batch or two.
func TestSink_KeyTextChangeWithinOneTargetValue(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, `CREATE EXTENSION citext; CREATE TABLE items (email citext PRIMARY KEY, note text)`,
		oneEntity([2]string{"email", "text"}, [2]string{"note", "text"}))
	mustApply(t, s, tx(100, upsert("item", "Ann@x.com", map[string]any{"email": "Ann@x.com", "note": "n"})))
	mustApply(t, s, tx(200, del("item", "Ann@x.com"), upsert("item", "ann@x.com", map[string]any{"email": "ann@x.com", "note": "n"})))
	wantRows(t, conn, `SELECT email::text, note FROM items`, "ann@x.com|n")
	mustApply(t, s, tx(300, del("item", "ann@x.com")), tx(400, upsert("item", "ANN@x.com", map[string]any{"email": "ANN@x.com", "note": "m"})))
	wantRows(t, conn, `SELECT email::text, note FROM items`, "ANN@x.com|m")
	mustApply(t, s, tx(500, upsert("item", "b@x.com", map[string]any{"email": "b@x.com", "note": "b"})), tx(600, del("item", "b@x.com")))
	wantRows(t, conn, `SELECT email::text, note FROM items`, "ANN@x.com|m")
}

// SQLSTATE 21000 (a statement affecting one row twice) is permanent: when
// the target makes two keys one behind duplex's back (a trigger that
// lower-cases them, ENABLE ALWAYS so that it fires under duplex's
// session_replication_role = replica), the transaction goes to dead letters instead of being
// retried forever, and it is not applied row by row (the later row would
// overwrite the earlier one without a word).
func TestSink_CardinalityViolationIsPermanent(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, `CREATE TABLE items (email text PRIMARY KEY, note text);
		CREATE FUNCTION lower_email() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.email := lower(NEW.email); RETURN NEW; END$$;
		CREATE TRIGGER lower_email BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION lower_email();
		ALTER TABLE items ENABLE ALWAYS TRIGGER lower_email`,
		oneEntity([2]string{"email", "text"}, [2]string{"note", "text"}))
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(100,
		upsert("item", "A@x", map[string]any{"email": "A@x", "note": "1"}), upsert("item", "a@x", map[string]any{"email": "a@x", "note": "2"}))})
	ae := applyError(t, err, pipeline.Permanent)
	if ae != nil && ae.Event >= 0 {
		t.Errorf("error names event %d; want the transaction (no row-by-row retry): %v", ae.Event, err)
	}
	if !strings.Contains(fmt.Sprint(err), "21000") {
		t.Errorf("error %v does not carry SQLSTATE 21000", err)
	}
	wantRows(t, conn, `SELECT count(*) FROM items`, "0")
}

// ---- unique values moved inside one transaction (case 6) ------------------

const uniqueDDL = `CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL UNIQUE);
INSERT INTO items VALUES (1, 'A'), (2, 'B');`

func item(id int, code string) transform.Event {
	k := fmt.Sprint(id)
	return upsert("item", k, map[string]any{"id": k, "code": code})
}

func uniqueTarget(t *testing.T) (*postgres.Sink, *pgx.Conn) {
	s, conn, _ := newSchemaTarget(t, uniqueDDL, oneEntity([2]string{"id", "integer"}, [2]string{"code", "text"}))
	return s, conn
}

// Codes swapped through a temporary value in one transaction: folded to
// final images the upsert violates the unique index whatever the row
// order; applied in source order it fits, as it did in the source.
func TestSink_UniqueValuesSwappedInOneTransaction(t *testing.T) {
	s, conn := uniqueTarget(t)
	mustApply(t, s, tx(100, item(1, "tmp"), item(2, "A"), item(1, "B")))
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "1|B", "2|A")
}

// The same swap spread over three transactions of one batch, with another
// transaction before them: each transaction is applied alone.
func TestSink_UniqueValuesSwappedAcrossTransactionsOfOneBatch(t *testing.T) {
	s, conn := uniqueTarget(t)
	res := mustApply(t, s, tx(50, item(3, "C")), tx(100, item(1, "tmp")), tx(200, item(2, "A")), tx(300, item(1, "B")))
	if res.Applied != 4 {
		t.Errorf("applied %d, want 4", res.Applied)
	}
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "1|B", "2|A", "3|C")
	if got := appliedPosition(t, conn).LSN; got != 300 {
		t.Errorf("applied position %s, want 300", got)
	}
}

// A deleted row's unique value taken by a new row of the same transaction.
func TestSink_DeletedUniqueValueReusedInOneTransaction(t *testing.T) {
	s, conn := uniqueTarget(t)
	mustApply(t, s, tx(100, del("item", "2"), item(8, "B")))
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "1|A", "8|B")
}

// A real conflict (the value is held by a row the source never had) is
// still a dead letter, naming the change; the rest of the transaction
// applies.
func TestSink_RealUniqueConflictIsADeadLetter(t *testing.T) {
	s, conn := uniqueTarget(t)
	if _, err := conn.Exec(context.Background(), `INSERT INTO items VALUES (9, 'LOCAL')`); err != nil {
		t.Fatal(err)
	}
	txs := []*transform.Tx{tx(100, item(1, "tmp"), item(2, "A"), item(1, "B")), tx(200, item(3, "LOCAL"), item(4, "D"))}
	_, err := s.Apply(context.Background(), txs)
	ae := applyError(t, err, pipeline.Permanent)
	if ae == nil {
		return
	}
	if ae.Tx != 1 || ae.Event != 0 {
		t.Fatalf("error names tx %d event %d, want (1, 0): %v", ae.Tx, ae.Event, err)
	}
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "1|A", "2|B", "9|LOCAL")
	mustApply(t, s, withoutEvent(txs, ae.Tx, ae.Event)...)
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "1|B", "2|A", "4|D", "9|LOCAL")
}

// A transaction too large to hold whole (applied in parts) swaps values in
// one part and reuses a deleted row's value in the next.
func TestSink_UniqueValuesMovedInALargeTransaction(t *testing.T) {
	s, conn := uniqueTarget(t)
	ctx := context.Background()
	ps, err := s.BeginParts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := tx(100, item(1, "tmp"), item(2, "A"), item(1, "B"))
	first.Last = false
	second := tx(100, item(2, "D"), del("item", "1"), item(5, "B"))
	for i := range second.Events {
		second.Events[i].Pos.Index = 3 + i
		second.Events[i].ID = transform.EventID("crm", 100, 3+i)
	}
	for _, c := range []*transform.Tx{first, second} {
		if _, err := ps.Part(ctx, c); err != nil {
			t.Fatalf("part: %v", err)
		}
	}
	if err := ps.Commit(ctx, second); err != nil {
		t.Fatal(err)
	}
	wantRows(t, conn, `SELECT id, code FROM items ORDER BY id`, "2|D", "5|B")
	if got := appliedPosition(t, conn).LSN; got != 100 {
		t.Errorf("applied position %s, want 100", got)
	}
}

// ---- foreign keys the mapping does not declare (case 7) --------------------

// fkMapping maps child before parent, the child's parent_id as a plain
// integer: only the target's foreign key says which comes first.
const fkMapping = `version: 1
systems: [crm, erp]
entities:
  - name: child
    key: id
    fields:
      - {name: id, type: integer, owner: crm}
      - {name: parent_id, type: integer, owner: crm}
    systems:
      crm: {table: public.child, key_column: id, columns: {id: {column: id}, parent_id: {column: parent_id}}}
      erp: {table: public.child, key_column: id, columns: {id: {column: id}, parent_id: {column: parent_id}}}
  - name: parent
    key: id
    fields:
      - {name: id, type: integer, owner: crm}
      - {name: child_id, type: integer, owner: crm}
    systems:
      crm: {table: public.parent, key_column: id, columns: {id: {column: id}, child_id: {column: child_id}}}
      erp: {table: public.parent, key_column: id, columns: {id: {column: id}, child_id: {column: child_id}}}
`

func child(id, parent int) transform.Event {
	return upsert("child", fmt.Sprint(id), map[string]any{"id": fmt.Sprint(id), "parent_id": fmt.Sprint(parent)})
}

func parent(id int, child *int) transform.Event {
	var c any
	if child != nil {
		c = fmt.Sprint(*child)
	}
	return upsert("parent", fmt.Sprint(id), map[string]any{"id": fmt.Sprint(id), "child_id": c})
}

// A transaction inserting a parent and its child, and one deleting both,
// apply whole: parents are written first and deleted last, by the
// target's foreign key alone.
func TestSink_ForeignKeyTheMappingDoesNotDeclare(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, `CREATE TABLE parent (id int PRIMARY KEY, child_id int);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent)`, fkMapping)
	mustApply(t, s, tx(100, child(10, 1), parent(1, nil)))
	wantRows(t, conn, `SELECT p.id, c.id FROM parent p JOIN child c ON c.parent_id = p.id`, "1|10")
	mustApply(t, s, tx(200, del("parent", "1"), del("child", "10")))
	wantRows(t, conn, `SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)`, "0|0")
}

// Tables referring to each other through DEFERRABLE foreign keys: a
// transaction writing both ends of a cycle applies with them deferred.
func TestSink_DeferrableForeignKeyCycle(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, `CREATE TABLE parent (id int PRIMARY KEY, child_id int);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE);
		ALTER TABLE parent ADD CONSTRAINT parent_child_fk FOREIGN KEY (child_id) REFERENCES child DEFERRABLE`, fkMapping)
	ten := 10
	mustApply(t, s, tx(100, child(10, 1), parent(1, &ten)))
	wantRows(t, conn, `SELECT p.id, c.id, p.child_id FROM parent p JOIN child c ON c.parent_id = p.id`, "1|10|10")
	mustApply(t, s, tx(200, del("child", "10"), del("parent", "1")))
	wantRows(t, conn, `SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)`, "0|0")
	// A row that still breaks the key at commit is refused, permanently.
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(300, child(11, 7))})
	applyError(t, err, pipeline.Permanent)
}

// One deferrable foreign key is enough to break a cycle.
func TestSink_ForeignKeyCycleWithOneDeferrable(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, `CREATE TABLE parent (id int PRIMARY KEY, child_id int);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE);
		ALTER TABLE parent ADD CONSTRAINT parent_child_fk FOREIGN KEY (child_id) REFERENCES child`, fkMapping)
	ten := 10
	mustApply(t, s, tx(100, child(10, 1), parent(1, &ten)))
	wantRows(t, conn, `SELECT p.id, c.id, p.child_id FROM parent p JOIN child c ON c.parent_id = p.id`, "1|10|10")
}

// A cycle of foreign keys that are not DEFERRABLE applies too: the sink's
// session does not fire PostgreSQL's foreign-key triggers (replica) and
// checks the keys itself at the end of the transaction, so check accepts
// it, both ends written by one transaction apply, and a row that still
// breaks a key at the end is refused with the constraint's name.
func TestSink_NonDeferrableForeignKeyCycleIsApplied(t *testing.T) {
	s, conn, m := newSchemaTarget(t, `CREATE TABLE parent (id int PRIMARY KEY, child_id int);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
		ALTER TABLE parent ADD CONSTRAINT parent_child_fk FOREIGN KEY (child_id) REFERENCES child`, fkMapping)
	ctx := context.Background()
	cat, err := pgcatalog.Read(ctx, conn, m.Tables("erp"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Check("erp", cat, "target"); err != nil {
		t.Errorf("check: %v; want the cycle accepted", err)
	}
	ten := 10
	mustApply(t, s, tx(100, child(10, 1), parent(1, &ten)))
	wantRows(t, conn, `SELECT p.id, c.id, p.child_id FROM parent p JOIN child c ON c.parent_id = p.id`, "1|10|10")
	eleven := 11
	_, err = s.Apply(ctx, []*transform.Tx{tx(200, parent(2, &eleven))})
	applyError(t, err, pipeline.Permanent)
	if err == nil || !strings.Contains(err.Error(), "parent_child_fk") {
		t.Errorf("apply: %v; want the refusal naming parent_child_fk", err)
	}
	mustApply(t, s, tx(300, del("child", "10"), del("parent", "1")))
	wantRows(t, conn, `SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)`, "0|0")
}
