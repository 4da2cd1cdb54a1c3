package transform_test

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

const examplePath = "../examples/order-to-cash/mapping.yaml"

// Fixed identifiers used across the tests.
const (
	acctID  = "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a01"
	acctID2 = "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a02"
	orderID = "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01"
	lineID  = "9a8b7c6d-2222-4c59-9d1b-2d7b6c1f0c01"
)

// loadExample loads the order-to-cash mapping; every call returns a fresh
// copy so tests may bind or change it freely.
func loadExample(t testing.TB) *transform.Mapping {
	t.Helper()
	m, err := transform.Load(examplePath)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	return m
}

// col describes a column from its SQL type as format_type() prints it, the
// way internal/pgcatalog would read it. flags: "notnull", "default", "enum".
func col(name, sqlType string, flags ...string) *transform.ColumnInfo {
	c := &transform.ColumnInfo{Name: name, SQLType: sqlType, Precision: -1, Scale: -1, MaxLen: -1}
	base, mod, _ := strings.Cut(sqlType, "(")
	mod = strings.TrimSuffix(mod, ")")
	switch base {
	case "bigint":
		c.Type = "int8"
	case "integer":
		c.Type = "int4"
	case "smallint":
		c.Type = "int2"
	case "boolean":
		c.Type = "bool"
	case "timestamp with time zone":
		c.Type = "timestamptz"
	case "timestamp without time zone":
		c.Type = "timestamp"
	case "character":
		c.Type = "bpchar"
	case "character varying":
		c.Type = "varchar"
	default: // text, uuid, date, numeric, money, ...
		c.Type = base
	}
	c.CastType = c.Type
	if mod != "" {
		switch c.Type {
		case "numeric":
			p, s, _ := strings.Cut(mod, ",")
			pi, _ := strconv.Atoi(p)
			si, _ := strconv.Atoi(s)
			c.Precision, c.Scale = int32(pi), int32(si)
		case "bpchar", "varchar":
			c.MaxLen, _ = strconv.Atoi(mod)
		}
	}
	for _, f := range flags {
		switch f {
		case "notnull":
			c.NotNull = true
		case "default":
			c.HasDefault = true
		case "enum":
			c.IsEnum = true
		default:
			panic("unknown column flag " + f)
		}
	}
	return c
}

// table builds a TableInfo with REPLICA IDENTITY DEFAULT on the primary key
// pk; unique lists the other single-column unique indexes.
func table(pk string, unique []string, cols ...*transform.ColumnInfo) *transform.TableInfo {
	t := &transform.TableInfo{
		Columns:         map[string]*transform.ColumnInfo{},
		UniqueColumns:   map[string]bool{pk: true},
		ReplicaIdentity: 'd',
		IdentityColumns: []string{pk},
	}
	for _, u := range unique {
		t.UniqueColumns[u] = true
	}
	for _, c := range cols {
		t.Columns[c.Name] = c
	}
	return t
}

// fullTable is table with REPLICA IDENTITY FULL: the old row of an update
// or delete carries every column, in column order.
func fullTable(pk string, unique []string, cols ...*transform.ColumnInfo) *transform.TableInfo {
	t := table(pk, unique, cols...)
	t.ReplicaIdentity = 'f'
	t.IdentityColumns = nil
	for _, c := range cols {
		t.IdentityColumns = append(t.IdentityColumns, c.Name)
	}
	return t
}

// erpCatalog describes examples/order-to-cash/erp.sql.
func erpCatalog() *transform.Catalog {
	return &transform.Catalog{Tables: map[string]*transform.TableInfo{
		"public.customers": fullTable("customer_no", []string{"crm_account_id"},
			col("customer_no", "bigint", "notnull", "default"),
			col("crm_account_id", "uuid", "notnull"),
			col("name", "text", "notnull"),
			col("email", "text"),
			col("country", "character(2)"),
			col("currency", "character(3)", "notnull"),
			col("credit_limit_minor", "bigint"),
			col("open_balance", "numeric(19,4)", "notnull", "default"),
			col("payment_terms", "text", "notnull", "default"),
			col("updated_at", "timestamp with time zone", "notnull", "default"),
		),
		"public.sales_orders": fullTable("order_no", []string{"crm_order_id"},
			col("order_no", "bigint", "notnull", "default"),
			col("crm_order_id", "uuid", "notnull"),
			col("customer_no", "bigint", "notnull"),
			col("currency", "character(3)", "notnull"),
			col("total", "numeric(19,4)", "notnull"),
			col("status", "text", "notnull"),
			col("ordered_at", "timestamp with time zone", "notnull"),
			col("fulfilment_status", "text", "notnull", "default"),
		),
		"public.sales_order_lines": table("line_no", []string{"crm_line_id"},
			col("line_no", "bigint", "notnull", "default"),
			col("crm_line_id", "uuid", "notnull"),
			col("order_no", "bigint", "notnull"),
			col("sku", "text", "notnull"),
			col("quantity", "numeric(12,3)", "notnull"),
			col("unit_price", "numeric(19,4)", "notnull"),
		),
		"public.invoices": table("invoice_no", nil,
			col("invoice_no", "bigint", "notnull", "default"),
			col("order_no", "bigint", "notnull"),
			col("customer_no", "bigint", "notnull"),
			col("currency", "character(3)", "notnull"),
			col("amount", "numeric(19,4)", "notnull"),
			col("paid_amount", "numeric(19,4)", "notnull", "default"),
			col("status", "text", "notnull"),
			col("issued_at", "timestamp with time zone", "notnull"),
			col("due_date", "date", "notnull"),
		),
		"public.payments": table("payment_no", nil,
			col("payment_no", "bigint", "notnull", "default"),
			col("invoice_no", "bigint", "notnull"),
			col("amount", "numeric(19,4)", "notnull"),
			col("currency", "character(3)", "notnull"),
			col("received_at", "timestamp with time zone", "notnull"),
		),
		"public.ledger_entries": compositeTable([]string{"company", "entry_no"},
			col("company", "text", "notnull"),
			col("entry_no", "bigint", "notnull"),
			col("customer_no", "bigint", "notnull"),
			col("invoice_no", "bigint", "notnull"),
			col("kind", "text", "notnull"),
			col("currency", "character(3)", "notnull"),
			col("amount", "numeric(19,4)", "notnull"),
			col("posted_at", "timestamp with time zone", "notnull"),
		),
	}}
}

// compositeTable builds a TableInfo whose primary key is the columns pk
// (REPLICA IDENTITY DEFAULT).
func compositeTable(pk []string, cols ...*transform.ColumnInfo) *transform.TableInfo {
	t := table(pk[0], nil, cols...)
	t.UniqueColumns = map[string]bool{}
	t.UniqueKeys = [][]string{slices.Sorted(slices.Values(pk))}
	t.IdentityColumns = pk
	return t
}

// crmCatalog describes examples/order-to-cash/crm.sql (the mapped tables
// and those that are not mapped).
func crmCatalog() *transform.Catalog {
	return &transform.Catalog{Tables: map[string]*transform.TableInfo{
		"public.accounts": fullTable("id", []string{"erp_customer_no"},
			col("id", "uuid", "notnull"),
			col("name", "text", "notnull"),
			col("email", "text"),
			col("country", "character(2)"),
			col("currency", "character(3)", "notnull"),
			col("credit_limit", "numeric(18,2)"),
			col("erp_customer_no", "bigint"),
			col("open_balance", "numeric(18,2)"),
			col("payment_terms", "text"),
			col("updated_at", "timestamp with time zone", "notnull", "default"),
		),
		"public.contacts": table("id", nil,
			col("id", "uuid", "notnull"),
			col("account_id", "uuid", "notnull"),
			col("name", "text", "notnull"),
			col("email", "text"),
		),
		"public.opportunities": table("id", nil,
			col("id", "uuid", "notnull"),
			col("account_id", "uuid", "notnull"),
			col("title", "text", "notnull"),
			col("stage", "text", "notnull", "default"),
			col("amount", "numeric(18,2)"),
			col("currency", "character(3)", "notnull"),
		),
		"public.orders": table("id", []string{"erp_order_no"},
			col("id", "uuid", "notnull"),
			col("account_id", "uuid", "notnull"),
			col("currency", "character(3)", "notnull"),
			col("total", "numeric(18,2)", "notnull"),
			col("status", "text", "notnull"),
			col("ordered_at", "timestamp with time zone", "notnull"),
			col("erp_order_no", "bigint"),
			col("erp_status", "text"),
		),
		"public.order_lines": table("id", nil,
			col("id", "uuid", "notnull"),
			col("order_id", "uuid", "notnull"),
			col("sku", "text", "notnull"),
			col("quantity", "numeric(12,3)", "notnull"),
			col("unit_price", "numeric(18,4)", "notnull"),
		),
		"public.invoices": table("id", []string{"erp_invoice_no"},
			col("id", "uuid", "notnull", "default"),
			col("erp_invoice_no", "bigint", "notnull"),
			col("account_id", "uuid", "notnull"),
			col("order_id", "uuid"),
			col("currency", "character(3)", "notnull"),
			col("amount", "numeric(18,2)", "notnull"),
			col("paid_amount", "numeric(18,2)", "notnull"),
			col("status", "text", "notnull"),
			col("due_date", "date", "notnull"),
		),
		"public.ledger_entries": func() *transform.TableInfo {
			t := table("id", nil,
				col("id", "uuid", "notnull", "default"),
				col("erp_company", "text", "notnull"),
				col("erp_entry_no", "bigint", "notnull"),
				col("account_id", "uuid", "notnull"),
				col("invoice_id", "uuid", "notnull"),
				col("kind", "text", "notnull"),
				col("currency", "character(3)", "notnull"),
				col("amount", "numeric(18,2)", "notnull"),
				col("posted_at", "timestamp with time zone", "notnull"),
			)
			t.UniqueKeys = [][]string{{"id"}, {"erp_company", "erp_entry_no"}}
			return t
		}(),
	}}
}

// boundERP loads the example mapping and binds its ERP tables with Check.
func boundERP(t testing.TB) *transform.Mapping {
	t.Helper()
	m := loadExample(t)
	if err := m.Check("erp", erpCatalog(), "target"); err != nil {
		t.Fatalf("Check(erp, target): %v", err)
	}
	return m
}

// boundCRM loads the example mapping and binds its CRM tables with Check.
func boundCRM(t testing.TB) *transform.Mapping {
	t.Helper()
	m := loadExample(t)
	if err := m.Check("crm", crmCatalog(), "target"); err != nil {
		t.Fatalf("Check(crm, target): %v", err)
	}
	return m
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// testTx is the transaction all Normalize tests use.
var testTx = &capture.TxInfo{
	System:     "crm",
	CommitLSN:  0x16B374D848,
	EndLSN:     0x16B374D900,
	CommitTime: time.Date(2024, 3, 1, 11, 30, 0, 123000000, time.FixedZone("CET", 3600)),
	Xid:        4711,
}

// wantPos is the position of an event made from the change at index i,
// slot 0 (delete of an old key) or 1 (upsert).
func wantPos(i, slot int) transform.Position {
	return transform.Position{LSN: testTx.CommitLSN, CommitTime: testTx.CommitTime.UTC(), Xid: testTx.Xid, Index: transform.EventIndex(i, slot)}
}

// checkFieldError asserts err is a *transform.FieldError with these fields,
// whose message names them all.
func checkFieldError(t *testing.T, err error, entity, key, field, valueSub string) {
	t.Helper()
	var fe *transform.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *transform.FieldError", err, err)
	}
	if fe.Entity != entity || fe.Key != key || fe.Field != field || !strings.Contains(fe.Value, valueSub) {
		t.Errorf("FieldError = {Entity:%q Key:%q Field:%q Value:%q}, want {%q %q %q value containing %q}",
			fe.Entity, fe.Key, fe.Field, fe.Value, entity, key, field, valueSub)
	}
	msg := err.Error()
	for _, s := range []string{"entity " + entity, "key " + key, "field " + field, valueSub} {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not mention %q", msg, s)
		}
	}
	if !fe.Permanent() {
		t.Errorf("FieldError.Permanent() = false, want true")
	}
	if fe.Err == nil || !errors.Is(err, fe.Err) {
		t.Errorf("FieldError does not unwrap to its cause %v", fe.Err)
	}
}

// checkContainsAll asserts that err's message contains every substring.
func checkContainsAll(t *testing.T, err error, subs []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want one mentioning %q", subs)
	}
	msg := err.Error()
	for _, s := range subs {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not mention %q; error:\n%s", s, msg)
		}
	}
}

// joinedLen is the number of errors errors.Join put together (1 for a
// plain error, 0 for nil).
func joinedLen(err error) int {
	if err == nil {
		return 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	return 1
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("must: %v", err))
	}
	return v
}
