package e2e

import (
	"testing"
)

// Neighbours of the schema suite's cases (issue 11): what a new user with
// a real CRM or ERP schema tries next to each case, combining two of them
// or going one step further.
func TestSchemaCases_Neighbours(t *testing.T) {
	big := `repeat(md5('x'), 400)` // 12,800 bytes, stored out of line
	runSchemaCases(t, []schemaCase{
		{
			// Cases 2 and 4: a composite key whose columns have quoted
			// names (another pair in the ERP, in the other order), text
			// parts with a comma, quotes, parentheses, a backslash, the
			// word NULL and the empty string.
			name:   "composite key with quoted columns and awkward text parts",
			crmDDL: `CREATE TABLE lines ("Order No" text NOT NULL, "line" int NOT NULL, qty numeric(12,3), PRIMARY KEY ("Order No", "line"))`,
			erpDDL: `CREATE TABLE lines ("Order ""No""" text NOT NULL, "Line No" int NOT NULL, qty numeric(12,3), PRIMARY KEY ("Line No", "Order ""No"""))`,
			mapping: `
  - name: line
    key: [order_no, line_no]
    fields:
      - {name: order_no, type: text,    owner: crm}
      - {name: line_no,  type: integer, owner: crm}
      - {name: qty,      type: decimal, owner: crm}
    systems:
      crm: {table: public.lines, key_columns: [Order No, line], columns: {order_no: {column: Order No}, line_no: {column: line}, qty: {column: qty}}}
      erp: {table: public.lines, key_columns: ['Order "No"', Line No], columns: {order_no: {column: 'Order "No"'}, line_no: {column: Line No}, qty: {column: qty}}}
`,
			before: []stmt{onCRM(`INSERT INTO lines VALUES ('A, "1"', 1, 1.5), ('A, "1"', 2, 2), ('B''s', 1, 3), ('NULL', 1, 4)`)},
			changes: []stmt{
				onCRM(`INSERT INTO lines VALUES ('', 1, 5), (E'x\\y)(', 1, 6)`),
				onCRM(`UPDATE lines SET qty = 1.625 WHERE "Order No" = 'A, "1"' AND line = 1`),
				onCRM(`UPDATE lines SET "Order No" = 'C,"2"' WHERE "Order No" = 'A, "1"' AND line = 2`),
				onCRM(`DELETE FROM lines WHERE "Order No" = 'B''s'`),
				onCRM(`UPDATE lines SET qty = 4.5 WHERE "Order No" = 'NULL'`),
			},
			want: []want{wantERP(`SELECT "Order ""No""", "Line No", qty FROM lines ORDER BY 1, 2`,
				`|1|5.000`, `A, "1"|1|1.625`, `C,"2"|2|2.000`, `NULL|1|4.500`, `x\y)(|1|6.000`)},
			verify: true,
		},
		{
			// Cases 3 and 4: both tables partitioned by created, keyed by
			// (id, created); an update of created and status together
			// moves the row to another partition in each.
			name: "partitioned both sides, composite key, partition key updated with another field",
			crmDDL: `CREATE TABLE ev (id int NOT NULL, created date NOT NULL, status text, PRIMARY KEY (id, created)) PARTITION BY RANGE (created);
				CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
				CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`,
			erpDDL: `CREATE TABLE ev (id int NOT NULL, created date NOT NULL, status text, PRIMARY KEY (id, created)) PARTITION BY RANGE (created);
				CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
				CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`,
			mapping: `
  - name: ev
    key: [id, created]
    fields:
      - {name: id,      type: integer, owner: crm}
      - {name: created, type: date,    owner: crm}
      - {name: status,  type: text,    owner: crm}
    systems:
      crm: {table: public.ev, key_columns: [id, created], columns: {id: {column: id}, created: {column: created}, status: {column: status}}}
      erp: {table: public.ev, key_columns: [id, created], columns: {id: {column: id}, created: {column: created}, status: {column: status}}}
`,
			before: []stmt{onCRM(`INSERT INTO ev VALUES (1, '2024-05-01', 'new'), (2, '2024-06-01', 'new'), (1, '2025-05-01', 'other')`)},
			changes: []stmt{
				onCRM(`UPDATE ev SET created = '2025-02-01', status = 'moved' WHERE id = 1 AND created = '2024-05-01'`),
				onCRM(`UPDATE ev SET status = 'kept' WHERE id = 2`),
				onCRM(`BEGIN; UPDATE ev SET created = '2025-03-01', status = 'moved too' WHERE id = 2; UPDATE ev SET created = '2024-01-01' WHERE id = 1 AND created = '2025-05-01'; COMMIT`),
			},
			want: []want{wantERP(`SELECT tableoid::regclass, id, created, status FROM ev ORDER BY 2, 3`,
				"ev_2024|1|2024-01-01|other", "ev_2025|1|2025-02-01|moved", "ev_2025|2|2025-03-01|moved too")},
			verify: true,
		},
		{
			// Case 6: codes rotated across three rows in a cycle (A→B,
			// B→C, C→A) through a temporary value, in one transaction.
			name:    "unique values rotated across three rows",
			crmDDL:  codesDDL,
			erpDDL:  codesDDL,
			mapping: codesMapping,
			before:  []stmt{onCRM(`INSERT INTO items VALUES (1, 'A'), (2, 'B'), (3, 'C'), (4, 'D')`)},
			changes: []stmt{onCRM(`BEGIN;
				UPDATE items SET code = 'tmp' WHERE id = 3;
				UPDATE items SET code = 'C' WHERE id = 2;
				UPDATE items SET code = 'B' WHERE id = 1;
				UPDATE items SET code = 'A' WHERE id = 3;
				UPDATE items SET code = 'D2' WHERE id = 4;
				COMMIT`)},
			want:   []want{wantERP(`SELECT id, code FROM items ORDER BY id`, "1|B", "2|C", "3|A", "4|D2")},
			verify: true,
		},
		{
			// Case 7: a table that refers to itself ON DELETE CASCADE; a
			// delete of an inner node deletes its subtree in the source
			// (each row's delete is sent), and the ERP, whose own cascade
			// does not fire under duplex, ends without the subtree.
			name:   "self-reference ON DELETE CASCADE deleting a subtree",
			crmDDL: `CREATE TABLE emp (id int PRIMARY KEY, manager_id int REFERENCES emp ON DELETE CASCADE)`,
			erpDDL: `CREATE TABLE emp (id int PRIMARY KEY, manager_id int REFERENCES emp ON DELETE CASCADE)`,
			mapping: `
  - name: emp
    key: id
    fields:
      - {name: id,      type: integer, owner: crm}
      - {name: manager, type: integer, owner: crm}
    systems:
      crm: {table: public.emp, key_column: id, columns: {id: {column: id}, manager: {column: manager_id}}}
      erp: {table: public.emp, key_column: id, columns: {id: {column: id}, manager: {column: manager_id}}}
`,
			before: []stmt{onCRM(`INSERT INTO emp VALUES (1, NULL), (9, NULL); INSERT INTO emp VALUES (2, 1), (3, 1); INSERT INTO emp VALUES (4, 2), (6, 9); INSERT INTO emp VALUES (5, 4)`)},
			changes: []stmt{
				onCRM(`DELETE FROM emp WHERE id = 2`),
				onCRM(`INSERT INTO emp VALUES (7, 3); DELETE FROM emp WHERE id = 9`),
			},
			want:   []want{wantERP(`SELECT id, manager_id FROM emp ORDER BY id`, "1|NULL", "3|1", "7|3")},
			verify: true,
		},
		{
			// Cases 1 and 4: an unchanged TOASTed body of a row keyed by
			// (co, no) that the ERP lacks: the capture reads it back by
			// both key columns.
			name: "unchanged TOAST value, composite key, target lacks the row",
			crmDDL: `CREATE TABLE docs (co text NOT NULL, no int NOT NULL, status text NOT NULL, body text, PRIMARY KEY (co, no));
				ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;`,
			erpDDL: `CREATE TABLE docs (co text NOT NULL, no int NOT NULL, status text NOT NULL, body text, PRIMARY KEY (co, no));
				ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;` + skipHiddenDocs,
			mapping: `
  - name: doc
    key: [co, no]
    fields:
      - {name: co,     type: text,    owner: crm}
      - {name: no,     type: integer, owner: crm}
      - {name: status, type: text,    owner: crm}
      - {name: body,   type: text,    owner: crm}
    systems:
      crm: {table: public.docs, key_columns: [co, no], columns: {co: {column: co}, no: {column: no}, status: {column: status}, body: {column: body}}}
      erp: {table: public.docs, key_columns: [co, no], columns: {co: {column: co}, no: {column: no}, status: {column: status}, body: {column: body}}}
`,
			before:  []stmt{onCRM(`INSERT INTO docs SELECT c, 1, 'hidden', ` + big + ` FROM unnest(ARRAY['A, B', 'A']) c`)},
			changes: []stmt{onCRM(`UPDATE docs SET status = 'shown'`)},
			want: []want{wantERP(`SELECT co, no, status, length(body), md5(body) FROM docs ORDER BY 1`,
				"A|1|shown|12800|"+md5Of400, "A, B|1|shown|12800|"+md5Of400)},
			verify: true,
		},
		{
			// Cases 3 and 8: the ERP table is partitioned and has a NOT
			// NULL region the mapping fills with an SQL expression on
			// insert; an existing row keeps its own.
			name:   "NOT NULL column with an SQL default on a partitioned target",
			crmDDL: `CREATE TABLE accts (id int PRIMARY KEY, note text)`,
			erpDDL: `CREATE TABLE accts (id int PRIMARY KEY, note text, region text NOT NULL) PARTITION BY RANGE (id);
				CREATE TABLE accts_lo PARTITION OF accts FOR VALUES FROM (0) TO (100);
				CREATE TABLE accts_hi PARTITION OF accts FOR VALUES FROM (100) TO (1000);
				CREATE FUNCTION home_region() RETURNS text LANGUAGE sql AS $$ SELECT 'EU' $$`,
			mapping: regionMapping("        default: {region: {sql: public.home_region() || '-' || 'x'}}\n"),
			before: []stmt{
				onCRM(`INSERT INTO accts VALUES (1, 'a'), (150, 'b')`),
				onERP(`INSERT INTO accts VALUES (1, 'old', 'US')`),
			},
			changes: []stmt{
				onCRM(`UPDATE accts SET note = 'a2' WHERE id = 1`),
				onCRM(`INSERT INTO accts VALUES (2, 'new'), (200, 'new hi')`),
				onCRM(`UPDATE accts SET id = 120, note = 'moved' WHERE id = 2`),
			},
			want: []want{wantERP(`SELECT tableoid::regclass, id, note, region FROM accts ORDER BY id`,
				"accts_lo|1|a2|US", "accts_hi|120|moved|EU-x", "accts_hi|150|b|EU-x", "accts_hi|200|new hi|EU-x")},
		},
		{
			// Cases 4 and 9: infinite and BC dates as parts of a composite
			// key, and an update that moves a row's key to infinity.
			name:   "infinite and BC dates in a composite key",
			crmDDL: `CREATE TABLE rates (valid_from date NOT NULL, code text NOT NULL, rate numeric(9,4), PRIMARY KEY (valid_from, code))`,
			erpDDL: `CREATE TABLE rates (valid_from date NOT NULL, code text NOT NULL, rate numeric(9,4), PRIMARY KEY (code, valid_from))`,
			mapping: `
  - name: rate
    key: [valid_from, code]
    fields:
      - {name: valid_from, type: date,    owner: crm}
      - {name: code,       type: text,    owner: crm}
      - {name: rate,       type: decimal, owner: crm}
    systems:
      crm: {table: public.rates, key_columns: [valid_from, code], columns: {valid_from: {column: valid_from}, code: {column: code}, rate: {column: rate}}}
      erp: {table: public.rates, key_columns: [valid_from, code], columns: {valid_from: {column: valid_from}, code: {column: code}, rate: {column: rate}}}
`,
			before: []stmt{onCRM(`INSERT INTO rates VALUES ('-infinity', 'X', 1), ('infinity', 'X', 2), ('2024-01-01', 'X', 3), ('4713-01-01 BC', 'Y', 4), ('2024-01-01', 'Y', 5)`)},
			changes: []stmt{
				onCRM(`UPDATE rates SET rate = 2.5 WHERE valid_from = 'infinity'`),
				onCRM(`UPDATE rates SET valid_from = 'infinity' WHERE code = 'Y' AND valid_from = '2024-01-01'`),
				onCRM(`DELETE FROM rates WHERE valid_from = '-infinity'`),
				onCRM(`INSERT INTO rates VALUES ('-infinity', 'Z', 6)`),
			},
			want: []want{wantERP(`SELECT valid_from, code, rate FROM rates ORDER BY code, valid_from`,
				"2024-01-01|X|3.0000", "infinity|X|2.5000", "4713-01-01 BC|Y|4.0000", "infinity|Y|5.0000", "-infinity|Z|6.0000")},
			verify: true,
		},
		{
			// Case 12: the ERP writes its currency codes in lower case
			// (and padded, char(4)); amounts follow each code's decimals
			// (JPY none, BHD three), and the CRM gets ISO's upper case.
			name:   "currency column in lower case",
			erpDDL: `CREATE TABLE prices (id int PRIMARY KEY, cur char(4) NOT NULL, amount numeric(14,4))`,
			crmDDL: `CREATE TABLE prices (id int PRIMARY KEY, currency char(3) NOT NULL CHECK (currency = upper(currency)), amount numeric(14,4))`,
			mapping: `
  - name: price
    key: id
    fields:
      - {name: id,       type: integer,  owner: erp}
      - {name: currency, type: currency, owner: erp}
      - {name: amount,   type: money,    owner: erp}
    systems:
      erp: {table: public.prices, key_column: id, columns: {id: {column: id}, currency: {column: cur}, amount: {column: amount, currency_column: cur}}}
      crm: {table: public.prices, key_column: id, columns: {id: {column: id}, currency: {column: currency}, amount: {column: amount, currency_column: currency}}}
`,
			before:  []stmt{onERP(`INSERT INTO prices VALUES (1, 'eur', 12.34), (2, 'jpy', 1200)`)},
			changes: []stmt{onERP(`INSERT INTO prices VALUES (3, 'bhd', 1.234), (4, 'xcg', 5.5)`), onERP(`UPDATE prices SET cur = 'eur', amount = 5 WHERE id = 2`)},
			want:    []want{wantCRM(`SELECT id, currency, amount FROM prices ORDER BY id`, "1|EUR|12.3400", "2|EUR|5.0000", "3|BHD|1.2340", "4|XCG|5.5000")},
			verify:  true,
		},
		{
			// Case 11: ENABLE ALWAYS triggers on the target fire on the rows
			// duplex applies, as they do under PostgreSQL's own apply
			// worker: one stamps a column the mapping does not carry, one
			// writes an audit table.
			name:   "ENABLE ALWAYS triggers on the target fire",
			crmDDL: `CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2))`,
			erpDDL: `CREATE TABLE deals (id int PRIMARY KEY, amount numeric(12,2), touched text);
				CREATE TABLE audit (id int, op text, role text);
				CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := 'by ' || TG_OP; RETURN NEW; END $$;
				CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.audit VALUES (COALESCE(NEW.id, OLD.id), TG_OP, current_setting('session_replication_role')); RETURN NULL; END $$;
				CREATE TRIGGER deals_stamp BEFORE INSERT OR UPDATE ON deals FOR EACH ROW EXECUTE FUNCTION public.stamp();
				CREATE TRIGGER deals_audit AFTER INSERT OR UPDATE OR DELETE ON deals FOR EACH ROW EXECUTE FUNCTION public.audit();
				ALTER TABLE deals ENABLE ALWAYS TRIGGER deals_stamp; ALTER TABLE deals ENABLE ALWAYS TRIGGER deals_audit`,
			mapping: `
  - name: deal
    key: id
    fields:
      - {name: id,     type: integer, owner: crm}
      - {name: amount, type: decimal, owner: crm}
    systems:
      crm: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}}}
      erp: {table: public.deals, key_column: id, columns: {id: {column: id}, amount: {column: amount}}}
`,
			before:  []stmt{onCRM(`INSERT INTO deals VALUES (1, 10.00), (2, 20.00)`)},
			changes: []stmt{onCRM(`UPDATE deals SET amount = 11.00 WHERE id = 1`), onCRM(`DELETE FROM deals WHERE id = 2`), onCRM(`INSERT INTO deals VALUES (3, 30.00)`)},
			want: []want{
				wantERP(`SELECT id, amount, touched FROM deals ORDER BY id`, "1|11.00|by UPDATE", "3|30.00|by INSERT"),
				wantERP(`SELECT DISTINCT role FROM audit`, "replica"),
				wantERP(`SELECT count(*) FROM audit WHERE id = 3 AND op = 'INSERT'`, "1"),
			},
			verify: true,
			snapshotMode: func(c *schemaCase) {
				// The snapshot copies row 1 as it is: an insert.
				c.want = append([]want{wantERP(`SELECT id, amount, touched FROM deals ORDER BY id`, "1|11.00|by INSERT", "3|30.00|by INSERT")}, c.want[1:]...)
			},
		},
		{
			// Case 4: a key change of a document cascades (ON UPDATE
			// CASCADE) to the payment that refers to it by both parts; in
			// the ERP the payment follows the document's surrogate id.
			name: "composite key change cascaded to a referring row",
			crmDDL: `CREATE TABLE docs (company text NOT NULL, doc_no int NOT NULL, note text, PRIMARY KEY (company, doc_no));
				CREATE TABLE doc_payments (payment_no int PRIMARY KEY, company text, doc_no int, amount numeric(12,2), FOREIGN KEY (company, doc_no) REFERENCES docs ON UPDATE CASCADE)`,
			erpDDL:  erpDocsDDL,
			mapping: docsMapping,
			before:  []stmt{onCRM(`INSERT INTO docs VALUES ('ACME', 1, 'a1'), ('ACME', 2, 'a2'); INSERT INTO doc_payments VALUES (1, 'ACME', 2, 10.00), (2, 'ACME', 1, 5.00)`)},
			changes: []stmt{
				onCRM(`UPDATE docs SET doc_no = 5, note = 'renumbered' WHERE company = 'ACME' AND doc_no = 2`),
				onCRM(`UPDATE docs SET company = 'Beta' WHERE doc_no = 1`),
			},
			want:   docsWant([]string{"ACME|5|renumbered", "Beta|1|a1"}, "1|ACME|5|10.00", "2|Beta|1|5.00"),
			verify: true,
		},
		{
			// Case 11a with a composite key whose text part has a comma and
			// quotes, and 300 rows edited at once: the owner's rows are
			// re-read by both key columns, in conditions short enough for
			// the capture (the re-read was refused, and the ERP kept its
			// edits, with a composite key or more than 4096 bytes of keys).
			name:   "enforce owner on a composite-key entity, many rows",
			crmDDL: `CREATE TABLE deals (co text NOT NULL, id int NOT NULL, amount numeric(12,2), updated_by text, PRIMARY KEY (co, id)); ALTER TABLE deals REPLICA IDENTITY FULL`,
			erpDDL: `CREATE TABLE deals (co text NOT NULL, id int NOT NULL, amount numeric(12,2), updated_by text, PRIMARY KEY (co, id)); ALTER TABLE deals REPLICA IDENTITY FULL`,
			mapping: `
  - name: deal
    key: [co, id]
    enforce: owner
    fields:
      - {name: co,         type: text,    owner: crm}
      - {name: id,         type: integer, owner: crm}
      - {name: amount,     type: decimal, owner: crm}
      - {name: updated_by, type: text,    owner: erp}
    systems:
      crm: {table: public.deals, key_columns: [co, id], columns: {co: {column: co}, id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
      erp: {table: public.deals, key_columns: [co, id], columns: {co: {column: co}, id: {column: id}, amount: {column: amount}, updated_by: {column: updated_by}}}
`,
			before: []stmt{
				onCRM(`INSERT INTO deals VALUES ('X, "Y"', 1, 1.00, NULL), ('X, "Y"', 2, 5.00, NULL), ('Z', 1, 7.00, NULL)`),
				onERP(`INSERT INTO deals VALUES ('X, "Y"', 1, 1.00, NULL), ('X, "Y"', 2, 5.00, NULL), ('Z', 1, 7.00, NULL)`),
				onCRM(`INSERT INTO deals SELECT 'Company ' || g % 3, g, 1.00, NULL FROM generate_series(1, 300) g`),
				onERP(`INSERT INTO deals SELECT 'Company ' || g % 3, g, 1.00, NULL FROM generate_series(1, 300) g`),
			},
			changes: []stmt{onERP(`UPDATE deals SET amount = amount + 1, updated_by = 'erp user' WHERE co NOT LIKE 'Company%' AND id = 1 OR co LIKE 'Company%'`)},
			want: []want{
				wantERP(`SELECT co, id, amount, updated_by FROM deals WHERE co NOT LIKE 'Company%' ORDER BY 1, 2`, `X, "Y"|1|1.00|erp user`, `X, "Y"|2|5.00|NULL`, "Z|1|7.00|erp user"),
				wantCRM(`SELECT co, id, amount, updated_by FROM deals WHERE co NOT LIKE 'Company%' ORDER BY 1, 2`, `X, "Y"|1|1.00|erp user`, `X, "Y"|2|5.00|NULL`, "Z|1|7.00|erp user"),
				wantERP(`SELECT count(*), sum(amount) FROM deals WHERE co LIKE 'Company%' AND updated_by = 'erp user'`, "300|300.00"),
				wantCRM(`SELECT count(*), sum(amount) FROM deals WHERE co LIKE 'Company%' AND updated_by = 'erp user'`, "300|300.00"),
			},
			verify: true,
		},
		{
			// 5: a char(n) target key fed from a text source key. 'AB '
			// and 'AB' are one value of char(4): the key with a trailing
			// space is refused with the reason in every batch (it would
			// overwrite the row of 'AB', silently, when they come in
			// different batches), and the update of 'AB' applies.
			name:    "char(n) target key, a source key with a trailing space",
			crmDDL:  `CREATE TABLE people (email text PRIMARY KEY, note text)`,
			erpDDL:  `CREATE TABLE people (email char(4) PRIMARY KEY, note text)`,
			mapping: contactsMapping,
			before:  []stmt{onCRM(`INSERT INTO people VALUES ('AB', 'first'), ('CD', 'c')`)},
			changes: []stmt{
				onCRM(`INSERT INTO people VALUES ('AB ', 'second')`),
				onCRM(`UPDATE people SET note = 'first 2' WHERE email = 'AB'`),
			},
			want:       []want{wantERP(`SELECT email, note FROM people ORDER BY email`, "AB  |first 2", "CD  |c")},
			deadLetter: `key column email of public.people is character(4), which pads with spaces`,
		},
	})
}
