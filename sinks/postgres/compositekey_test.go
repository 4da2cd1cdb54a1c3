package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// A document keyed by (company, doc_no), born in the erp, stored in the crm
// with a surrogate id and the erp's key as a unique pair; a payment refers
// to it by its company and doc_no fields.
const compositeMapping = `
version: 1
systems: [crm, erp]
entities:
  - name: doc
    key: [company, doc_no]
    fields:
      - {name: company, type: text,    owner: erp}
      - {name: doc_no,  type: integer, owner: erp}
      - {name: note,    type: text,    owner: erp}
    systems:
      erp:
        table: docs
        key_columns: [company, doc_no]
        columns: {company: {column: company}, doc_no: {column: doc_no}, note: {column: note}}
      crm:
        table: erp_docs
        key_columns: [erp_company, erp_doc_no]
        columns: {company: {column: erp_company}, doc_no: {column: erp_doc_no}, note: {column: note}}
  - name: payment
    key: payment_no
    fields:
      - {name: payment_no, type: integer, owner: erp}
      - {name: company,    type: text,    owner: erp}
      - {name: doc_no,     type: integer, owner: erp}
    systems:
      erp:
        table: payments
        key_column: payment_no
        columns: {payment_no: {column: payment_no}, company: {column: company}, doc_no: {column: doc_no}}
      crm:
        table: payments
        key_column: erp_payment_no
        columns:
          payment_no: {column: erp_payment_no}
          doc_no:     {column: doc_id, ref: {entity: doc, column: id, fields: [company, doc_no]}}
`

const compositeCRM = `
CREATE TABLE erp_docs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    erp_company text NOT NULL,
    erp_doc_no  bigint NOT NULL,
    note        text,
    UNIQUE (erp_doc_no, erp_company)
);
CREATE TABLE payments (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    erp_payment_no bigint UNIQUE NOT NULL,
    doc_id         uuid REFERENCES erp_docs
);`

func newCompositeTarget(t *testing.T) (*postgres.Sink, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	db := "crm_" + uuid.NewString()[:8]
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropOrigin(t, "duplex_"+db) })
	if err := cluster.Exec(ctx, db, compositeCRM); err != nil {
		t.Fatal(err)
	}
	m, err := transform.Parse([]byte(compositeMapping))
	if err != nil {
		t.Fatal(err)
	}
	s, err := postgres.New(postgres.Config{Flow: "to-crm", Source: "erp", System: "crm", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: m})
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

func erpTx(lsn capture.LSN, events ...transform.Event) *transform.Tx {
	t := &transform.Tx{Version: 1, Source: "erp", CommitLSN: lsn, EndLSN: lsn + 1, CommitTime: time.Now().UTC(), Xid: uint32(lsn), Last: true}
	for i, e := range events {
		e.Version, e.Source = 1, "erp"
		e.Pos = transform.Position{LSN: lsn, CommitTime: t.CommitTime, Index: i}
		e.ID = transform.EventID("erp", lsn, i)
		t.Events = append(t.Events, e)
	}
	return t
}

func doc(company, no, note string) transform.Event {
	return transform.Event{Entity: "doc", Op: transform.OpUpsert, Key: capture.JoinKey([]string{company, no}),
		Data: map[string]any{"company": company, "doc_no": no, "note": note}}
}

func docDelete(company, no string) transform.Event {
	return transform.Event{Entity: "doc", Op: transform.OpDelete, Key: capture.JoinKey([]string{company, no})}
}

func payment(no, company, docNo string) transform.Event {
	return transform.Event{Entity: "payment", Op: transform.OpUpsert, Key: no,
		Data: map[string]any{"payment_no": no, "company": company, "doc_no": docNo}}
}

// docs lists the crm's documents as "company|doc_no=note", sorted.
func docs(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(),
		`SELECT coalesce(string_agg(erp_company || '|' || erp_doc_no || '=' || coalesce(note, 'NULL'), ' ' ORDER BY erp_company, erp_doc_no), '') FROM erp_docs`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSink_CompositeKey(t *testing.T) {
	s, conn := newCompositeTarget(t)
	// Two documents sharing a company, one of a company whose name needs
	// quoting in the key's text, and the same doc_no in another company.
	mustApply(t, s, erpTx(0x100, doc("ACME", "1", "a1"), doc("ACME", "2", "a2"), doc(`Beta, "Ltd"`, "1", "b1")))
	if got, want := docs(t, conn), `ACME|1=a1 ACME|2=a2 Beta, "Ltd"|1=b1`; got != want {
		t.Fatalf("after inserts: %s, want %s", got, want)
	}
	var id string
	if err := conn.QueryRow(context.Background(), `SELECT id::text FROM erp_docs WHERE erp_company = 'ACME' AND erp_doc_no = 2`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		tx   *transform.Tx
		want string
	}{
		{"update of a non-key field", erpTx(0x200, doc("ACME", "2", "a2'")), `ACME|1=a1 ACME|2=a2' Beta, "Ltd"|1=b1`},
		// An update of one key part arrives as the old key's delete and
		// the new key's upsert.
		{"update of the second key part", erpTx(0x300, docDelete("ACME", "1"), doc("ACME", "3", "a1")), `ACME|2=a2' ACME|3=a1 Beta, "Ltd"|1=b1`},
		{"update of the first key part", erpTx(0x400, docDelete(`Beta, "Ltd"`, "1"), doc("Gamma", "1", "b1")), `ACME|2=a2' ACME|3=a1 Gamma|1=b1`},
		{"key parts swapped between two rows in one transaction",
			erpTx(0x500, docDelete("ACME", "2"), doc("ACME", "9", "tmp"), docDelete("ACME", "3"), doc("ACME", "2", "a1"), docDelete("ACME", "9"), doc("ACME", "3", "a2'")),
			`ACME|2=a1 ACME|3=a2' Gamma|1=b1`},
		{"delete", erpTx(0x600, docDelete("Gamma", "1")), `ACME|2=a1 ACME|3=a2'`},
	}
	for _, st := range steps {
		mustApply(t, s, st.tx)
		if got := docs(t, conn); got != st.want {
			t.Fatalf("%s: %s, want %s", st.name, got, st.want)
		}
	}
	// Applying everything again changes nothing.
	mustApply(t, s, erpTx(0x200, doc("ACME", "2", "stale")))
	if got := docs(t, conn); got != `ACME|2=a1 ACME|3=a2'` {
		t.Fatalf("after a redelivery: %s", got)
	}
}

func TestSink_ReferenceToCompositeKey(t *testing.T) {
	ctx := context.Background()
	s, conn := newCompositeTarget(t)
	// The payment comes first in the batch: the document is written first.
	mustApply(t, s, erpTx(0x100, payment("7", "ACME", "2"), doc("ACME", "1", "x"), doc("ACME", "2", "y"), doc("Beta", "2", "z")))
	var note string
	if err := conn.QueryRow(ctx, `SELECT d.note FROM payments p JOIN erp_docs d ON d.id = p.doc_id WHERE p.erp_payment_no = 7`).Scan(&note); err != nil {
		t.Fatal(err)
	}
	if note != "y" {
		t.Errorf("payment 7 refers to the document with note %q, want y (ACME, 2)", note)
	}
	// A reference to a document that has not arrived waits, naming it.
	_, err := s.Apply(ctx, []*transform.Tx{erpTx(0x200, payment("8", "Beta", "1"))})
	if ae := applyError(t, err, pipeline.Waiting); ae != nil && !strings.Contains(err.Error(), "referenced doc with [company, doc_no] (Beta,1) has not arrived in crm yet") {
		t.Errorf("error %v, want the missing reference named", err)
	}
}
