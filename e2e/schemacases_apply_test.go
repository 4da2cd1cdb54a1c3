package e2e

import (
	"testing"

	"github.com/duplex-cdc/duplex/internal/config"
)

// The schema suite, apply topic (issue 11 cases 5, 6, 7): two source keys
// that one target key holds as one value, unique values moved inside a
// transaction, and foreign keys the mapping does not declare.

const contactsMapping = `
  - name: contact
    key: email
    fields:
      - {name: email, type: text, owner: crm}
      - {name: note,  type: text, owner: crm}
    systems:
      crm: {table: public.people, key_column: email, columns: {email: {column: email}, note: {column: note}}}
      erp: {table: public.people, key_column: email, columns: {email: {column: email}, note: {column: note}}}
`

const codesMapping = `
  - name: item
    key: id
    fields:
      - {name: id,   type: integer, owner: crm}
      - {name: code, type: text,    owner: crm}
    systems:
      crm: {table: public.items, key_column: id, columns: {id: {column: id}, code: {column: code}}}
      erp: {table: public.items, key_column: id, columns: {id: {column: id}, code: {column: code}}}
`

// fkMapping lists the child before its parent and maps parent_id as a
// plain integer: only the ERP's foreign keys say which comes first.
const fkMapping = `
  - name: child
    key: id
    fields:
      - {name: id,        type: integer, owner: crm}
      - {name: parent_id, type: integer, owner: crm}
    systems:
      crm: {table: public.child, key_column: id, columns: {id: {column: id}, parent_id: {column: parent_id}}}
      erp: {table: public.child, key_column: id, columns: {id: {column: id}, parent_id: {column: parent_id}}}
  - name: parent
    key: id
    fields:
      - {name: id,       type: integer, owner: crm}
      - {name: child_id, type: integer, owner: crm}
    systems:
      crm: {table: public.parent, key_column: id, columns: {id: {column: id}, child_id: {column: child_id}}}
      erp: {table: public.parent, key_column: id, columns: {id: {column: id}, child_id: {column: child_id}}}
`

const codesDDL = `CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL UNIQUE)`

func TestSchemaCases_Apply(t *testing.T) {
	runSchemaCases(t, []schemaCase{
		{
			// Case 5: the ERP keys contacts on a citext e-mail; the CRM
			// has 'Ann@x.com' and 'ann@x.com' as two rows. One of them
			// reaches the ERP, the other is a dead letter naming both
			// keys (in one snapshot chunk or in two transactions), and
			// nothing waits behind it. A key whose case changes lands.
			name:    "two source keys on one citext key",
			crmDDL:  `CREATE TABLE people (email text PRIMARY KEY, note text)`,
			erpDDL:  `CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE people (email citext PRIMARY KEY, note text)`,
			mapping: contactsMapping,
			before:  []stmt{onCRM(`INSERT INTO people VALUES ('Ann@x.com', 'a'), ('bob@x.com', 'b')`)},
			changes: []stmt{
				onCRM(`INSERT INTO people VALUES ('ann@x.com', 'other ann')`),
				onCRM(`UPDATE people SET email = 'BOB@x.com' WHERE email = 'bob@x.com'`),
				onCRM(`INSERT INTO people VALUES ('cy@x.com', 'c')`),
			},
			want: []want{wantERP(`SELECT email, note FROM people WHERE email <> 'ann@x.com' ORDER BY note`, "BOB@x.com|b", "cy@x.com|c"),
				// Ann's row is one of the two source rows, whole.
				wantERP(`SELECT count(*) FROM people WHERE email = 'ann@x.com' AND (email::text, note) IN (('Ann@x.com', 'a'), ('ann@x.com', 'other ann'))`, "1")},
			deadLetter: "two source keys land on one target row",
		},
		{
			// Case 6: codes swapped through a temporary value, and a
			// deleted row's code taken by a new row, each in one
			// transaction.
			name:    "unique values moved inside one transaction",
			crmDDL:  codesDDL,
			erpDDL:  codesDDL,
			mapping: codesMapping,
			before:  []stmt{onCRM(`INSERT INTO items VALUES (1, 'A'), (2, 'B'), (3, 'C')`)},
			changes: []stmt{
				onCRM(`UPDATE items SET code = 'tmp' WHERE id = 1; UPDATE items SET code = 'A' WHERE id = 2; UPDATE items SET code = 'B' WHERE id = 1`),
				onCRM(`DELETE FROM items WHERE id = 3; INSERT INTO items VALUES (8, 'C')`),
			},
			want:   []want{wantERP(`SELECT id, code FROM items ORDER BY id`, "1|B", "2|A", "8|C")},
			verify: true,
		},
		{
			// Case 6: a code held by a row of the ERP's own is a real
			// conflict: that change is a dead letter, the rest applies.
			name:    "a real unique conflict is a dead letter",
			crmDDL:  codesDDL,
			erpDDL:  codesDDL,
			mapping: codesMapping,
			before:  []stmt{onERP(`INSERT INTO items VALUES (9, 'LOCAL')`), onCRM(`INSERT INTO items VALUES (1, 'A'), (2, 'B')`)},
			changes: []stmt{
				onCRM(`UPDATE items SET code = 'tmp' WHERE id = 1; UPDATE items SET code = 'A' WHERE id = 2; UPDATE items SET code = 'B' WHERE id = 1; INSERT INTO items VALUES (3, 'LOCAL'), (4, 'D')`),
			},
			want:       []want{wantERP(`SELECT id, code FROM items ORDER BY id`, "1|B", "2|A", "4|D", "9|LOCAL")},
			deadLetter: "items_code_key",
		},
		{
			// Case 7: the ERP's foreign key, not the mapping, orders the
			// writes: parents first, deletes children first.
			name:    "foreign key the mapping does not declare",
			crmDDL:  `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent)`,
			erpDDL:  `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent)`,
			mapping: fkMapping,
			before:  []stmt{onCRM(`INSERT INTO parent VALUES (1, NULL); INSERT INTO child VALUES (10, 1)`)},
			changes: []stmt{
				onCRM(`INSERT INTO parent VALUES (2, NULL); INSERT INTO child VALUES (20, 2), (21, 2)`),
				onCRM(`DELETE FROM child WHERE parent_id = 1; DELETE FROM parent WHERE id = 1`),
			},
			want:   []want{wantERP(`SELECT p.id, c.id FROM parent p LEFT JOIN child c ON c.parent_id = p.id ORDER BY 1, 2`, "2|20", "2|21")},
			verify: true,
		},
		{
			// Case 7: a cycle of foreign keys that are not DEFERRABLE
			// applies as well: the sink does not fire PostgreSQL's
			// foreign-key triggers (session_replication_role = replica)
			// and checks the keys itself at the end of each target
			// transaction; copied rows are not checked against parents.
			name: "foreign key cycle that is not deferrable",
			crmDDL: `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
				ALTER TABLE parent ADD FOREIGN KEY (child_id) REFERENCES child DEFERRABLE INITIALLY DEFERRED`,
			erpDDL: `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
				ALTER TABLE parent ADD CONSTRAINT parent_child_fk FOREIGN KEY (child_id) REFERENCES child`,
			mapping: fkMapping,
			config:  oneChunkPerApply,
			changes: []stmt{
				onCRM(`INSERT INTO child VALUES (10, 1), (11, 2); INSERT INTO parent VALUES (1, 10), (2, 11)`),
				onCRM(`DELETE FROM parent WHERE id = 2; DELETE FROM child WHERE id = 11`),
			},
			want:   []want{wantERP(`SELECT p.id, p.child_id, c.id, c.parent_id FROM parent p JOIN child c ON c.parent_id = p.id ORDER BY 1`, "1|10|10|1")},
			verify: true,
		},
	})
}

// TestSchemaCases_ApplyDeferredCycle: case 7, tables that refer to each
// other through DEFERRABLE foreign keys, and a table that refers to
// itself. A source transaction that writes both ends of the cycle applies
// with them checked at its end. Through the initial snapshot, a copied
// row may come before the row it refers to (the other table of the cycle
// is copied later; a manager with a higher key is in a later chunk, two
// rows per chunk here): copied rows are not checked against their
// parents, as PostgreSQL's own table synchronization does not check them,
// and the copy is consistent once complete.
func TestSchemaCases_ApplyDeferredCycle(t *testing.T) {
	runSchemaCases(t, []schemaCase{
		{
			name: "deferrable foreign key cycle",
			crmDDL: `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
			ALTER TABLE parent ADD FOREIGN KEY (child_id) REFERENCES child DEFERRABLE INITIALLY DEFERRED`,
			erpDDL: `CREATE TABLE parent (id int PRIMARY KEY, child_id int); CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE);
			ALTER TABLE parent ADD FOREIGN KEY (child_id) REFERENCES child DEFERRABLE`,
			mapping: fkMapping,
			config:  oneChunkPerApply,
			changes: []stmt{
				onCRM(`INSERT INTO child VALUES (10, 1), (11, 2); INSERT INTO parent VALUES (1, 10), (2, 11)`),
				onCRM(`DELETE FROM parent WHERE id = 2; DELETE FROM child WHERE id = 11`),
			},
			want:   []want{wantERP(`SELECT p.id, p.child_id, c.id, c.parent_id FROM parent p JOIN child c ON c.parent_id = p.id ORDER BY 1`, "1|10|10|1")},
			verify: true,
		},
		{
			name:   "table that refers to itself, parents in later chunks",
			crmDDL: `CREATE TABLE emp (id int PRIMARY KEY, manager_id int REFERENCES emp)`,
			erpDDL: `CREATE TABLE emp (id int PRIMARY KEY, manager_id int REFERENCES emp)`,
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
			config: oneChunkPerApply,
			changes: []stmt{
				onCRM(`INSERT INTO emp VALUES (7, NULL); INSERT INTO emp VALUES (1, 7), (2, 7), (3, 1), (4, 6), (5, 7), (6, 7)`),
			},
			want:   []want{wantERP(`SELECT id, manager_id FROM emp ORDER BY id`, "1|7", "2|7", "3|1", "4|6", "5|7", "6|7", "7|NULL")},
			verify: true,
		},
	})
}

// oneChunkPerApply makes the CRM cut chunks of two changes (two rows in
// the snapshot) and the flows apply one message per target transaction,
// so that each snapshot chunk commits alone.
func oneChunkPerApply(cfg *config.Config) {
	cfg.Systems["crm"].ChunkSize = 2
	cfg.Systems["crm"].SnapshotChunk = 2
	for _, f := range cfg.Flows {
		f.Batch = 1
	}
}
