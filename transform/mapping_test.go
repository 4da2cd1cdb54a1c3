package transform_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/duplex-cdc/duplex/transform"
)

// baseMapping is a small valid mapping that the Parse cases break one
// problem at a time.
const baseMapping = `
version: 1
systems: [a, b]
entities:
  - name: group
    key: id
    fields:
      - {name: id, type: text, owner: a}
    systems:
      a: {table: groups, key_column: id, columns: {id: {column: id}}}
      b: {table: erp.groups, key_column: code, columns: {id: {column: code}}}
  - name: item
    key: id
    fields:
      - {name: id,       type: text,     owner: a}
      - {name: group_id, type: text,     owner: a}
      - {name: price,    type: money,    owner: a}
      - {name: cur,      type: currency, owner: a}
      - {name: state,    type: enum,     owner: both, values: [new, done]}
      - {name: qty,      type: integer,  owner: b}
    systems:
      a:
        table: items
        key_column: id
        columns:
          id:       {column: id}
          group_id: {column: group_id}
          price:    {column: price, currency_column: cur}
          cur:      {column: cur}
          state:    {column: state, enum: {N: new, D: done}}
          qty:      {column: qty}
      b:
        table: erp.items
        key_column: item_id
        columns:
          id:       {column: item_id}
          group_id: {column: group_no, ref: {entity: group, column: group_no}}
          price:    {column: price_minor, convert: money_minor, currency: EUR, rounding: half_even}
          state:    {column: state}
          qty:      {column: qty, convert: decimal}
          cur:      {convert: constant, value: EUR}
`

// edit applies old->new replacements to baseMapping and fails the test if
// one of them does not match.
func edit(t *testing.T, pairs ...string) string {
	t.Helper()
	s := baseMapping
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("edit: %q is not in the base mapping", pairs[i])
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		edits   []string
		wantErr []string // substrings of the error; nil: no error
	}{
		{name: "valid base mapping"},
		{
			name:    "unsupported version",
			edits:   []string{"version: 1", "version: 2"},
			wantErr: []string{"version 2 is not supported"},
		},
		{
			name:    "one system only",
			edits:   []string{"systems: [a, b]", "systems: [a]"},
			wantErr: []string{"systems: name at least two systems"},
		},
		{
			name:    "unknown YAML key",
			edits:   []string{"key_column: item_id", "keycolumn: item_id"},
			wantErr: []string{"parse mapping", "keycolumn"},
		},
		{
			name:    "unknown field type",
			edits:   []string{"type: integer", "type: int"},
			wantErr: []string{`entity item: field qty has unknown type "int"`},
		},
		{
			name:    "owner is not a system",
			edits:   []string{"{name: qty,      type: integer,  owner: b}", "{name: qty, type: integer, owner: sap}"},
			wantErr: []string{`entity item: field qty has owner "sap"; want one of a, b or both`},
		},
		{
			name:    "key is not a field",
			edits:   []string{"name: item\n    key: id", "name: item\n    key: sku"},
			wantErr: []string{`entity item: key "sku" is not one of its fields`},
		},
		{
			name:    "field defined twice",
			edits:   []string{"{name: qty,      type: integer,  owner: b}", "{name: qty, type: integer, owner: b}\n      - {name: qty, type: text, owner: a}"},
			wantErr: []string{"entity item: field qty is defined twice"},
		},
		{
			name:    "enum field without values",
			edits:   []string{"values: [new, done]", "values: []"},
			wantErr: []string{"entity item: enum field state lists no values"},
		},
		{
			name:  "defaults: a constant, a value, an SQL expression",
			edits: []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {region: EU, note: {value: ''}, created_by: {sql: current_user}}\n"},
		},
		{
			name:    "default with both value and sql",
			edits:   []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {region: {value: EU, sql: \"'EU'\"}}\n"},
			wantErr: []string{"entity item, system b: default for column region needs exactly one of value or sql"},
		},
		{
			name:    "default without a value",
			edits:   []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {region: {sql: ' '}}\n"},
			wantErr: []string{"entity item, system b: default for column region needs exactly one of value or sql"},
		},
		{
			name:    "default null",
			edits:   []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {region: null}\n"},
			wantErr: []string{"entity item, system b: default for column region needs exactly one of value or sql"},
		},
		{
			name:    "default with an unknown key",
			edits:   []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {region: {expr: now()}}\n"},
			wantErr: []string{"field expr not found in a default"},
		},
		{
			name:    "default for the key column",
			edits:   []string{"        key_column: item_id\n", "        key_column: item_id\n        default: {item_id: x}\n"},
			wantErr: []string{"entity item, system b: default for key column item_id"},
		},
		{
			name:    "money without currency_column or currency",
			edits:   []string{"price:    {column: price, currency_column: cur}", "price: {column: price}"},
			wantErr: []string{"entity item, system a: field price: money needs exactly one of currency_column or currency"},
		},
		{
			name:    "money with both currency_column and currency",
			edits:   []string{"price:    {column: price, currency_column: cur}", "price: {column: price, currency_column: cur, currency: EUR}"},
			wantErr: []string{"entity item, system a: field price: money needs exactly one of currency_column or currency"},
		},
		{
			name:    "fixed currency is not ISO 4217",
			edits:   []string{"currency: EUR, rounding", "currency: XXZ, rounding"},
			wantErr: []string{"entity item, system b: field price:", `unknown currency "XXZ"`},
		},
		{
			name:    "enum maps to a value not in values",
			edits:   []string{"D: done", "D: finished"},
			wantErr: []string{`entity item, system a: field state: enum maps "D" to "finished", which is not a value of the field`},
		},
		{
			name:    "enum converter without map",
			edits:   []string{"state:    {column: state}", "state: {column: state, convert: enum}"},
			wantErr: []string{"entity item, system b: field state: enum converter without an enum map"},
		},
		{
			name:    "converter does not fit the type",
			edits:   []string{"state:    {column: state}", "state: {column: state, convert: boolean}"},
			wantErr: []string{"entity item, system b: field state: converter boolean does not fit canonical type enum"},
		},
		{
			name:    "unknown converter",
			edits:   []string{"qty:      {column: qty, convert: decimal}", "qty: {column: qty, convert: roman}"},
			wantErr: []string{"entity item, system b: field qty: converter roman does not fit canonical type integer"},
		},
		{
			name:    "money_minor on a text field",
			edits:   []string{"group_id: {column: group_id}", "group_id: {column: group_id, convert: money_minor, currency: EUR}"},
			wantErr: []string{"entity item, system a: field group_id: converter money_minor does not fit canonical type text"},
		},
		{
			name:    "unknown rounding",
			edits:   []string{"rounding: half_even", "rounding: nearest"},
			wantErr: []string{`entity item, system b: field price: unknown rounding "nearest"`},
		},
		{
			name:    "constant without value",
			edits:   []string{"cur:      {convert: constant, value: EUR}", "cur: {convert: constant}"},
			wantErr: []string{"entity item, system b: field cur: constant without a value"},
		},
		{
			name:    "column mapping without column",
			edits:   []string{"cur:      {column: cur}", "cur: {convert: text}"},
			wantErr: []string{"entity item, system a: field cur: no column"},
		},
		{
			name:    "mapping for unknown field",
			edits:   []string{"cur:      {column: cur}", "cur: {column: cur}\n          colour: {column: colour}"},
			wantErr: []string{"entity item, system a: column mapping for unknown field colour"},
		},
		{
			name:    "key field maps to another column than key_column",
			edits:   []string{"id:       {column: item_id}", "id: {column: item_no}"},
			wantErr: []string{"entity item, system b: key field id maps to column item_no, but key_column is item_id"},
		},
		{
			name:    "key field not mapped",
			edits:   []string{"id:       {column: item_id}", ""},
			wantErr: []string{"entity item, system b: key field id has no column"},
		},
		{
			name:    "reference in the system that owns the field",
			edits:   []string{"group_id: {column: group_id}", "group_id: {column: group_id, ref: {entity: group, column: id}}"},
			wantErr: []string{"entity item: a table public.items maps field group_id (owner a) through a reference; references are resolved on the target side only"},
		},
		{
			name:    "no table",
			edits:   []string{"table: erp.items", "table: ''"},
			wantErr: []string{"entity item, system b: no table"},
		},
		{
			name:    "system not listed",
			edits:   []string{"      b:\n        table: erp.items", "      sap:\n        table: erp.items"},
			wantErr: []string{"entity item: system sap is not listed under systems"},
		},
		{
			name:    "duplicate entity",
			edits:   []string{"  - name: item\n", "  - name: group\n"},
			wantErr: []string{"entity group is defined twice"},
		},
		{
			name:    "ref to unknown entity",
			edits:   []string{"ref: {entity: group,", "ref: {entity: team,"},
			wantErr: []string{"entity item: b column for group_id refers to unknown entity team"},
		},
		{
			name:    "ref to entity without a table in the system",
			edits:   []string{"b: {table: erp.groups, key_column: code, columns: {id: {column: code}}}", ""},
			wantErr: []string{"entity item: b column for group_id refers to entity group, which has no b table"},
		},
		{
			name:    "ref without column",
			edits:   []string{"ref: {entity: group, column: group_no}", "ref: {entity: group}"},
			wantErr: []string{"entity item, system b: field group_id: ref needs entity and column"},
		},
		{
			name:  "ref matching the target's key explicitly",
			edits: []string{"ref: {entity: group, column: group_no}", "ref: {entity: group, match: id, column: group_no}"},
		},
		{
			name: "ref matching another field that has a column in the system",
			edits: []string{
				"      - {name: id, type: text, owner: a}\n", "      - {name: id, type: text, owner: a}\n      - {name: label, type: text, owner: a}\n",
				"a: {table: groups, key_column: id, columns: {id: {column: id}}}", "a: {table: groups, key_column: id, columns: {id: {column: id}, label: {column: label}}}",
				"b: {table: erp.groups, key_column: code, columns: {id: {column: code}}}", "b: {table: erp.groups, key_column: code, columns: {id: {column: code}, label: {column: label}}}",
				"ref: {entity: group, column: group_no}", "ref: {entity: group, match: label, column: group_no}",
			},
		},
		{
			name:    "ref matching a field the target does not have",
			edits:   []string{"ref: {entity: group, column: group_no}", "ref: {entity: group, match: colour, column: group_no}"},
			wantErr: []string{"entity item: b column for group_id matches group.colour, which is not a field with a b column"},
		},
		{
			name: "ref matching a field without a column in that system",
			edits: []string{
				"      - {name: id, type: text, owner: a}\n", "      - {name: id, type: text, owner: a}\n      - {name: label, type: text, owner: a}\n",
				"a: {table: groups, key_column: id, columns: {id: {column: id}}}", "a: {table: groups, key_column: id, columns: {id: {column: id}, label: {column: label}}}",
				"ref: {entity: group, column: group_no}", "ref: {entity: group, match: label, column: group_no}",
			},
			wantErr: []string{"entity item: b column for group_id matches group.label, which is not a field with a b column"},
		},
		{
			name: "ref matching a field that is a constant in that system",
			edits: []string{
				"      - {name: id, type: text, owner: a}\n", "      - {name: id, type: text, owner: a}\n      - {name: label, type: text, owner: a}\n",
				"a: {table: groups, key_column: id, columns: {id: {column: id}}}", "a: {table: groups, key_column: id, columns: {id: {column: id}, label: {column: label}}}",
				"b: {table: erp.groups, key_column: code, columns: {id: {column: code}}}", "b: {table: erp.groups, key_column: code, columns: {id: {column: code}, label: {convert: constant, value: x}}}",
				"ref: {entity: group, column: group_no}", "ref: {entity: group, match: label, column: group_no}",
			},
			wantErr: []string{"entity item: b column for group_id matches group.label, which is not a field with a b column"},
		},
		{
			name:    "bad truncate mode",
			edits:   []string{"name: item\n    key: id", "name: item\n    truncate: cascade\n    key: id"},
			wantErr: []string{`entity item: truncate "cascade": want refuse or propagate`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := transform.Parse([]byte(edit(t, tt.edits...)))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Parse: unexpected error: %v", err)
				}
				if m == nil {
					t.Fatal("Parse returned a nil mapping and no error")
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse: error = nil, want one mentioning %q", tt.wantErr)
			}
			if m != nil {
				t.Errorf("Parse returned a mapping along with error %v", err)
			}
			checkContainsAll(t, err, tt.wantErr)
		})
	}
}

// TestMapping_Validate checks that Validate reports every problem at once,
// each naming its entity and field.
func TestMapping_Validate(t *testing.T) {
	tests := []struct {
		name      string
		doc       string
		wantErr   bool
		wantCount int // number of joined errors
		wantMsgs  []string
	}{
		{
			name: "valid",
			doc:  baseMapping,
		},
		{
			name: "every problem at once",
			doc: `
version: 1
systems: [crm, erp]
entities:
  - name: customer
    key: id
    fields:
      - {name: id,     type: uuid,   owner: crm}
      - {name: level,  type: string, owner: crm}
      - {name: limit,  type: money,  owner: sap}
      - {name: status, type: enum,   owner: crm, values: [active, closed]}
      - {name: vip,    type: text,   owner: both}
    systems:
      crm:
        table: accounts
        key_column: id
        columns:
          id:     {column: id}
          limit:  {column: credit_limit}
          status: {column: status, enum: {A: active, X: deleted}}
          vip:    {column: vip, convert: boolean}
      erp:
        table: customers
        key_column: crm_id
        columns:
          id:     {column: crm_id, ref: {entity: account, column: no}}
  - name: customer
    key: code
    fields:
      - {name: id, type: uuid, owner: crm}
`,
			wantErr:   true,
			wantCount: 9,
			wantMsgs: []string{
				"entity customer: erp column for key field id is a reference; a key is stored as it is",
				`entity customer: field level has unknown type "string"`,
				`entity customer: field limit has owner "sap"`,
				"entity customer, system crm: field limit: money needs exactly one of currency_column or currency",
				`entity customer, system crm: field status: enum maps "X" to "deleted", which is not a value of the field`,
				"entity customer, system crm: field vip: converter boolean does not fit canonical type text",
				"entity customer is defined twice",
				`entity customer: key "code" is not one of its fields`,
				"entity customer: erp column for id refers to unknown entity account",
			},
		},
		{
			name:      "no entities, no systems, wrong version",
			doc:       "version: 0\n",
			wantErr:   true,
			wantCount: 2,
			wantMsgs:  []string{"version 0 is not supported (want 1)", "systems: name at least two systems"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m transform.Mapping
			if err := yaml.Unmarshal([]byte(tt.doc), &m); err != nil {
				t.Fatalf("yaml: %v", err)
			}
			err := m.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() error = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr {
				return
			}
			if got := joinedLen(err); got != tt.wantCount {
				t.Errorf("Validate() reported %d problems, want %d:\n%v", got, tt.wantCount, err)
			}
			checkContainsAll(t, err, tt.wantMsgs)
			// Parse reports the same problems.
			_, perr := transform.Parse([]byte(tt.doc))
			if perr == nil || joinedLen(perr) != tt.wantCount {
				t.Errorf("Parse() = %v, want the %d problems of Validate", perr, tt.wantCount)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nsystems: [a]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr []string
	}{
		{name: "example", path: examplePath},
		{name: "missing file", path: filepath.Join(dir, "nope.yaml"), wantErr: []string{"read mapping", "nope.yaml"}},
		{name: "invalid mapping names the file", path: bad, wantErr: []string{"mapping " + bad, "at least two systems"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := transform.Load(tt.path)
			if tt.wantErr != nil {
				checkContainsAll(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got, want := m.Systems, []string{"crm", "erp"}; !slices.Equal(got, want) {
				t.Errorf("Systems = %v, want %v", got, want)
			}
			var names []string
			for _, e := range m.Entities {
				names = append(names, e.Name)
			}
			if want := []string{"customer", "order", "order_line", "invoice", "ledger_entry"}; !slices.Equal(names, want) {
				t.Errorf("entities = %v, want %v", names, want)
			}
			if got, want := m.Tables("erp"), []string{"public.customers", "public.sales_orders", "public.sales_order_lines", "public.invoices", "public.ledger_entries"}; !slices.Equal(got, want) {
				t.Errorf("Tables(erp) = %v, want %v", got, want)
			}
			if got, want := m.Tables("crm"), []string{"public.accounts", "public.orders", "public.order_lines", "public.invoices", "public.ledger_entries"}; !slices.Equal(got, want) {
				t.Errorf("Tables(crm) = %v, want %v", got, want)
			}
			if e := m.Source("crm", "public.orders"); e == nil || e.Name != "order" {
				t.Errorf("Source(crm, public.orders) = %v, want entity order", e)
			}
			if e := m.Source("crm", "public.contacts"); e != nil {
				t.Errorf("Source(crm, public.contacts) = %s, want nil", e.Name)
			}
			if e := m.Source("erp", "public.invoices"); e == nil || e.Name != "invoice" {
				t.Errorf("Source(erp, public.invoices) = %v, want entity invoice", e)
			}
			if m.Entity("shipment") != nil {
				t.Error("Entity(shipment) is not nil")
			}
			inv := m.Entity("invoice")
			if inv == nil || !slices.Equal(inv.KeyFields(), []string{"invoice_no"}) {
				t.Fatalf("Entity(invoice) = %+v, want an entity keyed by invoice_no", inv)
			}
			if r := inv.Tables["crm"].Columns["customer_no"].Ref; r == nil || r.Entity != "customer" || !slices.Equal(r.Match, transform.Names{"customer_no"}) || r.Column != "id" {
				t.Errorf("crm invoices customer_no ref = %+v, want {customer customer_no id}", r)
			}
			if f := m.Entity("customer").Field("email"); f == nil || f.Owner != transform.OwnerBoth {
				t.Errorf("customer.email = %+v, want owner both", f)
			}
			cust := m.Entity("customer")
			if f := cust.Field("credit_limit"); f == nil || f.Type != transform.TypeMoney || f.Owner != "crm" {
				t.Errorf("customer.credit_limit = %+v, want a money field owned by crm", f)
			}
		})
	}
}

func TestTableMap_QualifiedTable(t *testing.T) {
	m, err := transform.Parse([]byte(baseMapping))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                   string
		entity, system         string
		wantQ, wantS, wantName string
	}{
		{name: "default schema", entity: "item", system: "a", wantQ: "public.items", wantS: "public", wantName: "items"},
		{name: "explicit schema", entity: "item", system: "b", wantQ: "erp.items", wantS: "erp", wantName: "items"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tm := m.Entity(tt.entity).Tables[tt.system]
			if tm.QualifiedTable() != tt.wantQ || tm.Schema() != tt.wantS || tm.Name() != tt.wantName {
				t.Errorf("got %q %q %q, want %q %q %q", tm.QualifiedTable(), tm.Schema(), tm.Name(), tt.wantQ, tt.wantS, tt.wantName)
			}
		})
	}
}
