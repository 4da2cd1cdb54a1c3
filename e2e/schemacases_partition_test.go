package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
