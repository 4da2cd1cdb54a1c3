package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/app"
)

// Issue 11, cases 11 and 12 in the schema suite: triggers on targets
// (both ways), ownership enforced, currencies; and refusals at check.
// Case 10 (a row inserted by the system that does not own the key) needs
// the insert to happen while duplex streams in both modes:
// TestOwnership_InsertByNonOwnerIsRefused below.
func TestSchemaCases_Ownership(t *testing.T) {
	triggers := `
CREATE TABLE audit (tbl text, id int, op text);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_by := 'trigger'; RETURN NEW; END $$;
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit VALUES (TG_TABLE_NAME, NEW.id, TG_OP); RETURN NULL; END $$;
CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2), updated_by text);
CREATE TABLE bills (id int PRIMARY KEY, amount numeric(12,2), updated_by text);
ALTER TABLE deals REPLICA IDENTITY FULL; ALTER TABLE bills REPLICA IDENTITY FULL;
CREATE TRIGGER deals_stamp BEFORE INSERT OR UPDATE ON deals FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TRIGGER deals_audit AFTER INSERT OR UPDATE ON deals FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TRIGGER bills_stamp BEFORE INSERT OR UPDATE ON bills FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TRIGGER bills_audit AFTER INSERT OR UPDATE ON bills FOR EACH ROW EXECUTE FUNCTION audit();`
	// deals are the CRM's, bills the ERP's; updated_by is shared.
	twoEntities := `
  - name: deal
    key: id
    fields:
      - {name: id,         type: integer, owner: crm}
      - {name: amount,     type: decimal, owner: crm}
      - {name: updated_by, type: text,    owner: both}
    systems:
      crm: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
      erp: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
  - name: bill
    key: id
    fields:
      - {name: id,         type: integer, owner: erp}
      - {name: amount,     type: decimal, owner: erp}
      - {name: updated_by, type: text,    owner: both}
    systems:
      crm: {table: public.bills, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
      erp: {table: public.bills, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
`
	enforced := `
  - name: deal
    key: id
    enforce: owner
    fields:
      - {name: id,         type: integer, owner: crm}
      - {name: amount,     type: decimal, owner: crm}
      - {name: updated_by, type: text,    owner: erp}
    systems:
      crm: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
      erp: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
`
	dealsDDL := `CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2), updated_by text); ALTER TABLE deals REPLICA IDENTITY FULL`
	runSchemaCases(t, []schemaCase{
		{
			// 11(b): the rows duplex applies do not fire the target's
			// ordinary triggers (session_replication_role = replica), in
			// either direction: each side keeps the value its source
			// wrote, and its audit table holds only its own writes.
			name:    "triggers on targets do not fire, both ways",
			crmDDL:  triggers,
			erpDDL:  triggers,
			mapping: twoEntities,
			before: []stmt{
				onCRM(`INSERT INTO deals VALUES (1, 10.00, 'crm user')`),
				onERP(`INSERT INTO bills VALUES (7, 70.00, 'erp user')`),
			},
			changes: []stmt{
				onCRM(`UPDATE deals SET amount = 11.00 WHERE id = 1`),
				onERP(`UPDATE bills SET amount = 71.00 WHERE id = 7`),
				onCRM(`INSERT INTO deals VALUES (2, 20.00, NULL)`),
			},
			want: []want{
				// The source's own triggers stamped its rows; the copies
				// carry that stamp, not one of their own.
				wantERP(`SELECT id, amount, updated_by FROM deals ORDER BY id`, "1|11.00|trigger", "2|20.00|trigger"),
				wantCRM(`SELECT id, amount, updated_by FROM bills ORDER BY id`, "7|71.00|trigger"),
				wantERP(`SELECT tbl, id, op FROM audit ORDER BY 1, 2, 3`, "bills|7|INSERT", "bills|7|UPDATE"),
				wantCRM(`SELECT tbl, id, op FROM audit ORDER BY 1, 2, 3`, "deals|1|INSERT", "deals|1|UPDATE", "deals|2|INSERT"),
			},
			verify: true,
		},
		{
			// 11(a): the ERP edits amount, which the CRM owns; with
			// enforce: owner the CRM's value is written back (through the
			// snapshot, in the snapshot mode).
			name:    "enforce owner writes the owner's value back",
			crmDDL:  dealsDDL,
			erpDDL:  dealsDDL,
			mapping: enforced,
			// Both systems hold the rows before duplex first starts.
			before: []stmt{
				onCRM(`INSERT INTO deals VALUES (1, 1.00, NULL), (2, 5.00, NULL)`),
				onERP(`INSERT INTO deals VALUES (1, 1.00, NULL), (2, 5.00, NULL)`),
			},
			changes: []stmt{onERP(`UPDATE deals SET amount = 2.00, updated_by = 'erp user' WHERE id = 1`)},
			want: []want{
				wantERP(`SELECT id, amount, updated_by FROM deals ORDER BY id`, "1|1.00|erp user", "2|5.00|NULL"),
				wantCRM(`SELECT id, amount, updated_by FROM deals ORDER BY id`, "1|1.00|erp user", "2|5.00|NULL"),
			},
			verify: true,
		},
		{
			name:    "enforce owner needs the non-owner's old rows",
			crmDDL:  dealsDDL,
			erpDDL:  `CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2), updated_by text)`,
			mapping: enforced,
			refusal: "enforce: owner needs the old row of every update",
		},
		{
			// 12: XCG (in force since 2025-03-31) and a currency the
			// mapping adds (currencies:), through minor units.
			name:   "currencies: XCG and one the mapping adds",
			crmDDL: `CREATE TABLE prices (id int PRIMARY KEY, currency char(3) NOT NULL, amount numeric(12,4))`,
			erpDDL: `CREATE TABLE prices (id int PRIMARY KEY, currency char(3) NOT NULL, amount_minor bigint)`,
			mapping: `version: 1
systems: [crm, erp]
currencies: {CNH: 2, JPY: 1}
entities:
  - name: price
    key: id
    fields:
      - {name: id,       type: integer,  owner: crm}
      - {name: currency, type: currency, owner: crm}
      - {name: amount,   type: money,    owner: crm}
    systems:
      crm: {table: public.prices, key_column: id, columns: {id: {column: id}, currency: {column: currency}, amount: {column: amount, currency_column: currency}}}
      erp: {table: public.prices, key_column: id, columns: {id: {column: id}, currency: {column: currency}, amount: {column: amount_minor, convert: money_minor, currency_column: currency}}}
`,
			before:  []stmt{onCRM(`INSERT INTO prices VALUES (1, 'XCG', 12.34), (2, 'BHD', 1.234)`)},
			changes: []stmt{onCRM(`INSERT INTO prices VALUES (3, 'CNH', 5.67), (4, 'JPY', 12.3)`)},
			want: []want{wantERP(`SELECT id, currency, amount_minor FROM prices ORDER BY id`,
				"1|XCG|1234", "2|BHD|1234", "3|CNH|567", "4|JPY|123")},
			verify: true,
		},
		{
			// 10: a row of the CRM-owned entity t that only the ERP has.
			// Streaming, its INSERT is refused at capture; through the
			// ERP's initial snapshot, the CRM's sink refuses the copied
			// row. Either way it is dead-lettered naming system, entity
			// and key, and the CRM never gets it.
			name:   "10: a row only the non-owner has is refused, never created in the owner",
			crmDDL: `CREATE TABLE t (id int PRIMARY KEY, note text); ALTER TABLE t REPLICA IDENTITY FULL`,
			erpDDL: `CREATE TABLE t (id int PRIMARY KEY, note text); ALTER TABLE t REPLICA IDENTITY FULL`,
			mapping: `
  - name: t
    key: id
    fields:
      - {name: id,   type: integer, owner: crm}
      - {name: note, type: text,    owner: both}
    systems:
      crm: {table: public.t, key_column: id, columns: {id: {column: id}, note: {column: note}}}
      erp: {table: public.t, key_column: id, columns: {id: {column: id}, note: {column: note}}}
`,
			before:     []stmt{onCRM(`INSERT INTO t VALUES (1, 'crm one')`), onERP(`INSERT INTO t VALUES (1, 'crm one')`)},
			changes:    []stmt{onERP(`INSERT INTO t VALUES (2, 'erp local')`)},
			want:       []want{wantCRM(`SELECT id, note FROM t ORDER BY id`, "1|crm one"), wantERP(`SELECT id, note FROM t ORDER BY id`, "1|crm one", "2|erp local")},
			deadLetter: "erp inserted a row of public.t (entity t, key 2), but crm owns the entity's key",
		},
	})
}

// TestOwnership_InsertByNonOwnerIsRefused (issue 11, case 10): the CRM
// owns the key of t; a row the ERP inserts itself (its sequence handing
// out a key) is refused: dead-lettered at capture naming system, entity
// and key, counted as an ownership violation, and never written over the
// CRM's row. sequence: follow has kept the ERP's sequence past the keys
// duplex wrote, so the ERP's own insert does not fail on them.
func TestOwnership_InsertByNonOwnerIsRefused(t *testing.T) {
	mapping := `version: 1
systems: [crm, erp]
entities:
  - name: t
    key: id
    sequence: follow
    fields:
      - {name: id,   type: integer, owner: crm}
      - {name: note, type: text,    owner: both}
    systems:
      crm: {table: public.t, key_column: id, columns: {id: {column: id}, note: {column: note}}}
      erp: {table: public.t, key_column: id, columns: {id: {column: id}, note: {column: note}}}
`
	f := newFixture(t, fixtureOptions{mapping: mapping})
	ddl := `CREATE TABLE t (id serial PRIMARY KEY, note text); ALTER TABLE t REPLICA IDENTITY FULL`
	f.exec("crm", ddl)
	f.exec("erp", ddl)
	f.exec("crm", `INSERT INTO t (note) VALUES ('crm one'), ('crm two')`)
	f.exec("erp", `CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
		CREATE TRIGGER t_after AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION nothing()`)
	ctx := context.Background()
	// duplex check's warnings: the erp generates keys of an entity the
	// crm owns; a trigger on an erp target table does not fire on
	// replicated rows.
	ws, err := app.Warnings(ctx, f.config(), f.mapping)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(ws, "\n")
	for _, sub := range []string{
		"erp table public.t (entity t): key column id is generated (default nextval('t_id_seq'::regclass)), but crm owns the key",
		"ALTER TABLE public.t ALTER COLUMN id DROP DEFAULT",
		"sequence: follow keeps public.t_id_seq past the keys duplex writes",
		"erp table public.t: trigger t_after does not fire on the rows duplex applies",
	} {
		if !strings.Contains(all, sub) {
			t.Errorf("warnings lack %q:\n%s", sub, all)
		}
	}
	if strings.Contains(all, "crm table public.t (entity t): key column") {
		t.Errorf("a warning about the crm's own key column:\n%s", all)
	}
	if _, err := startSchemaCase(f); err != nil {
		t.Fatal(err)
	}
	crm, erp := f.conn("crm"), f.conn("erp")
	waitFor(t, 60*time.Second, func() (bool, string) {
		got, _ := textRows(ctx, erp, `SELECT id, note FROM t ORDER BY id`)
		return strings.Join(got, ",") == "1|crm one,2|crm two", "erp rows: " + strings.Join(got, ",")
	})
	// The ERP's own insert: its sequence was kept past 2.
	var id int
	if err := erp.QueryRow(ctx, `INSERT INTO t (note) VALUES ('erp local') RETURNING id`).Scan(&id); err != nil {
		t.Fatalf("the erp's own insert failed: %v", err)
	}
	if id != 3 {
		t.Errorf("the erp's own insert got id %d, want 3 (sequence: follow)", id)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		dls := deadLetterErrors(t, f)
		for _, d := range dls {
			if strings.Contains(d, "capture-erp capture t 3:") && strings.Contains(d, "erp inserted a row of public.t (entity t, key 3), but crm owns the entity's key") {
				return true, ""
			}
		}
		return false, "dead letters: " + strings.Join(dls, "; ")
	})
	// A later edit of the CRM row still flows; the ERP row 3 never
	// reached the CRM.
	f.exec("crm", `UPDATE t SET note = 'crm one b' WHERE id = 1`)
	waitFor(t, 60*time.Second, func() (bool, string) {
		got, _ := textRows(ctx, erp, `SELECT id, note FROM t ORDER BY id`)
		return strings.Join(got, ",") == "1|crm one b,2|crm two,3|erp local", "erp rows: " + strings.Join(got, ",")
	})
	if got, _ := textRows(ctx, crm, `SELECT id, note FROM t ORDER BY id`); strings.Join(got, ",") != "1|crm one b,2|crm two" {
		t.Errorf("crm rows %v: the erp's row must not reach the crm", got)
	}
	if n := f.app.SrcStat["erp"].Snapshot().OwnershipViolations["t/insert"]; n != 1 {
		t.Errorf("ownership violations t/insert = %d, want 1", n)
	}
}

// TestOwnership_EditCountedAndWrittenBack (issue 11, case 11a, streaming):
// an ERP edit of a field the CRM owns is counted (status) and, with
// enforce: owner, undone with the CRM's current value; the write-back does
// not count again (it is duplex's own apply).
func TestOwnership_EditCountedAndWrittenBack(t *testing.T) {
	mapping := `version: 1
systems: [crm, erp]
entities:
  - name: deal
    key: id
    enforce: owner
    fields:
      - {name: id,         type: integer, owner: crm}
      - {name: amount,     type: decimal, owner: crm}
      - {name: updated_by, type: text,    owner: erp}
    systems:
      crm: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
      erp: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
`
	f := newFixture(t, fixtureOptions{mapping: mapping})
	ddl := `CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2), updated_by text); ALTER TABLE deals REPLICA IDENTITY FULL`
	f.exec("crm", ddl)
	f.exec("erp", ddl)
	f.exec("crm", `INSERT INTO deals VALUES (1, 1.00, NULL)`)
	if _, err := startSchemaCase(f); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	erp := f.conn("erp")
	rows := func() string {
		got, _ := textRows(ctx, erp, `SELECT id, amount, updated_by FROM deals ORDER BY id`)
		return strings.Join(got, ",")
	}
	waitFor(t, 60*time.Second, func() (bool, string) { return rows() == "1|1.00|NULL", "erp rows: " + rows() })
	f.exec("erp", `UPDATE deals SET amount = 2.00, updated_by = 'erp user' WHERE id = 1`)
	waitFor(t, 60*time.Second, func() (bool, string) { return rows() == "1|1.00|erp user", "erp rows: " + rows() })
	st := f.app.Status(ctx)
	for _, s := range st.Sources {
		if s.System == "erp" && s.OwnershipViolations["deal/field"] != 1 {
			t.Errorf("erp ownership violations %v, want deal/field 1", s.OwnershipViolations)
		}
	}
	if dls := deadLetterErrors(t, f); len(dls) > 0 {
		t.Errorf("dead letters: %q", dls)
	}
}
