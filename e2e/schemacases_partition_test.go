package e2e

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/config"
)

// partitionedCRM is a CRM orders table partitioned by range of its key
// (a partitioned table's unique key must contain the partition key, so a
// one-field key is the partition key) into orders_1 (ids 0-99) and
// orders_2 (100-199).
const partitionedCRM = `
CREATE SCHEMA part;
SET search_path = part;
CREATE TABLE orders (id int PRIMARY KEY, region text, amount numeric(12,2)) PARTITION BY RANGE (id);
CREATE TABLE orders_1 PARTITION OF part.orders FOR VALUES FROM (0) TO (100);
CREATE TABLE orders_2 PARTITION OF part.orders FOR VALUES FROM (100) TO (200);
CREATE TABLE notes (id int PRIMARY KEY, body text);
`

const partitionedERP = `CREATE SCHEMA part; CREATE TABLE part.orders (id int PRIMARY KEY, region text, amount numeric(12,2));`

func partitionedMapping(truncate string) string {
	m := `
  - name: order
    key: id
%s    fields:
      - {name: id,     type: integer, owner: crm}
      - {name: region, type: text,    owner: crm}
      - {name: amount, type: decimal, owner: crm}
    systems:
      crm: {table: part.orders, key_column: id, columns: {id: {column: id}, region: {column: region}, amount: {column: amount}}}
      erp: {table: part.orders, key_column: id, columns: {id: {column: id}, region: {column: region}, amount: {column: amount}}}
`
	if truncate != "" {
		return strings.Replace(m, "%s", "    truncate: "+truncate+"\n", 1)
	}
	return strings.Replace(m, "%s", "", 1)
}

// TestSchemaCases_PartitionedTables (issue 11, case 3): a mapped
// partitioned source table, published by duplex's own publication (leaf
// partitions) or by a user-made one with publish_via_partition_root:
// changes of every partition reach the table's entity, the snapshot copies
// each row once, a partition created while streaming is picked up without
// a restart, a row moving to another partition (an update of the
// partition key, here the key) ends as one row, and a TRUNCATE of some
// partitions is refused with the reason under either truncate policy
// while one of all of them is propagated when the mapping says so.
func TestSchemaCases_PartitionedTables(t *testing.T) {
	rows := []stmt{onCRM(`INSERT INTO part.orders VALUES (1, 'north', 1.00), (150, 'south', 150.00)`)}
	changes := []stmt{
		onCRM(`INSERT INTO part.orders VALUES (2, 'north', 2.00), (160, 'south', 160.00)`),
		onCRM(`UPDATE part.orders SET amount = 1.50 WHERE id = 1`),
		// Moves the row from orders_1 to orders_2.
		onCRM(`UPDATE part.orders SET id = 102, region = 'moved' WHERE id = 2`),
		onCRM(`DELETE FROM part.orders WHERE id = 160`),
		// A partition created while streaming, and rows in it at once.
		onCRM(`CREATE TABLE part.orders_3 PARTITION OF part.orders FOR VALUES FROM (200) TO (300); INSERT INTO part.orders VALUES (250, 'new partition', 250.00)`),
		onCRM(`UPDATE part.orders SET id = 251 WHERE id = 150`),
	}
	final := wantERP(`SELECT id, region, amount FROM part.orders ORDER BY id`, "1|north|1.50", "102|moved|2.00", "250|new partition|250.00", "251|south|150.00")
	// Each row is copied once by the snapshot (two in the streaming mode,
	// where the changes come later): the table, not its partitions.
	copied := func(n int64) func(t *testing.T, f *fixture) {
		return func(t *testing.T, f *fixture) {
			if got := queryInt(t, f.conn("crm"), `SELECT rows FROM duplex.snapshots`); got != n {
				t.Errorf("the snapshot copied %d rows, want %d", got, n)
			}
		}
	}
	viaRoot := func(c *config.Config) { c.Systems["crm"].Publication = "orders_via_root" }
	const viaRootDDL = `CREATE PUBLICATION orders_via_root FOR TABLE part.orders WITH (publish_via_partition_root = true);`
	snapshotCopiesAll := func(c *schemaCase) { c.after = copied(4) }
	runSchemaCases(t, []schemaCase{
		{
			name:         "duplex's publication",
			crmDDL:       partitionedCRM,
			erpDDL:       partitionedERP,
			mapping:      partitionedMapping(""),
			before:       rows,
			changes:      changes,
			want:         []want{final},
			verify:       true,
			after:        copied(2),
			snapshotMode: snapshotCopiesAll,
		},
		{
			name:         "publication via the partition root",
			crmDDL:       partitionedCRM + viaRootDDL,
			erpDDL:       partitionedERP,
			mapping:      partitionedMapping(""),
			config:       viaRoot,
			before:       rows,
			changes:      changes,
			want:         []want{final},
			verify:       true,
			after:        copied(2),
			snapshotMode: snapshotCopiesAll,
		},
		{
			name:    "publication of the partitions only, and of a table no entity maps",
			crmDDL:  partitionedCRM + `CREATE PUBLICATION orders_leaves FOR TABLE orders_1, orders_2, notes;`,
			erpDDL:  partitionedERP,
			mapping: partitionedMapping(""),
			config:  func(c *config.Config) { c.Systems["crm"].Publication = "orders_leaves" },
			before:  rows,
			changes: append(append([]stmt{}, changes...), onCRM(`INSERT INTO part.notes VALUES (1, 'not mapped')`)),
			want:    []want{final},
			verify:  true,
			after:   leavesPublished(true),
			snapshotMode: func(c *schemaCase) {
				// The insert into notes precedes the slot.
				c.after = leavesPublished(false)
			},
		},
		{
			// Shared fields need the old row: PostgreSQL sends a
			// partition's changes with the partition's own replica
			// identity, which the table's does not set.
			name:    "shared field, a partition without REPLICA IDENTITY FULL",
			crmDDL:  partitionedCRM + `ALTER TABLE orders REPLICA IDENTITY FULL; ALTER TABLE orders_1 REPLICA IDENTITY FULL;`,
			erpDDL:  partitionedERP,
			mapping: strings.Replace(partitionedMapping(""), "{name: region, type: text,    owner: crm}", "{name: region, type: text,    owner: both}", 1),
			refusal: "crm table part.orders (entity order): shared field(s) [region] need the old row of every update, and partition(s) [part.orders_2] do not send it",
		},
		{
			name:    "truncate of one partition, refused by default",
			crmDDL:  partitionedCRM,
			erpDDL:  partitionedERP,
			mapping: partitionedMapping(""),
			before:  rows,
			changes: []stmt{onCRM(`TRUNCATE part.orders_1`), onCRM(`INSERT INTO part.orders VALUES (3, 'after', 3.00)`)},
			// The ERP keeps the row of the truncated partition; the
			// dead letter says why.
			want:       []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "1|north", "3|after", "150|south")},
			deadLetter: "truncate of partition(s) part.orders_1 of part.orders (entity order) refused: the mapping does not propagate truncates",
			snapshotMode: func(c *schemaCase) {
				c.want = []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "3|after", "150|south")}
				c.deadLetter = ""
			},
		},
		{
			name:       "truncate of one partition, refused although truncates propagate",
			crmDDL:     partitionedCRM,
			erpDDL:     partitionedERP,
			mapping:    partitionedMapping("propagate"),
			before:     rows,
			changes:    []stmt{onCRM(`TRUNCATE part.orders_2`), onCRM(`INSERT INTO part.orders VALUES (3, 'after', 3.00)`)},
			want:       []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "1|north", "3|after", "150|south")},
			deadLetter: "truncate of partition(s) part.orders_2 of part.orders (entity order) refused: truncate: propagate empties whole tables only",
			snapshotMode: func(c *schemaCase) {
				c.want = []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "1|north", "3|after")}
				c.deadLetter = ""
			},
		},
		{
			name:    "truncate of every partition, propagated",
			crmDDL:  partitionedCRM,
			erpDDL:  partitionedERP,
			mapping: partitionedMapping("propagate"),
			before:  rows,
			changes: []stmt{onCRM(`TRUNCATE part.orders`), onCRM(`INSERT INTO part.orders VALUES (3, 'after', 3.00)`)},
			want:    []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "3|after")},
		},
		{
			name:    "truncate of the table via the partition root, propagated",
			crmDDL:  partitionedCRM + viaRootDDL,
			erpDDL:  partitionedERP,
			mapping: partitionedMapping("propagate"),
			config:  viaRoot,
			before:  rows,
			changes: []stmt{onCRM(`TRUNCATE part.orders`), onCRM(`INSERT INTO part.orders VALUES (3, 'after', 3.00)`)},
			want:    []want{wantERP(`SELECT id, region FROM part.orders ORDER BY id`, "3|after")},
		},
	})
}

// leavesPublished checks that duplex added the partitioned table to the
// user's publication of its partitions (so orders_3 is published too) and,
// with unmapped, that the change of the unmapped table notes was counted.
func leavesPublished(unmapped bool) func(t *testing.T, f *fixture) {
	return func(t *testing.T, f *fixture) {
		if n := queryInt(t, f.conn("crm"), `SELECT count(*) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = 'orders_leaves' AND r.prrelid = 'part.orders'::regclass`); n != 1 {
			t.Errorf("orders is not a member of the user's publication")
		}
		if !unmapped {
			return
		}
		waitFor(t, 30*time.Second, func() (bool, string) {
			u := f.app.SrcStat["crm"].Snapshot().Unmapped
			return u["part.notes"] == 1, fmt.Sprintf("changes of unmapped tables counted: %v", u)
		})
	}
}

// partitionedInvoicesMapping is the example's mapping with the invoice
// entity keyed by (invoice_no, issued_at), the key of an ERP invoices table
// partitioned by issued_at (PostgreSQL's unique indexes of a partitioned
// table contain the partition key, so invoice_no alone cannot be its
// key), and without the entities that refer to invoices by invoice_no
// alone (ledger_entry).
func partitionedInvoicesMapping(t *testing.T) string {
	t.Helper()
	b := exampleMapping(t)
	const invoice = `invoice
    key: [invoice_no, issued_at]
    fields:
      - {name: invoice_no,  type: integer,   owner: erp}
      - {name: issued_at,   type: timestamp, owner: erp}
      - {name: customer_no, type: integer,   owner: erp}
      - {name: order_no,    type: integer,   owner: erp}
      - {name: currency,    type: currency,  owner: erp}
      - {name: amount,      type: money,     owner: erp}
      - {name: paid_amount, type: money,     owner: erp}
      - {name: status,      type: text,      owner: erp}
      - {name: due_date,    type: date,      owner: erp}
    systems:
      erp:
        table: public.invoices
        key_columns: [invoice_no, issued_at]
        columns:
          invoice_no:  {column: invoice_no}
          issued_at:   {column: issued_at}
          customer_no: {column: customer_no}
          order_no:    {column: order_no}
          currency:    {column: currency}
          amount:      {column: amount, currency_column: currency}
          paid_amount: {column: paid_amount, currency_column: currency}
          status:      {column: status}
          due_date:    {column: due_date}
      crm:
        table: public.invoices
        key_columns: [erp_invoice_no, erp_issued_at]
        columns:
          invoice_no:  {column: erp_invoice_no}
          issued_at:   {column: erp_issued_at}
          customer_no: {column: account_id, ref: {entity: customer, match: customer_no, column: id}}
          order_no:    {column: order_id, ref: {entity: order, match: order_no, column: id}}
          currency:    {column: currency}
          amount:      {column: amount, currency_column: currency}
          paid_amount: {column: paid_amount, currency_column: currency}
          status:      {column: status}
          due_date:    {column: due_date}
`
	blocks := strings.Split(string(b), "\n  - name: ")
	out := []string{blocks[0]}
	found := false
	for _, blk := range blocks[1:] {
		name, _, _ := strings.Cut(blk, "\n")
		switch {
		case name == "invoice":
			out, found = append(out, invoice), true
		case strings.Contains(blk, "entity: invoice"):
			// refers to an invoice by invoice_no alone
		default:
			out = append(out, blk)
		}
	}
	if !found {
		t.Fatal("the example mapping has no invoice entity")
	}
	return strings.Join(out, "\n  - name: ")
}

// partitionedInvoicesERP replaces the example's ERP invoices table by one
// partitioned by issued_at; no foreign key can point at it by invoice_no
// alone.
const partitionedInvoicesERP = `
ALTER TABLE payments DROP CONSTRAINT payments_invoice_no_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_invoice_no_fkey;
DROP TABLE invoices;
CREATE TABLE invoices (
    invoice_no  bigserial,
    order_no    bigint NOT NULL REFERENCES sales_orders,
    customer_no bigint NOT NULL REFERENCES customers,
    currency    char(3) NOT NULL,
    amount      numeric(19,4) NOT NULL,
    paid_amount numeric(19,4) NOT NULL DEFAULT 0,
    status      text NOT NULL,
    issued_at   timestamptz NOT NULL,
    due_date    date NOT NULL,
    PRIMARY KEY (invoice_no, issued_at)
) PARTITION BY RANGE (issued_at);
CREATE TABLE invoices_2024 PARTITION OF invoices FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE invoices_2025 PARTITION OF invoices FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
`

// TestSchemaCases_PartitionedERPInvoices (issue 11): the ERP's invoices
// table partitioned by issued_at, a source of flow to-crm with the
// example's other entities: invoices of every partition reach the CRM, a
// partition created while streaming needs no restart, an invoice whose
// issued_at moves it to another partition ends as one CRM invoice, and
// verify agrees.
func TestSchemaCases_PartitionedERPInvoices(t *testing.T) {
	const acc, ord = "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a11", "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a12"
	runSchemaCases(t, []schemaCase{{
		name:   "invoices partitioned by issued_at",
		erpDDL: partitionedInvoicesERP,
		crmDDL: `
ALTER TABLE invoices ADD COLUMN erp_issued_at timestamptz NOT NULL;
ALTER TABLE invoices ADD UNIQUE (erp_invoice_no, erp_issued_at);
`,
		mapping: partitionedInvoicesMapping(t),
		// A customer and an order both systems already have.
		before: []stmt{
			onCRM(`INSERT INTO accounts (id, name, currency, erp_customer_no, open_balance, payment_terms) VALUES ('` + acc + `', 'Acme', 'EUR', 1, 0, 'NET30')`),
			onCRM(`INSERT INTO orders (id, account_id, currency, total, status, ordered_at, erp_order_no, erp_status) VALUES ('` + ord + `', '` + acc + `', 'EUR', 300, 'won', '2024-02-01', 1, 'open')`),
			onERP(`INSERT INTO customers (customer_no, crm_account_id, name, currency) VALUES (1, '` + acc + `', 'Acme', 'EUR')`),
			onERP(`INSERT INTO sales_orders (order_no, crm_order_id, customer_no, currency, total, status, ordered_at) VALUES (1, '` + ord + `', 1, 'EUR', 300, 'confirmed', '2024-02-01')`),
			onERP(`INSERT INTO invoices (invoice_no, order_no, customer_no, currency, amount, status, issued_at, due_date) VALUES
				(1, 1, 1, 'EUR', 100, 'open', '2024-03-01', '2024-04-01'), (2, 1, 1, 'EUR', 100, 'open', '2025-02-01', '2025-03-01')`),
		},
		changes: []stmt{
			onERP(`INSERT INTO invoices (invoice_no, order_no, customer_no, currency, amount, status, issued_at, due_date) VALUES (3, 1, 1, 'EUR', 50, 'open', '2025-06-01', '2025-07-01')`),
			// A partition created while streaming, and an invoice in it.
			onERP(`CREATE TABLE invoices_2026 PARTITION OF invoices FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`),
			onERP(`INSERT INTO invoices (invoice_no, order_no, customer_no, currency, amount, status, issued_at, due_date) VALUES (4, 1, 1, 'EUR', 50, 'open', '2026-02-01', '2026-03-01')`),
			onERP(`UPDATE invoices SET paid_amount = 40, status = 'part_paid' WHERE invoice_no = 2`),
			// Moves invoice 1 from invoices_2024 to invoices_2025.
			onERP(`UPDATE invoices SET issued_at = '2025-03-01', due_date = '2025-04-01' WHERE invoice_no = 1`),
		},
		want: []want{wantCRM(`SELECT i.erp_invoice_no, to_char(i.erp_issued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), i.amount, i.paid_amount, i.status, i.due_date, a.name, o.erp_order_no
			FROM invoices i JOIN accounts a ON a.id = i.account_id JOIN orders o ON o.id = i.order_id ORDER BY 1`,
			"1|2025-03-01|100.00|0.00|open|2025-04-01|Acme|1",
			"2|2025-02-01|100.00|40.00|part_paid|2025-03-01|Acme|1",
			"3|2025-06-01|50.00|0.00|open|2025-07-01|Acme|1",
			"4|2026-02-01|50.00|0.00|open|2026-03-01|Acme|1")},
		verify: true,
	}, {
		// The example's mapping keys invoices by invoice_no alone, which
		// no unique index of this table can hold.
		name:    "invoices keyed by invoice_no alone",
		erpDDL:  partitionedInvoicesERP,
		mapping: string(exampleMapping(t)),
		refusal: "erp table public.invoices (entity invoice): the key (invoice_no) has no unique index, and cannot have one: the table is partitioned by (issued_at), and a unique index of a partitioned table must contain the partition key; make the key (invoice_no, issued_at)",
	}})
}

func exampleMapping(t *testing.T) []byte {
	t.Helper()
	b, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
