package postgres_test

// Rows the sink's foreign-key check must read although they look as if
// they could not break a key. A narrowing of the check (reverted) left out
// rows whose key column is a reference resolved from the parent in the
// same transaction, and rows an update does not write the key's columns
// of; a fresh review found three ways such a row ends up pointing at
// nothing, committed silently. Each must be refused (visibly) or leave no
// dangling row.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// refMapping: a child refers to its parent by the parent's canonical key,
// a reference the ERP sink resolves to the parent's erp_no, which the
// foreign key references; the child's note is owned by the CRM, its key
// (and so the right to create it) by keyOwner.
func refMapping(keyOwner string) string {
	return fmt.Sprintf(`version: 1
systems: [crm, erp]
entities:
  - name: parent
    key: id
    fields:
      - {name: id, type: integer, owner: crm}
    systems:
      crm: {table: public.parent, key_column: id, columns: {id: {column: id}}}
      erp: {table: public.parent, key_column: crm_id, columns: {id: {column: crm_id}}}
  - name: child
    key: id
    fields:
      - {name: id, type: integer, owner: %s}
      - {name: parent, type: integer, owner: crm}
      - {name: note, type: text, owner: crm}
    systems:
      crm: {table: public.child, key_column: id, columns: {id: {column: id}, parent: {column: parent_id}, note: {column: note}}}
      erp: {table: public.child, key_column: id, columns: {id: {column: id}, parent: {column: parent_no, ref: {entity: parent, column: erp_no}}, note: {column: note}}}
`, keyOwner)
}

const refDDL = `CREATE TABLE parent (erp_no serial PRIMARY KEY, crm_id int UNIQUE NOT NULL);
	CREATE TABLE child (id int PRIMARY KEY, parent_no int REFERENCES parent ON DELETE CASCADE, note text)`

// noDangling says whether the apply either failed or left no child whose
// foreign key value is missing from its parent.
func noDangling(t *testing.T, err error, got []string) {
	t.Helper()
	if err != nil {
		t.Logf("apply refused (visible): %v", err)
		return
	}
	if len(got) > 0 {
		t.Errorf("apply committed rows whose foreign key value is not in the parent table: %q", got)
	}
}

// A reference resolved inside a set-based attempt that is rolled back to
// its savepoint (writePerTx -> unique violation -> writeInOrder) is looked
// up again in the retry: the parent, inserted again, has a new erp_no. It
// was not (resolveRefs rewrote the change's row in place, v.Text, v.Ref =
// got, nil): the check refused the valid transaction, naming the foreign
// key. It must now apply, the child pointing at its parent.
func TestSink_ForeignKeyCheckedAfterARefResolvedInARolledBackAttempt(t *testing.T) {
	ddl := `CREATE TABLE parent (erp_no serial PRIMARY KEY, crm_id int UNIQUE NOT NULL);
	CREATE TABLE child (id int PRIMARY KEY, parent_no int REFERENCES parent, note text NOT NULL UNIQUE)`
	s, conn, _ := newSchemaTarget(t, ddl, refMapping("crm"))
	exec(t, conn, `INSERT INTO child VALUES (20, NULL, 'x'), (21, NULL, 'y')`)
	// One source transaction: a new parent, a child of it, and the notes
	// of 20 and 21 swapped through a temporary value (fine in source
	// order, a unique violation once folded).
	batch := tx(100,
		upsert("parent", "1", map[string]any{"id": "1"}),
		upsert("child", "10", map[string]any{"id": "10", "parent": "1", "note": "a"}),
		upsert("child", "20", map[string]any{"id": "20", "parent": nil, "note": "tmp"}),
		upsert("child", "21", map[string]any{"id": "21", "parent": nil, "note": "x"}),
		upsert("child", "20", map[string]any{"id": "20", "parent": nil, "note": "y"}),
	)
	_, err := s.Apply(context.Background(), []*transform.Tx{batch})
	if err != nil {
		t.Fatalf("a valid transaction retried in order was refused: %v", err)
	}
	got := rows(t, conn, `SELECT c.id || ' ' || coalesce(p.crm_id::text, '-') || ' ' || c.note FROM child c LEFT JOIN parent p ON p.erp_no = c.parent_no ORDER BY c.id`)
	if want := []string{"10 1 a", "20 - y", "21 - x"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("children (id, parent's crm_id, note) = %q, want %q", got, want)
	}
}

// A self-reference whose referenced column the same statement changes:
// resolveRefs reads node 1's code before the upsert that renames it.
func TestSink_ForeignKeyCheckedWhenTheReferencedValueChangesInTheBatch(t *testing.T) {
	ddl := `CREATE TABLE node (id int PRIMARY KEY, code text UNIQUE, parent_code text REFERENCES node(code))`
	mapping := `version: 1
systems: [crm, erp]
entities:
  - name: node
    key: id
    fields:
      - {name: id, type: integer, owner: crm}
      - {name: code, type: text, owner: crm}
      - {name: parent, type: integer, owner: crm}
    systems:
      crm: {table: public.node, key_column: id, columns: {id: {column: id}, code: {column: code}, parent: {column: parent_id}}}
      erp: {table: public.node, key_column: id, columns: {id: {column: id}, code: {column: code}, parent: {column: parent_code, ref: {entity: node, column: code}}}}
`
	s, conn, _ := newSchemaTarget(t, ddl, mapping)
	exec(t, conn, `INSERT INTO node VALUES (1, 'A', NULL)`)
	batch := tx(100,
		upsert("node", "1", map[string]any{"id": "1", "code": "B", "parent": nil}),
		upsert("node", "2", map[string]any{"id": "2", "code": "C", "parent": "1"}),
	)
	_, err := s.Apply(context.Background(), []*transform.Tx{batch})
	t.Logf("rows: %q", rows(t, conn, `SELECT id, code, coalesce(parent_code, '-') FROM node ORDER BY id`))
	if err != nil && !strings.Contains(err.Error(), "node") {
		t.Logf("unexpected error: %v", err)
	}
	noDangling(t, err, rows(t, conn, `SELECT c.id, c.parent_code FROM node c WHERE c.parent_code IS NOT NULL AND NOT EXISTS (SELECT 1 FROM node p WHERE p.code = c.parent_code)`))
}

// An update that writes none of the key's columns, on a table with an
// ENABLE ALWAYS trigger (which fires under session_replication_role =
// replica) that sets the key's column: PostgreSQL checks the row as the
// trigger left it (RI_FKey_fk_upd_check_required compares the old row with
// the new one); rowsToCheck skips it on the columns the batch writes.
func TestSink_ForeignKeyCheckedWhenATriggerSetsTheKey(t *testing.T) {
	ddl := refDDL + `;
	CREATE FUNCTION child_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.parent_no := 42; RETURN NEW; END $$;
	CREATE TRIGGER child_touch BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION child_touch();
	ALTER TABLE child ENABLE ALWAYS TRIGGER child_touch`
	s, conn, _ := newSchemaTarget(t, ddl, refMapping("erp"))
	exec(t, conn, `INSERT INTO parent (crm_id) VALUES (1); INSERT INTO child VALUES (10, 1, 'old')`)
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(100, upsert("child", "10", map[string]any{"id": "10", "note": "new"}))})
	t.Logf("rows: %q", rows(t, conn, `SELECT id, parent_no, note FROM child`))
	noDangling(t, err, rows(t, conn, `SELECT c.id, c.parent_no FROM child c WHERE c.parent_no IS NOT NULL AND NOT EXISTS (SELECT 1 FROM parent p WHERE p.erp_no = c.parent_no)`))
}

// A child written by reference and its parent deleted in the same batch,
// without ON DELETE CASCADE: refused, naming the constraint; nothing of
// the batch is applied.
func TestSink_ForeignKeyParentDeletedInTheSameBatch(t *testing.T) {
	s, conn, _ := newSchemaTarget(t, strings.Replace(refDDL, " ON DELETE CASCADE", "", 1), refMapping("crm"))
	mustApply(t, s, tx(100, upsert("parent", "1", map[string]any{"id": "1"}),
		upsert("child", "10", map[string]any{"id": "10", "parent": "1", "note": "a"})))
	wantRows(t, conn, `SELECT c.id, p.crm_id FROM child c JOIN parent p ON p.erp_no = c.parent_no`, "10|1")
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(200, upsert("child", "11", map[string]any{"id": "11", "parent": "1", "note": "b"}), del("parent", "1"))})
	applyError(t, err, pipeline.Permanent)
	if err == nil || !strings.Contains(err.Error(), "child_parent_no_fkey") {
		t.Errorf("apply: %v; want the refusal naming child_parent_no_fkey", err)
	}
	wantRows(t, conn, `SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)`, "1|1")
}
