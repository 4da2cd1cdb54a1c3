package transform_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// compositeMapping has an entity keyed by (company, doc_no), owned by the
// erp, stored with natural columns in both systems, and a payment that
// refers to it: by its own company and doc_no fields, resolved in the crm
// to the document's surrogate id.
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
        columns:
          company: {column: company}
          doc_no:  {column: doc_no}
          note:    {column: note}
      crm:
        table: erp_docs
        key_columns: [erp_company, erp_doc_no]
        columns:
          company: {column: erp_company}
          doc_no:  {column: erp_doc_no}
          note:    {column: note}
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
        columns:
          payment_no: {column: payment_no}
          company:    {column: company}
          doc_no:     {column: doc_no}
      crm:
        table: payments
        key_column: erp_payment_no
        columns:
          payment_no: {column: erp_payment_no}
          doc_no:     {column: doc_id, ref: {entity: doc, column: id, fields: [company, doc_no]}}
`

func compositeCatalogs() (erp, crm *transform.Catalog) {
	docs := table("company", nil, col("company", "text", "notnull"), col("doc_no", "bigint", "notnull"), col("note", "text"))
	docs.UniqueColumns = map[string]bool{}
	docs.UniqueKeys = [][]string{{"company", "doc_no"}}
	docs.IdentityColumns = []string{"company", "doc_no"}
	erp = &transform.Catalog{Tables: map[string]*transform.TableInfo{
		"public.docs":     docs,
		"public.payments": table("payment_no", nil, col("payment_no", "bigint", "notnull"), col("company", "text"), col("doc_no", "bigint")),
	}}
	erpDocs := table("id", nil, col("id", "uuid", "notnull", "default"), col("erp_company", "text", "notnull"), col("erp_doc_no", "bigint", "notnull"), col("note", "text"))
	erpDocs.UniqueKeys = [][]string{{"id"}, {"erp_company", "erp_doc_no"}}
	crm = &transform.Catalog{Tables: map[string]*transform.TableInfo{
		"public.erp_docs": erpDocs,
		"public.payments": table("id", []string{"erp_payment_no"}, col("id", "uuid", "notnull", "default"), col("erp_payment_no", "bigint", "notnull"), col("doc_id", "uuid")),
	}}
	return erp, crm
}

func boundComposite(t *testing.T) *transform.Mapping {
	t.Helper()
	m := must(transform.Parse([]byte(compositeMapping)))
	erp, crm := compositeCatalogs()
	if err := m.Check("erp", erp, "both"); err != nil {
		t.Fatalf("Check(erp): %v", err)
	}
	if err := m.Check("crm", crm, "both"); err != nil {
		t.Fatalf("Check(crm): %v", err)
	}
	return m
}

func TestParse_compositeKey(t *testing.T) {
	m := must(transform.Parse([]byte(compositeMapping)))
	doc := m.Entity("doc")
	if !slices.Equal(doc.KeyFields(), []string{"company", "doc_no"}) || doc.KeyOwner() != "erp" || !doc.IsKey("doc_no") || doc.IsKey("note") {
		t.Errorf("doc key = %v owner %s", doc.KeyFields(), doc.KeyOwner())
	}
	if got := doc.Tables["crm"].KeyColumns(); !slices.Equal(got, []string{"erp_company", "erp_doc_no"}) {
		t.Errorf("crm KeyColumns = %v", got)
	}
	if got := m.Entity("payment").Tables["erp"].KeyColumns(); !slices.Equal(got, []string{"payment_no"}) {
		t.Errorf("key_column gives KeyColumns %v, want [payment_no]", got)
	}
	if got := doc.Tables["erp"].MappedColumns(); !slices.Equal(got, []string{"company", "doc_no", "note"}) {
		t.Errorf("MappedColumns = %v", got)
	}

	tests := []struct {
		name    string
		from    string
		to      string
		wantErr string
	}{
		{name: "key_column for two key fields", from: "key_columns: [company, doc_no]", to: "key_column: company",
			wantErr: "entity doc, system erp: key_column company names one column, but key [company, doc_no] has 2 fields; use key_columns: [...]"},
		{name: "key_columns too short", from: "key_columns: [company, doc_no]", to: "key_columns: [company]",
			wantErr: "entity doc, system erp: key_columns company has 1 columns, but key [company, doc_no] has 2 fields"},
		{name: "key_columns out of order", from: "key_columns: [company, doc_no]", to: "key_columns: [doc_no, company]",
			wantErr: "entity doc, system erp: key field company maps to column company, but key_columns names doc_no in its place"},
		{name: "both key_column and key_columns", from: "key_columns: [company, doc_no]", to: "key_columns: [company, doc_no]\n        key_column: company",
			wantErr: "entity doc, system erp: both key_column and key_columns"},
		{name: "key field twice", from: "key: [company, doc_no]", to: "key: [company, company]",
			wantErr: "entity doc: key [company, company] names field company twice"},
		{name: "key fields of two owners", from: "{name: doc_no,  type: integer, owner: erp}", to: "{name: doc_no,  type: integer, owner: crm}",
			wantErr: "entity doc: key fields [company, doc_no] have different owners (company: erp, doc_no: crm)"},
		{name: "key part not a field", from: "key: [company, doc_no]", to: "key: [company, number]",
			wantErr: `entity doc: key "number" is not one of its fields`},
		{name: "reference by one field to a key of two", from: "fields: [company, doc_no]", to: "fields: [doc_no]",
			wantErr: "entity payment: crm column for doc_no refers to doc by 1 field(s) doc_no, but doc is matched on 2: [company, doc_no]"},
		{name: "reference mapped for a field not among its fields", from: "fields: [company, doc_no]", to: "fields: [company, payment_no]",
			wantErr: "entity payment: crm column for doc_no: ref fields [company, payment_no] do not include doc_no, the field it is mapped for"},
		{name: "reference by a field the entity lacks", from: "fields: [company, doc_no]", to: "fields: [firm, doc_no]",
			wantErr: "entity payment: crm column for doc_no: reference field firm is not a field of payment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(compositeMapping, tt.from) {
				t.Fatalf("%q is not in the mapping", tt.from)
			}
			_, err := transform.Parse([]byte(strings.Replace(compositeMapping, tt.from, tt.to, 1)))
			checkContainsAll(t, err, []string{tt.wantErr})
		})
	}
}

func TestMapping_Check_compositeKey(t *testing.T) {
	tests := []struct {
		name    string
		system  string
		change  func(erp, crm *transform.Catalog)
		wantErr string
	}{
		{name: "no unique index on the key columns", system: "erp",
			change:  func(erp, _ *transform.Catalog) { erp.Tables["public.docs"].UniqueKeys = nil },
			wantErr: "erp table public.docs (entity doc): key columns (company, doc_no) have no unique index on exactly these columns (create one: CREATE UNIQUE INDEX ON public.docs (company, doc_no))"},
		{name: "a unique index of more columns is not the key's", system: "erp",
			change: func(erp, _ *transform.Catalog) {
				erp.Tables["public.docs"].UniqueKeys = [][]string{{"company", "doc_no", "note"}}
			},
			wantErr: "key columns (company, doc_no) have no unique index on exactly these columns"},
		{name: "unique index on each column alone is not the key's", system: "erp",
			change: func(erp, _ *transform.Catalog) {
				erp.Tables["public.docs"].UniqueKeys = [][]string{{"company"}, {"doc_no"}}
				erp.Tables["public.docs"].UniqueColumns = map[string]bool{"company": true, "doc_no": true}
			},
			wantErr: "key columns (company, doc_no) have no unique index on exactly these columns"},
		{name: "deletes send one key column", system: "erp",
			change:  func(erp, _ *transform.Catalog) { erp.Tables["public.docs"].IdentityColumns = []string{"company"} },
			wantErr: "erp table public.docs (entity doc): deletes send only [company], not all of key columns (company, doc_no)"},
		{name: "key column that can be NULL", system: "crm",
			change:  func(_, crm *transform.Catalog) { crm.Tables["public.erp_docs"].Columns["erp_doc_no"].NotNull = false },
			wantErr: "crm table public.erp_docs (entity doc): key column erp_doc_no can be NULL; every column of a composite key must be NOT NULL"},
		{name: "key column missing", system: "crm",
			change:  func(_, crm *transform.Catalog) { delete(crm.Tables["public.erp_docs"].Columns, "erp_doc_no") },
			wantErr: "crm table public.erp_docs (entity doc): key column erp_doc_no does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := must(transform.Parse([]byte(compositeMapping)))
			erp, crm := compositeCatalogs()
			tt.change(erp, crm)
			cat := map[string]*transform.Catalog{"erp": erp, "crm": crm}[tt.system]
			checkContainsAll(t, m.Check(tt.system, cat, "both"), []string{tt.wantErr})
		})
	}
}

var compositeTx = &capture.TxInfo{CommitLSN: 0x10, Xid: 7}

func TestMapping_Normalize_compositeKey(t *testing.T) {
	m := boundComposite(t)
	row := func(company string, no int64, note string) capture.Row {
		return capture.Row{"company": company, "doc_no": no, "note": note}
	}
	tests := []struct {
		name     string
		change   capture.Change
		wantOps  []transform.Op
		wantKeys []string
	}{
		{name: "insert", change: capture.Change{Schema: "public", Table: "docs", Op: capture.Insert, New: row("ACME, Inc", 1001, "a")},
			wantOps: []transform.Op{transform.OpUpsert}, wantKeys: []string{`("ACME, Inc",1001)`}},
		{name: "update of a non-key field (no old key sent)", change: capture.Change{Schema: "public", Table: "docs", Op: capture.Update, New: row("ACME", 1001, "b")},
			wantOps: []transform.Op{transform.OpUpsert}, wantKeys: []string{"(ACME,1001)"}},
		{name: "update of the second key part moves the row", change: capture.Change{Schema: "public", Table: "docs", Op: capture.Update,
			Old: capture.Row{"company": "ACME", "doc_no": int64(1001), "note": nil}, New: row("ACME", 1002, "b")},
			wantOps: []transform.Op{transform.OpDelete, transform.OpUpsert}, wantKeys: []string{"(ACME,1001)", "(ACME,1002)"}},
		{name: "update of the first key part moves the row", change: capture.Change{Schema: "public", Table: "docs", Op: capture.Update,
			Old: capture.Row{"company": "ACME", "doc_no": int64(1001), "note": nil}, New: row("Beta", 1001, "b")},
			wantOps: []transform.Op{transform.OpDelete, transform.OpUpsert}, wantKeys: []string{"(ACME,1001)", "(Beta,1001)"}},
		{name: "delete keyed by both parts", change: capture.Change{Schema: "public", Table: "docs", Op: capture.Delete,
			Old: capture.Row{"company": "ACME", "doc_no": int64(1001), "note": nil}},
			wantOps: []transform.Op{transform.OpDelete}, wantKeys: []string{"(ACME,1001)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := m.Normalize("erp", compositeTx, 0, &tt.change)
			if err != nil {
				t.Fatal(err)
			}
			var ops []transform.Op
			var keys []string
			for _, ev := range evs {
				ops, keys = append(ops, ev.Op), append(keys, ev.Key)
			}
			if !slices.Equal(ops, tt.wantOps) || !slices.Equal(keys, tt.wantKeys) {
				t.Errorf("events %v %q, want %v %q", ops, keys, tt.wantOps, tt.wantKeys)
			}
		})
	}
	// A delete whose old row lacks a key part cannot be keyed.
	_, err := m.Normalize("erp", compositeTx, 0, &capture.Change{Schema: "public", Table: "docs", Op: capture.Delete, Old: capture.Row{"company": "ACME"}})
	checkContainsAll(t, err, []string{"erp delete on public.docs carries no value for key column doc_no (check REPLICA IDENTITY)"})
}

func TestMapping_Denormalize_compositeKey(t *testing.T) {
	m := boundComposite(t)
	evs, err := m.Normalize("erp", compositeTx, 0, &capture.Change{Schema: "public", Table: "docs", Op: capture.Insert,
		New: capture.Row{"company": "ACME, Inc", "doc_no": int64(1001), "note": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	// The event's key travels as the row's text form and decodes as sent.
	b, err := json.Marshal(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"key":"(\"ACME, Inc\",1001)"`) {
		t.Errorf("event JSON %s, want the key as a row's text", b)
	}
	var ev transform.Event
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	row, err := m.Denormalize(&ev, "crm")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(row.KeyParts, []string{"ACME, Inc", "1001"}) || row.Key != `("ACME, Inc",1001)` {
		t.Errorf("row key %q parts %q", row.Key, row.KeyParts)
	}
	if got := values(row); got["erp_company"] != "ACME, Inc" || got["erp_doc_no"] != "1001" || got["note"] != "x" {
		t.Errorf("values %v", got)
	}
	// A key of the wrong shape is refused with the event.
	ev.Key = "ACME"
	if _, err := m.Denormalize(&ev, "crm"); err == nil || !strings.Contains(err.Error(), `key "ACME" is not a key of 2 parts`) {
		t.Errorf("Denormalize of a one-part key = %v", err)
	}
}

func TestMapping_Denormalize_referenceOfSeveralFields(t *testing.T) {
	m := boundComposite(t)
	norm := func(r capture.Row) *transform.Event {
		t.Helper()
		evs, err := m.Normalize("erp", compositeTx, 0, &capture.Change{Schema: "public", Table: "payments", Op: capture.Insert, New: r})
		if err != nil || len(evs) != 1 {
			t.Fatalf("Normalize: %v %v", evs, err)
		}
		return &evs[0]
	}
	row, err := m.Denormalize(norm(capture.Row{"payment_no": int64(5), "company": "ACME", "doc_no": int64(1001)}), "crm")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(row.Values, func(v transform.ColValue) bool { return v.Column == "doc_id" })
	if i < 0 || row.Values[i].Ref == nil || row.Values[i].Text != "(ACME,1001)" || row.Values[i].Null {
		t.Fatalf("doc_id = %+v, want a reference to (ACME,1001)", row.Values)
	}
	// A NULL part: no reference.
	row, err = m.Denormalize(norm(capture.Row{"payment_no": int64(5), "company": "ACME", "doc_no": nil}), "crm")
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(row.Values, func(v transform.ColValue) bool { return v.Column == "doc_id" }); i < 0 || !row.Values[i].Null {
		t.Errorf("doc_id with a NULL part = %+v, want NULL", row.Values)
	}
	// Half a key: refused, naming the missing field.
	ev := norm(capture.Row{"payment_no": int64(5), "company": "ACME", "doc_no": int64(1001)})
	delete(ev.Data, "company")
	_, err = m.Denormalize(ev, "crm")
	checkContainsAll(t, err, []string{"the reference to doc is made of fields [company, doc_no], and the event lacks company"})
}

func TestMapping_CanonicalRow_compositeKey(t *testing.T) {
	m := boundComposite(t)
	key, data, err := m.CanonicalRow("crm", m.Entity("doc"), capture.Row{"erp_company": "ACME", "erp_doc_no": int64(7), "note": "n"}, nil)
	if err != nil || key != "(ACME,7)" || data["note"] != "n" {
		t.Errorf("CanonicalRow = %q %v %v", key, data, err)
	}
}
