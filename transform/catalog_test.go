package transform_test

import (
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/duplex-cdc/duplex/transform"
)

func TestMapping_Check(t *testing.T) {
	tests := []struct {
		name      string
		system    string
		role      string
		catalog   func() *transform.Catalog
		change    func(c *transform.Catalog)
		wantErr   bool
		wantCount int
		wantMsgs  []string
		// wantWarn: each is in one warning, and there are as many
		// warnings as these.
		wantWarn []string
		mapping  string // appended to the example mapping's last entity's erp table
	}{
		{name: "erp matches as target", system: "erp", role: "target", catalog: erpCatalog},
		{name: "crm matches as source", system: "crm", role: "source", catalog: crmCatalog},
		{name: "crm matches as both", system: "crm", role: "both", catalog: crmCatalog},
		{name: "erp matches as source", system: "erp", role: "source", catalog: erpCatalog},
		{name: "erp matches as both", system: "erp", role: "both", catalog: erpCatalog},
		{
			name: "missing table", system: "erp", role: "target", catalog: erpCatalog,
			change:    func(c *transform.Catalog) { delete(c.Tables, "public.sales_orders") },
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp table public.sales_orders (entity order): table does not exist"},
		},
		{
			name: "missing column", system: "erp", role: "target", catalog: erpCatalog,
			change:    func(c *transform.Catalog) { delete(c.Tables["public.customers"].Columns, "email") },
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp table public.customers (entity customer): column email (field email) does not exist"},
		},
		{
			name: "missing key column", system: "erp", role: "target", catalog: erpCatalog,
			change:    func(c *transform.Catalog) { delete(c.Tables["public.customers"].Columns, "crm_account_id") },
			wantErr:   true,
			wantCount: 2,
			wantMsgs: []string{
				"erp table public.customers (entity customer): key column crm_account_id does not exist",
				"column crm_account_id (field account_id) does not exist",
			},
		},
		{
			name: "missing currency column", system: "erp", role: "target", catalog: erpCatalog,
			change:    func(c *transform.Catalog) { delete(c.Tables["public.customers"].Columns, "currency") },
			wantErr:   true,
			wantCount: 3,
			wantMsgs: []string{
				"column currency (field currency) does not exist",
				"currency column currency (field credit_limit) does not exist",
				"currency column currency (field open_balance) does not exist",
			},
		},
		{
			name: "currency column is not text", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.sales_orders"].Columns["currency"] = col("currency", "integer", "notnull")
			},
			wantErr:   true,
			wantCount: 2,
			wantMsgs: []string{
				"erp table public.sales_orders (entity order): column currency (field currency): type integer cannot hold a currency field through converter text",
				"currency column currency (field total) has type integer, want text or char(3)",
			},
		},
		{
			name: "text column for a money field", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.sales_orders"].Columns["total"] = col("total", "text", "notnull")
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp table public.sales_orders (entity order): column total (field total): type text cannot hold a money field through converter money"},
		},
		{
			name: "numeric with decimals for minor units", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.customers"].Columns["credit_limit_minor"] = col("credit_limit_minor", "numeric(18,2)")
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"column credit_limit_minor (field credit_limit): type numeric(18,2) cannot hold a money field through converter money_minor"},
		},
		{
			name: "PostgreSQL money type is refused", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.sales_orders"].Columns["total"] = col("total", "money", "notnull")
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"column total (field total):", "lc_monetary", "use numeric"},
		},
		{
			name: "text column for a timestamp field", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.sales_orders"].Columns["ordered_at"] = col("ordered_at", "text", "notnull")
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"column ordered_at (field ordered_at): type text cannot hold a timestamp field through converter timestamp"},
		},
		{
			name: "key column without unique index", system: "erp", role: "target", catalog: erpCatalog,
			change:    func(c *transform.Catalog) { delete(c.Tables["public.customers"].UniqueColumns, "crm_account_id") },
			wantErr:   true,
			wantCount: 1,
			wantMsgs: []string{
				"erp table public.customers (entity customer): key column crm_account_id has no unique index",
				"CREATE UNIQUE INDEX ON public.customers (crm_account_id)",
			},
		},
		{
			// Updates of existing rows work (the sink updates what it
			// cannot insert); only inserts would fail: a warning.
			name: "NOT NULL column without default not mapped, target", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.customers"].Columns["segment"] = col("segment", "text", "notnull")
			},
			wantWarn: []string{"erp table public.customers (entity customer): column segment is NOT NULL without a default and not mapped: updates of existing rows are applied, but a row duplex inserts is dead-lettered; give it a value with default: in the mapping"},
		},
		{
			name: "NOT NULL column not mapped but given a default by the mapping", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.customers"].Columns["segment"] = col("segment", "text", "notnull")
			},
			mapping: "segment: {sql: \"'retail'\"}",
		},
		{
			name: "default for a column that does not exist", system: "erp", role: "target", catalog: erpCatalog,
			mapping:   "segment: retail",
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp table public.customers (entity customer): default for column segment, which does not exist"},
		},
		{
			name: "NOT NULL column without default not mapped, source only", system: "erp", role: "source", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.customers"].Columns["segment"] = col("segment", "text", "notnull")
				for _, ti := range c.Tables {
					ti.ReplicaIdentity = 'f'
				}
			},
		},
		{
			name: "ref column of the referenced table missing", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				ti := c.Tables["public.customers"]
				delete(ti.Columns, "customer_no")
				delete(ti.UniqueColumns, "customer_no")
			},
			wantErr:   true,
			wantCount: 2,
			wantMsgs: []string{
				"erp table public.sales_orders (entity order): field account_id refers to public.customers.customer_no, which does not exist",
				"erp table public.customers (entity customer): column customer_no (field customer_no) does not exist",
			},
		},
		{
			name: "REPLICA IDENTITY NOTHING, source", system: "crm", role: "source", catalog: crmCatalog,
			change:    func(c *transform.Catalog) { c.Tables["public.accounts"].ReplicaIdentity = 'n' },
			wantErr:   true,
			wantCount: 2,
			wantMsgs: []string{
				"crm table public.accounts (entity customer): REPLICA IDENTITY NOTHING cannot key deletes",
				"ALTER TABLE public.accounts REPLICA IDENTITY",
				"crm table public.accounts (entity customer): shared field(s) [email] need the old row",
			},
		},
		{
			name: "REPLICA IDENTITY NOTHING, target only", system: "crm", role: "target", catalog: crmCatalog,
			change: func(c *transform.Catalog) { c.Tables["public.accounts"].ReplicaIdentity = 'n' },
		},
		{
			name: "no identity columns, source", system: "crm", role: "source", catalog: crmCatalog,
			change:    func(c *transform.Catalog) { c.Tables["public.orders"].IdentityColumns = nil },
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"crm table public.orders (entity order): no primary key or replica identity index"},
		},
		{
			// sales_order_lines has the same problem, but the ERP does not
			// publish order lines (it owns none of their fields).
			name: "identity without the key column, source", system: "erp", role: "source", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				for _, name := range []string{"public.customers", "public.sales_orders"} {
					ti := c.Tables[name]
					ti.ReplicaIdentity = 'd'
					ti.IdentityColumns = ti.IdentityColumns[:1]
				}
			},
			wantErr:   true,
			wantCount: 3,
			wantMsgs: []string{
				"erp table public.customers (entity customer): deletes send only [customer_no], not key column crm_account_id",
				"erp table public.sales_orders (entity order): deletes send only [order_no], not key column crm_order_id",
				"erp table public.customers (entity customer): shared field(s) [email] need the old row",
			},
		},
		{
			name: "shared field on a table without REPLICA IDENTITY FULL, source", system: "crm", role: "source", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				ti := c.Tables["public.accounts"]
				ti.ReplicaIdentity = 'd'
				ti.IdentityColumns = []string{"id"}
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs: []string{
				"crm table public.accounts (entity customer): shared field(s) [email] need the old row of every update to tell which fields a write changed",
				"ALTER TABLE public.accounts REPLICA IDENTITY FULL",
			},
		},
		{
			name: "shared field on a table without REPLICA IDENTITY FULL, erp as both", system: "erp", role: "both", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				ti := c.Tables["public.customers"]
				ti.ReplicaIdentity = 'i'
				ti.IdentityColumns = []string{"crm_account_id"}
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp table public.customers (entity customer): shared field(s) [email] need the old row", "REPLICA IDENTITY FULL"},
		},
		{
			name: "shared field on a partitioned table with a partition without REPLICA IDENTITY FULL", system: "crm", role: "source", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.accounts"].PartitionIdentity = map[string]byte{"public.accounts_2": 'd', "public.accounts_1": 'f', "public.accounts_3": 'n'}
			},
			wantErr:   true,
			wantCount: 2,
			wantMsgs: []string{
				"crm table public.accounts (entity customer): shared field(s) [email] need the old row of every update, and partition(s) [public.accounts_2 public.accounts_3] do not send it",
				"crm table public.accounts (entity customer): partition(s) [public.accounts_3] have REPLICA IDENTITY NOTHING, which cannot key deletes",
			},
		},
		{
			name: "key of a partitioned table without the partition key", system: "erp", role: "both", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				ti := c.Tables["public.invoices"]
				ti.PartitionKey = []string{"issued_at"}
				delete(ti.UniqueColumns, "invoice_no")
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs: []string{"erp table public.invoices (entity invoice): the key (invoice_no) has no unique index, and cannot have one: the table is partitioned by (issued_at), " +
				"and a unique index of a partitioned table must contain the partition key; make the key (invoice_no, issued_at)"},
		},
		{
			name: "key of a partitioned table that is its partition key", system: "erp", role: "both", catalog: erpCatalog,
			change: func(c *transform.Catalog) { c.Tables["public.invoices"].PartitionKey = []string{"invoice_no"} },
		},
		{
			name: "partitions with REPLICA IDENTITY FULL", system: "crm", role: "source", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.accounts"].PartitionIdentity = map[string]byte{"public.accounts_1": 'f', "public.accounts_2": 'f'}
			},
		},
		{
			name: "shared field without REPLICA IDENTITY FULL, target only", system: "crm", role: "target", catalog: crmCatalog,
			change: func(c *transform.Catalog) { c.Tables["public.accounts"].ReplicaIdentity = 'd' },
		},
		{
			name: "tables a system does not publish need not key deletes", system: "erp", role: "source", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				ti := c.Tables["public.sales_order_lines"]
				ti.ReplicaIdentity = 'n'
				ti.IdentityColumns = nil
			},
		},
		{
			name: "crm invoices are not published, so their deletes need no key", system: "crm", role: "source", catalog: crmCatalog,
			change: func(c *transform.Catalog) { c.Tables["public.invoices"].ReplicaIdentity = 'n' },
		},
		{
			name: "invoices are born in the erp: crm invoices must accept inserts", system: "crm", role: "target", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.invoices"].Columns["note"] = col("note", "text", "notnull")
			},
			wantWarn: []string{"crm table public.invoices (entity invoice): column note is NOT NULL without a default and not mapped"},
		},
		{
			// issued_at is NOT NULL without a default and not mapped: fine,
			// duplex never creates ERP invoices.
			name: "invoices are born in the erp: erp invoices need not accept inserts", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.invoices"].Columns["note"] = col("note", "text", "notnull")
			},
		},
		{
			name: "customers are born in the crm: an unmapped NOT NULL column there is not checked", system: "crm", role: "both", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				c.Tables["public.accounts"].Columns["segment"] = col("segment", "text", "notnull")
			},
		},
		{
			name: "role that may do everything", system: "erp", role: "both", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Role = &transform.RoleInfo{Name: "duplex", Replication: true, Origins: true, TrackCommitTimestamp: true}
			},
		},
		{
			name: "role without replication, origins, commit timestamps", system: "crm", role: "both", catalog: crmCatalog,
			change: func(c *transform.Catalog) {
				c.Role = &transform.RoleInfo{Name: "duplex"}
			},
			wantErr:   true,
			wantCount: 3,
			wantMsgs: []string{
				"crm table public.accounts (entity customer): shared field(s) [email] are resolved by commit time; set track_commit_timestamp = on",
				"crm: role duplex cannot stream a replication slot",
				"crm: role duplex may not execute pg_replication_origin_oid(text), pg_replication_origin_create(text)",
			},
		},
		{
			name: "role that may not look up an origin", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Role = &transform.RoleInfo{Name: "duplex", MissingOrigins: []string{"pg_replication_origin_oid(text)"}, TrackCommitTimestamp: true}
			},
			wantErr:   true,
			wantCount: 1,
			wantMsgs:  []string{"erp: role duplex may not execute pg_replication_origin_oid(text), which duplex applies under (replication origins); GRANT EXECUTE ON FUNCTION pg_replication_origin_oid(text) TO duplex"},
		},
		{
			name: "target role without replication is fine", system: "erp", role: "target", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				c.Role = &transform.RoleInfo{Name: "duplex", Origins: true, TrackCommitTimestamp: true}
			},
		},
		{
			name: "REPLICA IDENTITY FULL keys deletes, source", system: "erp", role: "source", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				for _, ti := range c.Tables {
					ti.ReplicaIdentity = 'f'
				}
			},
		},
		{
			name: "every problem at once", system: "erp", role: "both", catalog: erpCatalog,
			change: func(c *transform.Catalog) {
				delete(c.Tables, "public.sales_order_lines")
				cu := c.Tables["public.customers"]
				delete(cu.Columns, "email")
				delete(cu.UniqueColumns, "crm_account_id")
				cu.Columns["credit_limit_minor"] = col("credit_limit_minor", "text")
				cu.Columns["segment"] = col("segment", "text", "notnull")
				cu.ReplicaIdentity = 'n'
				so := c.Tables["public.sales_orders"]
				so.Columns["total"] = col("total", "money", "notnull")
				so.ReplicaIdentity = 'f'
			},
			wantErr:   true,
			wantCount: 7,
			wantWarn:  []string{"erp table public.customers (entity customer): column segment is NOT NULL without a default and not mapped"},
			wantMsgs: []string{
				"erp table public.customers (entity customer): shared field(s) [email] need the old row",
				"erp table public.sales_order_lines (entity order_line): table does not exist",
				"erp table public.customers (entity customer): column email (field email) does not exist",
				"erp table public.customers (entity customer): key column crm_account_id has no unique index",
				"erp table public.customers (entity customer): column credit_limit_minor (field credit_limit): type text cannot hold a money field through converter money_minor",
				"erp table public.customers (entity customer): REPLICA IDENTITY NOTHING",
				"erp table public.sales_orders (entity order): column total (field total): type money depends on the server's lc_monetary",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loadExample(t)
			if tt.mapping != "" {
				m.Entity("customer").Tables["erp"].Default = parseDefaults(t, tt.mapping)
			}
			cat := tt.catalog()
			if tt.change != nil {
				tt.change(cat)
			}
			warns, err := m.CheckReport(tt.system, cat, tt.role)
			if len(warns) != len(tt.wantWarn) {
				t.Errorf("warnings = %q, want %d", warns, len(tt.wantWarn))
			}
			for _, w := range tt.wantWarn {
				if !slices.ContainsFunc(warns, func(s string) bool { return strings.Contains(s, w) }) {
					t.Errorf("no warning contains %q; warnings: %q", w, warns)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("Check(%s, %s) error = %v, wantErr %v", tt.system, tt.role, err, tt.wantErr)
			}
			if !tt.wantErr {
				return
			}
			if got := joinedLen(err); got != tt.wantCount {
				t.Errorf("Check reported %d problems, want %d:\n%v", got, tt.wantCount, err)
			}
			checkContainsAll(t, err, tt.wantMsgs)
		})
	}
}

// TestMapping_CheckTarget: the sink of a flow needs the columns of the
// fields the flow carries; a column of a field the target owns alone
// (accounts.country in the CRM, for the flow from the ERP) may be missing,
// as while the CRM's capture holds the entity after it was dropped.
func TestMapping_CheckTarget(t *testing.T) {
	tests := []struct {
		name    string
		drop    string
		wantErr string
	}{
		{name: "fits"},
		{name: "a column the target owns alone", drop: "country"},
		{name: "a column of a field the source owns", drop: "payment_terms", wantErr: "column payment_terms (field payment_terms) does not exist"},
		{name: "a column of a shared field", drop: "email", wantErr: "column email (field email) does not exist"},
		{name: "the currency column of a carried amount", drop: "currency", wantErr: "currency column currency (field open_balance) does not exist"},
		{name: "the key column", drop: "id", wantErr: "key column id does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loadExample(t)
			cat := crmCatalog()
			delete(cat.Tables["public.accounts"].Columns, tt.drop)
			err := m.CheckTarget("crm", "erp", cat)
			if (err != nil) != (tt.wantErr != "") {
				t.Fatalf("CheckTarget(crm, erp) without accounts.%s: error = %v, want %q", tt.drop, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CheckTarget error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	// Check (the start-up check of a system that is also a source) still
	// requires every mapped column.
	cat := crmCatalog()
	delete(cat.Tables["public.accounts"].Columns, "country")
	if err := loadExample(t).Check("crm", cat, "both"); err == nil || !strings.Contains(err.Error(), "column country (field country) does not exist") {
		t.Errorf("Check(crm, both) without accounts.country = %v, want the missing column", err)
	}
}

// TestMapping_Check_binds checks that Check binds the column descriptions
// Denormalize needs: without it, numeric limits are not known and nothing is
// refused; with it, the same event is refused.
func TestMapping_Check_binds(t *testing.T) {
	ev := &transform.Event{
		Source: "crm", Entity: "order", Op: transform.OpUpsert, Key: orderID,
		Data: map[string]any{"total": transform.Money{Amount: "1.23456", Currency: "EUR"}},
	}
	unbound := loadExample(t)
	row, err := unbound.Denormalize(ev, "erp")
	if err != nil {
		t.Fatalf("unbound Denormalize: %v", err)
	}
	if len(row.Values) != 1 || row.Values[0].Column != "total" || row.Values[0].Text != "1.23456" || len(row.Guards) != 1 || row.Guards[0].Text != "EUR" {
		t.Errorf("unbound Denormalize values = %+v, want total 1.23456", row.Values)
	}
	bound := boundERP(t)
	_, err = bound.Denormalize(ev, "erp")
	checkFieldError(t, err, "order", orderID, "total", "1.23456")
	if err != nil && !strings.Contains(err.Error(), "numeric(19,4)") {
		t.Errorf("error %q does not name the column type numeric(19,4)", err)
	}
}

// parseDefaults reads the default: map of a table from YAML.
func parseDefaults(t *testing.T, doc string) map[string]*transform.ColumnDefault {
	t.Helper()
	var d map[string]*transform.ColumnDefault
	if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
		t.Fatal(err)
	}
	return d
}
