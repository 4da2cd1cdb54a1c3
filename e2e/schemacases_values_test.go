package e2e

import (
	"strconv"
	"testing"
)

// skipHiddenDocs is an ERP trigger that drops the insert of a row whose status
// is 'hidden': the target then lacks a row the source has, as when its
// insert was dead-lettered or the target was restored from an older
// backup. ENABLE ALWAYS: it fires under any session_replication_role.
const skipHiddenDocs = `
CREATE FUNCTION skip_hidden() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'hidden' THEN RETURN NULL; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER skip_hidden BEFORE INSERT ON docs FOR EACH ROW EXECUTE FUNCTION skip_hidden();
ALTER TABLE docs ENABLE ALWAYS TRIGGER skip_hidden;`

// toastDocsMapping copies docs(id, status, body) from the CRM to the ERP.
const toastDocsMapping = `
  - name: doc
    key: id
    fields:
      - {name: id,     type: integer, owner: crm}
      - {name: status, type: text,    owner: crm}
      - {name: body,   type: text,    owner: crm}
    systems:
      crm: {table: public.docs, key_column: id, columns: {id: {column: id}, status: {column: status}, body: {column: body}}}
      erp: {table: public.docs, key_column: id, columns: {id: {column: id}, status: {column: status}, body: {column: body}}}
`

// regionMapping copies accts(id, note) from the CRM to an ERP table that
// also has a NOT NULL region the mapping does not carry; erpExtra is added
// under the ERP table (a default: block).
func regionMapping(erpExtra string) string {
	return `
  - name: acct
    key: id
    fields:
      - {name: id,   type: integer, owner: crm}
      - {name: note, type: text,    owner: crm}
    systems:
      crm: {table: public.accts, key_column: id, columns: {id: {column: id}, note: {column: note}}}
      erp:
        table: public.accts
        key_column: id
        columns: {id: {column: id}, note: {column: note}}
` + erpExtra
}

// TestSchemaCases_Values: values that must arrive whole (issue 11, cases 1,
// 8 and 9): unchanged TOASTed values of rows the target lacks, target NOT
// NULL columns the mapping does not carry, dates and timestamps outside
// Go's years 1 to 9999.
func TestSchemaCases_Values(t *testing.T) {
	big := `repeat(md5('x'), 400)` // 12,800 bytes, stored out of line
	// body may be NULL in the ERP, as in the issue: a row created without
	// the unchanged value would hold NULL there, silently.
	docs := `CREATE TABLE docs (id int PRIMARY KEY, status text NOT NULL, body text);
		ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;`
	wantDocs := wantERP(`SELECT id, status, length(body), md5(body) FROM docs ORDER BY id`,
		"1|shown|12800|"+md5Of400, "2|shown|12800|"+md5Of400)
	runSchemaCases(t, []schemaCase{
		{
			// The update of status leaves body unchanged (not sent); the
			// ERP lacks the row, so it is created from the update, with
			// the body the capture read back from the CRM by key.
			name:    "unchanged TOAST value, target lacks the row",
			crmDDL:  docs,
			erpDDL:  docs + skipHiddenDocs,
			mapping: toastDocsMapping,
			before:  []stmt{onCRM(`INSERT INTO docs SELECT i, 'hidden', ` + big + ` FROM generate_series(1, 2) i`)},
			changes: []stmt{onCRM(`UPDATE docs SET status = 'shown'`)},
			want:    []want{wantDocs},
			verify:  true,
		},
		{
			// The same with REPLICA IDENTITY FULL: the value comes from
			// the old row.
			name:    "unchanged TOAST value, target lacks the row, REPLICA IDENTITY FULL",
			crmDDL:  docs + `ALTER TABLE docs REPLICA IDENTITY FULL;`,
			erpDDL:  docs + skipHiddenDocs,
			mapping: toastDocsMapping,
			before:  []stmt{onCRM(`INSERT INTO docs SELECT i, 'hidden', ` + big + ` FROM generate_series(1, 2) i`)},
			changes: []stmt{onCRM(`UPDATE docs SET status = 'shown'`)},
			want:    []want{wantDocs},
			verify:  true,
		},
		{
			// Insert and update while streaming, often folded into one
			// batch by the sink; the insert alone never reaches the ERP.
			name:    "unchanged TOAST value, insert skipped by the target and update together",
			crmDDL:  docs,
			erpDDL:  docs + skipHiddenDocs,
			mapping: toastDocsMapping,
			changes: []stmt{
				onCRM(`INSERT INTO docs SELECT i, 'hidden', ` + big + ` FROM generate_series(1, 2) i`),
				onCRM(`UPDATE docs SET status = 'shown' WHERE id = 1`),
				onCRM(`UPDATE docs SET status = 'shown' WHERE id = 2`),
			},
			want:   []want{wantDocs},
			verify: true,
		},
		{
			// region: NOT NULL, its DEFAULT added then dropped, not
			// mapped. check warns (it does not refuse); the existing row
			// is updated; the new row cannot be inserted: a dead letter
			// with the reason.
			name:    "target NOT NULL column not carried: updates applied, inserts dead-lettered",
			crmDDL:  `CREATE TABLE accts (id int PRIMARY KEY, note text)`,
			erpDDL:  `CREATE TABLE accts (id int PRIMARY KEY, note text); ALTER TABLE accts ADD region text NOT NULL DEFAULT 'EU'; ALTER TABLE accts ALTER region DROP DEFAULT`,
			mapping: regionMapping(""),
			before: []stmt{
				onCRM(`INSERT INTO accts VALUES (1, 'a')`),
				onERP(`INSERT INTO accts VALUES (1, 'old', 'EU')`),
			},
			changes: []stmt{
				onCRM(`UPDATE accts SET note = 'b' WHERE id = 1`),
				onCRM(`INSERT INTO accts VALUES (2, 'new')`),
			},
			want:       []want{wantERP(`SELECT id, note, region FROM accts ORDER BY id`, "1|b|EU")},
			deadLetter: "entity acct key 2: no row in public.accts to update, and the event lacks [region] to create one",
		},
		{
			// The mapping gives region a value for inserts: an SQL
			// expression evaluated in the ERP, and a constant.
			name:   "target NOT NULL columns given by default: in the mapping",
			crmDDL: `CREATE TABLE accts (id int PRIMARY KEY, note text)`,
			erpDDL: `CREATE TABLE accts (id int PRIMARY KEY, note text, region text NOT NULL, made_by text NOT NULL);
				CREATE FUNCTION home_region() RETURNS text LANGUAGE sql AS $$ SELECT 'EU' $$`,
			mapping: regionMapping("        default: {region: {sql: public.home_region()}, made_by: duplex}\n"),
			before: []stmt{
				onCRM(`INSERT INTO accts VALUES (1, 'a')`),
				onERP(`INSERT INTO accts VALUES (1, 'old', 'US', 'erp')`),
			},
			changes: []stmt{
				onCRM(`UPDATE accts SET note = 'b' WHERE id = 1`),
				onCRM(`INSERT INTO accts VALUES (2, 'new')`),
			},
			want: []want{wantERP(`SELECT id, note, region, made_by FROM accts ORDER BY id`, "1|b|US|erp", "2|new|EU|duplex")},
		},
		{
			// Every date and timestamp PostgreSQL stores arrives equal as
			// text, through canonical date/timestamp fields and native
			// ones.
			name:    "dates and timestamps before year 1, after 9999, infinite",
			crmDDL:  datesDDL,
			erpDDL:  datesDDL,
			mapping: datesMapping,
			before:  []stmt{onCRM(datesRows(1))},
			changes: []stmt{onCRM(datesRows(101)), onCRM(`UPDATE dates SET d = '4713-01-01 BC', nd = '5874897-12-31' WHERE id = 1`)},
			want: []want{wantERP(`SELECT id, d, ts, tz AT TIME ZONE 'UTC', nd, nts, ntz AT TIME ZONE 'UTC' FROM dates ORDER BY id`,
				"1|4713-01-01 BC|4713-01-01 00:00:00 BC|4713-01-01 00:00:00 BC|5874897-12-31|4713-01-01 00:00:00 BC|4713-01-01 00:00:00 BC",
				"2|0001-01-01 BC|0001-01-01 00:00:00 BC|0001-12-31 23:59:59.999999 BC|0001-01-01 BC|0001-01-01 00:00:00 BC|0001-12-31 23:59:59.999999 BC",
				"3|5874897-12-31|294276-12-31 23:59:59.999999|294276-12-31 23:59:59.999999|5874897-12-31|294276-12-31 23:59:59.999999|294276-12-31 23:59:59.999999",
				"4|infinity|infinity|infinity|infinity|infinity|infinity",
				"5|-infinity|-infinity|-infinity|-infinity|-infinity|-infinity",
				"6|2024-02-29|2024-02-29 12:00:00.5|2024-02-29 12:00:00.5|2024-02-29|2024-02-29 12:00:00.5|2024-02-29 12:00:00.5",
				"101|4713-01-01 BC|4713-01-01 00:00:00 BC|4713-01-01 00:00:00 BC|4713-01-01 BC|4713-01-01 00:00:00 BC|4713-01-01 00:00:00 BC",
				"102|0001-01-01 BC|0001-01-01 00:00:00 BC|0001-12-31 23:59:59.999999 BC|0001-01-01 BC|0001-01-01 00:00:00 BC|0001-12-31 23:59:59.999999 BC",
				"103|5874897-12-31|294276-12-31 23:59:59.999999|294276-12-31 23:59:59.999999|5874897-12-31|294276-12-31 23:59:59.999999|294276-12-31 23:59:59.999999",
				"104|infinity|infinity|infinity|infinity|infinity|infinity",
				"105|-infinity|-infinity|-infinity|-infinity|-infinity|-infinity",
				"106|2024-02-29|2024-02-29 12:00:00.5|2024-02-29 12:00:00.5|2024-02-29|2024-02-29 12:00:00.5|2024-02-29 12:00:00.5",
			)},
			verify: true,
		},
	})
}

// md5Of400 is md5(repeat(md5('x'), 400)).
const md5Of400 = "c35cf396f716490c7fb7db582478ee5e"

const datesDDL = `CREATE TABLE dates (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, nd date, nts timestamp, ntz timestamptz)`

const datesMapping = `
  - name: dated
    key: id
    fields:
      - {name: id,  type: integer,   owner: crm}
      - {name: d,   type: date,      owner: crm}
      - {name: ts,  type: timestamp, owner: crm}
      - {name: tz,  type: timestamp, owner: crm}
      - {name: nd,  type: native,    owner: crm}
      - {name: nts, type: native,    owner: crm}
      - {name: ntz, type: native,    owner: crm}
    systems:
      crm:
        table: public.dates
        key_column: id
        columns: {id: {column: id}, d: {column: d}, ts: {column: ts}, tz: {column: tz}, nd: {column: nd}, nts: {column: nts}, ntz: {column: ntz}}
      erp:
        table: public.dates
        key_column: id
        columns: {id: {column: id}, d: {column: d}, ts: {column: ts}, tz: {column: tz}, nd: {column: nd}, nts: {column: nts}, ntz: {column: ntz}}
`

// datesRows inserts the edge values with ids from base: 4713 BC (the
// first day PostgreSQL has), 1 BC, the last timestamp and date, the
// infinities, and an ordinary leap day. The timestamptz values are given
// in a zone that is not UTC (the session's zone must not matter).
func datesRows(base int) string {
	ids := func(i int) string { return strconv.Itoa(base + i) }
	return `SET TimeZone = 'Europe/Berlin'; INSERT INTO dates VALUES
		(` + ids(0) + `, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC'),
		(` + ids(1) + `, '0001-01-01 BC', '0001-01-01 00:00:00 BC', '0001-12-31 23:59:59.999999+00 BC', '0001-01-01 BC', '0001-01-01 00:00:00 BC', '0001-12-31 23:59:59.999999+00 BC'),
		(` + ids(2) + `, '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00'),
		(` + ids(3) + `, 'infinity', 'infinity', 'infinity', 'infinity', 'infinity', 'infinity'),
		(` + ids(4) + `, '-infinity', '-infinity', '-infinity', '-infinity', '-infinity', '-infinity'),
		(` + ids(5) + `, '2024-02-29', '2024-02-29 12:00:00.5', '2024-02-29 13:00:00.5+01', '2024-02-29', '2024-02-29 12:00:00.5', '2024-02-29 14:00:00.5+02')`
}
