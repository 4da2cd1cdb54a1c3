package e2e

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/cli"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/transform"
)

// Composite keys (issue 11, case 4): entities keyed by several fields,
// through the initial snapshot and while streaming.

// docsDDL is a document table keyed by (company, doc_no) in the CRM, the
// system that owns it.
const docsDDL = `CREATE TABLE docs (company text NOT NULL, doc_no int NOT NULL, note text, PRIMARY KEY (company, doc_no));
CREATE TABLE doc_payments (payment_no int PRIMARY KEY, company text, doc_no int, amount numeric(12,2))`

// docsMapping maps docs by the pair and payments that refer to a document
// by its company and doc_no; in the ERP the key columns have other names
// and another order in the unique index, and a payment stores the
// document's surrogate id.
const docsMapping = `
  - name: doc
    key: [company, doc_no]
    fields:
      - {name: company, type: text,    owner: crm}
      - {name: doc_no,  type: integer, owner: crm}
      - {name: note,    type: text,    owner: crm}
    systems:
      crm: {table: public.docs, key_columns: [company, doc_no], columns: {company: {column: company}, doc_no: {column: doc_no}, note: {column: note}}}
      erp: {table: public.erp_docs, key_columns: [co, no], columns: {company: {column: co}, doc_no: {column: no}, note: {column: note}}}
  - name: doc_payment
    key: payment_no
    fields:
      - {name: payment_no, type: integer, owner: crm}
      - {name: company,    type: text,    owner: crm}
      - {name: doc_no,     type: integer, owner: crm}
      - {name: amount,     type: decimal, owner: crm}
    systems:
      crm:
        table: public.doc_payments
        key_column: payment_no
        columns: {payment_no: {column: payment_no}, company: {column: company}, doc_no: {column: doc_no}, amount: {column: amount}}
      erp:
        table: public.erp_doc_payments
        key_column: payment_no
        columns:
          payment_no: {column: payment_no}
          doc_no:     {column: doc_id, ref: {entity: doc, column: id, fields: [company, doc_no]}}
          amount:     {column: amount}
`

const erpDocsDDL = `CREATE TABLE erp_docs (id bigserial PRIMARY KEY, co text NOT NULL, no bigint NOT NULL, note text, UNIQUE (no, co));
CREATE TABLE erp_doc_payments (payment_no int PRIMARY KEY, doc_id bigint REFERENCES erp_docs, amount numeric(12,2))`

// docsWant is the ERP's documents, and its payments with the key of the
// document each refers to.
func docsWant(docs []string, payments ...string) []want {
	return []want{
		wantERP(`SELECT co, no, note FROM erp_docs ORDER BY co, no`, docs...),
		wantERP(`SELECT p.payment_no, d.co, d.no, p.amount FROM erp_doc_payments p LEFT JOIN erp_docs d ON d.id = p.doc_id ORDER BY 1`, payments...),
	}
}

func TestSchemaCases_CompositeKeys(t *testing.T) {
	runSchemaCases(t, []schemaCase{
		{
			name:    "key of two columns: insert, update, update of each key part, delete, references",
			crmDDL:  docsDDL,
			erpDDL:  erpDocsDDL,
			mapping: docsMapping,
			before: []stmt{onCRM(`INSERT INTO docs VALUES ('ACME', 1, 'a1'), ('ACME', 2, 'a2'), ('Beta, "Ltd"', 1, 'b1'), ('Z', 7, 'z7');
				INSERT INTO doc_payments VALUES (1, 'ACME', 2, 10.00)`)},
			changes: []stmt{
				onCRM(`INSERT INTO docs VALUES ('ACME', 3, 'a3')`),
				onCRM(`UPDATE docs SET note = 'a1 edited' WHERE company = 'ACME' AND doc_no = 1`),
				// Each key part changed by an update: the old key goes,
				// the new one comes.
				onCRM(`UPDATE docs SET doc_no = 9 WHERE company = 'ACME' AND doc_no = 3`),
				onCRM(`UPDATE docs SET company = 'Gamma' WHERE company = 'Beta, "Ltd"' AND doc_no = 1`),
				onCRM(`DELETE FROM docs WHERE company = 'Z'`),
				// A reference to a document by both parts, and one moved
				// to another document.
				onCRM(`INSERT INTO doc_payments VALUES (2, 'Gamma', 1, 20.00), (3, 'ACME', 9, 30.00)`),
				onCRM(`UPDATE doc_payments SET company = 'ACME', doc_no = 1 WHERE payment_no = 1`),
			},
			want: docsWant([]string{"ACME|1|a1 edited", "ACME|2|a2", "ACME|9|a3", "Gamma|1|b1"},
				"1|ACME|1|10.00", "2|Gamma|1|20.00", "3|ACME|9|30.00"),
			verify: true,
		},
		{
			name:    "key parts swapped between two rows in one transaction",
			crmDDL:  docsDDL,
			erpDDL:  erpDocsDDL,
			mapping: docsMapping,
			before:  []stmt{onCRM(`INSERT INTO docs VALUES ('ACME', 1, 'first'), ('ACME', 2, 'second'), ('Beta', 1, 'beta')`)},
			changes: []stmt{onCRM(`BEGIN;
				UPDATE docs SET doc_no = 99 WHERE company = 'ACME' AND doc_no = 1;
				UPDATE docs SET doc_no = 1 WHERE company = 'ACME' AND doc_no = 2;
				UPDATE docs SET doc_no = 2 WHERE company = 'ACME' AND doc_no = 99;
				UPDATE docs SET company = 'ACME', doc_no = 3 WHERE company = 'Beta';
				COMMIT`)},
			want:   docsWant([]string{"ACME|1|second", "ACME|2|first", "ACME|3|beta"}),
			verify: true,
		},
		{
			// More rows than one snapshot page (500): pages end inside a
			// company and must go on from (company, doc_no).
			name:    "more rows than a snapshot page",
			crmDDL:  docsDDL,
			erpDDL:  erpDocsDDL,
			mapping: docsMapping,
			before:  []stmt{onCRM(`INSERT INTO docs SELECT c, g, c || g FROM unnest(ARRAY['ACME', 'Beta, "Ltd"', 'Z']) c, generate_series(1, 400) g`)},
			changes: []stmt{onCRM(`UPDATE docs SET doc_no = doc_no + 1000 WHERE doc_no % 100 = 0`)},
			want: []want{wantERP(`SELECT count(*), count(DISTINCT co), sum(no), count(*) FILTER (WHERE note = co || (no % 1000)) FROM erp_docs`,
				"1200|3|252600|1200")},
			verify: true,
		},
		{
			// Born in the ERP, keyed there by its primary key and in the
			// CRM by a unique pair next to a surrogate key.
			name:   "ERP-owned key of two columns into a CRM with a surrogate key",
			erpDDL: `CREATE TABLE gl (co text NOT NULL, no int NOT NULL, amount numeric(12,2) NOT NULL, PRIMARY KEY (co, no))`,
			crmDDL: `CREATE TABLE gl (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), erp_co text NOT NULL, erp_no bigint NOT NULL, amount numeric(12,2) NOT NULL, UNIQUE (erp_co, erp_no))`,
			mapping: `
  - name: gl_entry
    key: [co, no]
    fields:
      - {name: co,     type: text,    owner: erp}
      - {name: no,     type: integer, owner: erp}
      - {name: amount, type: decimal, owner: erp}
    systems:
      erp: {table: public.gl, key_columns: [co, no], columns: {co: {column: co}, no: {column: no}, amount: {column: amount}}}
      crm: {table: public.gl, key_columns: [erp_co, erp_no], columns: {co: {column: erp_co}, no: {column: erp_no}, amount: {column: amount}}}
`,
			before: []stmt{onERP(`INSERT INTO gl VALUES ('EU01', 1, 10.00), ('EU01', 2, 20.00), ('US01', 1, 30.00)`)},
			changes: []stmt{
				onERP(`UPDATE gl SET amount = 11.00 WHERE co = 'EU01' AND no = 1`),
				onERP(`UPDATE gl SET co = 'US01', no = 2 WHERE co = 'EU01' AND no = 2`),
				onERP(`DELETE FROM gl WHERE co = 'US01' AND no = 1`),
				onERP(`INSERT INTO gl VALUES ('US01', 1, 40.00)`),
			},
			want:   []want{wantCRM(`SELECT erp_co, erp_no, amount FROM gl ORDER BY 1, 2`, "EU01|1|11.00", "US01|1|40.00", "US01|2|20.00")},
			verify: true,
		},
		{
			// A field both systems may write: its versions are kept by
			// the key's text (edits on both sides: see
			// TestSchemaCases_CompositeKeySharedField).
			name:    "shared field of a composite-key entity",
			crmDDL:  notesCRM,
			erpDDL:  notesERP,
			mapping: notesMapping,
			before:  []stmt{onCRM(`INSERT INTO notes VALUES ('A, B', 1, 'orig'), ('A, B', 2, 'orig')`)},
			changes: []stmt{
				onCRM(`UPDATE notes SET body = 'crm' WHERE co = 'A, B' AND no = 2`),
				onCRM(`INSERT INTO notes VALUES ('C', 1, 'new')`),
			},
			want: []want{
				wantCRM(`SELECT co, no, body FROM notes ORDER BY 1, 2`, "A, B|1|orig", "A, B|2|crm", "C|1|new"),
				wantERP(`SELECT co, no, body FROM erp_notes ORDER BY 1, 2`, "A, B|1|orig", "A, B|2|crm", "C|1|new"),
			},
			verify: true,
		},
		{
			name:    "composite key without a unique index on its columns is refused",
			crmDDL:  docsDDL,
			erpDDL:  `CREATE TABLE erp_docs (id bigserial PRIMARY KEY, co text NOT NULL, no bigint NOT NULL UNIQUE, note text); CREATE TABLE erp_doc_payments (payment_no int PRIMARY KEY, doc_id bigint, amount numeric(12,2))`,
			mapping: docsMapping,
			refusal: "erp table public.erp_docs (entity doc): key columns (co, no) have no unique index on exactly these columns",
		},
		{
			name:       "a value that does not fit is dead-lettered naming the composite key",
			crmDDL:     docsDDL,
			erpDDL:     strings.Replace(erpDocsDDL, "note text", "note varchar(3)", 1),
			mapping:    docsMapping,
			changes:    []stmt{onCRM(`INSERT INTO docs VALUES ('ACME, Inc', 5, 'too long'), ('ACME', 6, 'ok')`)},
			want:       docsWant([]string{"ACME|6|ok"}),
			deadLetter: `doc ("ACME, Inc",5)`,
		},
	})
}

// TestSchemaCases_CompositeKeyBackfill: `duplex backfill` of a table keyed
// by (company, doc_no), in chunks of 7 rows (chunks end inside a company),
// repairs an ERP whose copy was damaged behind duplex's back, while the
// CRM moves rows to other keys.
func TestSchemaCases_CompositeKeyBackfill(t *testing.T) {
	f := newFixture(t, fixtureOptions{mapping: "version: 1\nsystems: [crm, erp]\nentities:\n" + docsMapping})
	f.tweak = func(cfg *config.Config) {
		cfg.Flows = slices.DeleteFunc(cfg.Flows, func(fl *config.Flow) bool {
			return !slices.ContainsFunc(f.mapping.Entities, func(e *transform.Entity) bool { return e.Publishes(fl.From) })
		})
	}
	f.exec("crm", docsDDL)
	f.exec("erp", erpDocsDDL)
	f.exec("crm", `INSERT INTO docs SELECT c, g, 'n' || g FROM unnest(ARRAY['ACME', 'Beta', 'Gamma']) c, generate_series(1, 50) g`)
	f.inProcess()
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Fatalf("not converged before the backfill:\n%s", rep)
	}
	f.exec("erp", `UPDATE erp_docs SET note = 'stale' WHERE no % 3 = 0; DELETE FROM erp_docs WHERE no % 5 = 0`)
	if rep := f.compare(); rep.Equal() {
		t.Fatal("the damage did not show in the comparison")
	}
	f.exec("crm", `UPDATE docs SET doc_no = doc_no + 100 WHERE company = 'Beta' AND doc_no % 7 = 0`)
	t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	var stdout, stderr bytes.Buffer
	if code := cli.MainIO([]string{"backfill", "--config", f.cfgPath, "--flow", "to-erp", "--table", "docs", "--chunk", "7"}, &stdout, &stderr); code != 0 {
		t.Fatalf("duplex backfill exited %d:\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "done: 150 rows re-read") {
		t.Errorf("backfill output does not report 150 rows re-read:\n%s", stdout.String())
	}
	if rep := f.waitConverged(60 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs from the CRM after the backfill:\n%s", rep)
	}
}

// TestSchemaCases_CompositeKeyDeadLetterRetry: two documents the ERP
// refuses (a note longer than its column) are dead-lettered under their
// composite keys. A newer event of one of them arrives and is applied.
// After the fix, duplex dlq retry writes the other, and leaves the first
// to its newer event: the retry finds newer events by the whole key.
func TestSchemaCases_CompositeKeyDeadLetterRetry(t *testing.T) {
	f := newFixture(t, fixtureOptions{mapping: "version: 1\nsystems: [crm, erp]\nentities:\n" + docsMapping})
	f.tweak = func(cfg *config.Config) {
		cfg.Flows = slices.DeleteFunc(cfg.Flows, func(fl *config.Flow) bool {
			return !slices.ContainsFunc(f.mapping.Entities, func(e *transform.Entity) bool { return e.Publishes(fl.From) })
		})
	}
	f.exec("crm", docsDDL)
	f.exec("erp", strings.Replace(erpDocsDDL, "note text", "note varchar(3)", 1))
	f.inProcess()
	f.exec("crm", `INSERT INTO docs VALUES ('ACME, Inc', 5, 'too long')`)
	f.exec("crm", `INSERT INTO docs VALUES ('ACME, Inc', 6, 'longer')`)
	readDeadLetters(t, f.js(), 2)
	// A newer event of (ACME, Inc, 5), and one of the same doc_no in
	// another company: only the first supersedes the dead letter.
	f.exec("crm", `UPDATE docs SET note = 'new' WHERE company = 'ACME, Inc' AND doc_no = 5`)
	f.exec("crm", `INSERT INTO docs VALUES ('ACME', 6, 'ok')`)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM erp_docs`) == 2, "the newer events did not arrive"
	})
	code, out := f.duplexCLI("dlq", "list")
	if code != 0 || !strings.Contains(out, `("ACME, Inc",5)`) || !strings.Contains(out, `("ACME, Inc",6)`) {
		t.Fatalf("dlq list exited %d, want both keys:\n%s", code, out)
	}
	var seqs []string
	for _, line := range strings.Split(out, "\n") {
		if fields := strings.Fields(line); len(fields) > 0 && strings.Contains(line, `("ACME, Inc",`) {
			seqs = append(seqs, fields[0])
		}
	}
	f.exec("erp", `ALTER TABLE erp_docs ALTER note TYPE text`)
	code, out = f.duplexCLI(append([]string{"dlq", "retry"}, seqs...)...)
	if code != 0 {
		t.Fatalf("retry after the fix exited %d:\n%s", code, out)
	}
	rows, err := textRows(context.Background(), erp, `SELECT co, no, note FROM erp_docs ORDER BY co, no`)
	if want := []string{"ACME|6|ok", "ACME, Inc|5|new", "ACME, Inc|6|longer"}; err != nil || !slices.Equal(rows, want) {
		t.Errorf("ERP documents after the retry: %q (%v), want %q", rows, err, want)
	}
	if rep := f.waitConverged(30 * time.Second); !rep.Equal() {
		t.Errorf("ERP differs:\n%s", rep)
	}
}

// A note keyed by (co, no), its body written by both systems.
const (
	notesCRM = `CREATE TABLE notes (co text NOT NULL, no int NOT NULL, body text, PRIMARY KEY (co, no));
		ALTER TABLE notes REPLICA IDENTITY FULL`
	notesERP = `CREATE TABLE erp_notes (co text NOT NULL, no int NOT NULL, body text, PRIMARY KEY (no, co));
		ALTER TABLE erp_notes REPLICA IDENTITY FULL`
	notesMapping = `
  - name: note
    key: [co, no]
    fields:
      - {name: co,   type: text,    owner: crm}
      - {name: no,   type: integer, owner: crm}
      - {name: body, type: text,    owner: both}
    systems:
      crm: {table: public.notes, key_columns: [co, no], columns: {co: {column: co}, no: {column: no}, body: {column: body}}}
      erp: {table: public.erp_notes, key_columns: [co, no], columns: {co: {column: co}, no: {column: no}, body: {column: body}}}
`
)

// TestSchemaCases_CompositeKeySharedField: a field of a composite-key
// entity edited in both systems while duplex streams converges to the
// last write, row by row: the shared-field versions and the rows read to
// resolve them are found by every key column.
func TestSchemaCases_CompositeKeySharedField(t *testing.T) {
	f := newFixture(t, fixtureOptions{mapping: "version: 1\nsystems: [crm, erp]\nentities:\n" + notesMapping})
	f.exec("crm", notesCRM)
	f.exec("erp", notesERP)
	f.inProcess()
	f.exec("crm", `INSERT INTO notes VALUES ('A, B', 1, 'orig'), ('A, B', 2, 'orig'), ('A', 1, 'orig')`)
	ctx := context.Background()
	crm, erp := f.conn("crm"), f.conn("erp")
	both := func(rows ...string) {
		t.Helper()
		for _, c := range []struct {
			name string
			conn *pgx.Conn
			q    string
		}{{"crm", crm, `SELECT co, no, body FROM notes ORDER BY 1, 2`}, {"erp", erp, `SELECT co, no, body FROM erp_notes ORDER BY 1, 2`}} {
			waitFor(t, 30*time.Second, func() (bool, string) {
				got, err := textRows(ctx, c.conn, c.q)
				return err == nil && slices.Equal(got, rows), fmt.Sprintf("%s: %q (%v), want %q", c.name, got, err, rows)
			})
		}
	}
	both("A|1|orig", "A, B|1|orig", "A, B|2|orig")
	f.exec("erp", `UPDATE erp_notes SET body = 'erp' WHERE co = 'A, B' AND no = 1`)
	both("A|1|orig", "A, B|1|erp", "A, B|2|orig")
	f.exec("crm", `UPDATE notes SET body = 'crm' WHERE co = 'A, B' AND no = 2`)
	f.exec("erp", `UPDATE erp_notes SET body = 'erp 2' WHERE co = 'A' AND no = 1`)
	both("A|1|erp 2", "A, B|1|erp", "A, B|2|crm")
	f.exec("crm", `UPDATE notes SET body = 'crm again' WHERE co = 'A, B' AND no = 1`)
	both("A|1|erp 2", "A, B|1|crm again", "A, B|2|crm")
	if dls := deadLetterErrors(t, f); len(dls) > 0 {
		t.Errorf("dead letters: %q", dls)
	}
}
