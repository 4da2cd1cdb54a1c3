package transform_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Two-way sync of the order-to-cash example: who publishes what, and the
// invoice, born in the ERP, on its way into the CRM.

const (
	invoiceNo  = "9001"
	customerNo = "42"
	orderNo    = "5001"
)

// invoiceRow is an ERP invoices row as the capture decodes it.
func invoiceRow(changes map[string]any) capture.Row {
	r := capture.Row{
		"invoice_no":  int64(9001),
		"order_no":    int64(5001),
		"customer_no": int64(42),
		"currency":    "EUR",
		"amount":      dec("1190.0000"),
		"paid_amount": dec("0.0000"),
		"status":      "open",
		"issued_at":   time.Date(2024, 3, 1, 12, 0, 0, 0, cet),
		"due_date":    time.Date(2024, 3, 31, 0, 0, 0, 0, time.UTC),
	}
	for k, v := range changes {
		r[k] = v
	}
	return r
}

// invoiceData is the canonical data of invoiceRow(nil): every invoice field,
// integers as strings, amounts as money with the row's currency.
func invoiceData() map[string]any {
	return map[string]any{
		"invoice_no":  invoiceNo,
		"customer_no": customerNo,
		"order_no":    orderNo,
		"currency":    "EUR",
		"amount":      transform.Money{Amount: "1190.0000", Currency: "EUR"},
		"paid_amount": transform.Money{Amount: "0.0000", Currency: "EUR"},
		"status":      "open",
		"due_date":    "2024-03-31",
	}
}

func TestEntity_Publishes(t *testing.T) {
	m := loadExample(t)
	tests := []struct {
		entity, system string
		want           bool
	}{
		{"customer", "crm", true},
		{"customer", "erp", true}, // customer_no, open_balance, payment_terms and the shared email
		{"order", "crm", true},
		{"order", "erp", true}, // order_no, fulfilment_status
		{"order_line", "crm", true},
		{"order_line", "erp", false}, // the ERP owns no order line field
		{"invoice", "crm", false},    // born in the ERP, the CRM only keeps a copy
		{"invoice", "erp", true},
		{"customer", "sap", false},
	}
	for _, tt := range tests {
		t.Run(tt.entity+" from "+tt.system, func(t *testing.T) {
			if got := m.Entity(tt.entity).Publishes(tt.system); got != tt.want {
				t.Errorf("%s.Publishes(%s) = %v, want %v", tt.entity, tt.system, got, tt.want)
			}
		})
	}
}

func TestEntity_SharedFields(t *testing.T) {
	m := loadExample(t)
	tests := []struct {
		entity, system string
		want           []string
	}{
		{"customer", "crm", []string{"email"}},
		{"customer", "erp", []string{"email"}},
		{"order", "crm", nil},
		{"order", "erp", nil},
		{"order_line", "erp", nil},
		{"invoice", "crm", nil},
		{"invoice", "erp", nil},
		{"customer", "sap", nil},
	}
	for _, tt := range tests {
		t.Run(tt.entity+" in "+tt.system, func(t *testing.T) {
			if got := m.Entity(tt.entity).SharedFields(tt.system); !slices.Equal(got, tt.want) {
				t.Errorf("%s.SharedFields(%s) = %v, want %v", tt.entity, tt.system, got, tt.want)
			}
		})
	}
}

func TestMapping_SourceTables(t *testing.T) {
	m := loadExample(t)
	tests := []struct {
		system string
		want   []string
	}{
		{"crm", []string{"public.accounts", "public.orders", "public.order_lines"}},
		{"erp", []string{"public.customers", "public.sales_orders", "public.invoices", "public.ledger_entries"}},
		{"sap", nil},
	}
	for _, tt := range tests {
		t.Run(tt.system, func(t *testing.T) {
			if got := m.SourceTables(tt.system); !slices.Equal(got, tt.want) {
				t.Errorf("SourceTables(%s) = %v, want %v", tt.system, got, tt.want)
			}
		})
	}
}

func TestRef_MatchFields(t *testing.T) {
	m := loadExample(t)
	cust := m.Entity("customer")
	if got := (&transform.Ref{Entity: "customer", Column: "customer_no"}).MatchFields(cust); !slices.Equal(got, []string{"account_id"}) {
		t.Errorf("MatchFields without match = %q, want the key account_id", got)
	}
	r := m.Entity("invoice").Tables["crm"].Columns["customer_no"].Ref
	if got := r.MatchFields(cust); !slices.Equal(got, []string{"customer_no"}) {
		t.Errorf("crm invoices account_id MatchFields = %q, want customer_no", got)
	}
	if got := r.FieldsFor("customer_no"); !slices.Equal(got, []string{"customer_no"}) {
		t.Errorf("FieldsFor without fields = %q, want the field itself", got)
	}
}

// TestMapping_Validate_refMatch breaks the match of the example's CRM
// invoice references.
func TestMapping_Validate_refMatch(t *testing.T) {
	tests := []struct {
		name    string
		change  func(m *transform.Mapping)
		wantMsg string
	}{
		{
			name: "match field the customer does not have",
			change: func(m *transform.Mapping) {
				m.Entity("invoice").Tables["crm"].Columns["customer_no"].Ref.Match = transform.Names{"erp_no"}
			},
			wantMsg: "entity invoice: crm column for customer_no matches customer.erp_no, which is not a field with a crm column",
		},
		{
			name:    "match field the crm does not store",
			change:  func(m *transform.Mapping) { delete(m.Entity("order").Tables["crm"].Columns, "order_no") },
			wantMsg: "entity invoice: crm column for order_no matches order.order_no, which is not a field with a crm column",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loadExample(t)
			tt.change(m)
			err := m.Validate()
			if got := joinedLen(err); got != 1 {
				t.Errorf("Validate reported %d problems, want 1:\n%v", got, err)
			}
			checkContainsAll(t, err, []string{tt.wantMsg})
		})
	}
}

func TestMapping_Normalize_invoice(t *testing.T) {
	tests := []struct {
		name    string
		system  string
		applied bool
		change  capture.Change
		want    []transform.Event
	}{
		{
			name:   "erp insert carries every invoice field",
			system: "erp",
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Insert, New: invoiceRow(nil)},
			want:   []transform.Event{event("erp", "invoice", transform.OpUpsert, invoiceNo, 3, 1, invoiceData())},
		},
		{
			name:   "erp update (a payment) carries every invoice field",
			system: "erp",
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Update,
				New: invoiceRow(map[string]any{"paid_amount": dec("1190.0000"), "status": "paid"})},
			want: []transform.Event{event("erp", "invoice", transform.OpUpsert, invoiceNo, 3, 1, func() map[string]any {
				d := invoiceData()
				d["paid_amount"] = transform.Money{Amount: "1190.0000", Currency: "EUR"}
				d["status"] = "paid"
				return d
			}())},
		},
		{
			name:   "erp delete propagates: the erp owns the key",
			system: "erp",
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Delete, Old: capture.Row{"invoice_no": int64(9001)}},
			want:   []transform.Event{event("erp", "invoice", transform.OpDelete, invoiceNo, 3, 0, nil)},
		},
		{
			name:   "crm invoices are not published",
			system: "crm",
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Update, New: capture.Row{
				"id": lineID, "erp_invoice_no": int64(9001), "account_id": acctID, "order_id": orderID, "currency": "EUR",
				"amount": dec("1190.00"), "paid_amount": dec("1190.00"), "status": "paid", "due_date": time.Date(2024, 3, 31, 0, 0, 0, 0, time.UTC)}},
			want: nil,
		},
		{
			name:   "crm invoice deletes are not published",
			system: "crm",
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Delete, Old: capture.Row{"id": lineID, "erp_invoice_no": int64(9001)}},
			want:   nil,
		},
		{
			name:    "an invoice duplex inserted into the crm is not news",
			system:  "crm",
			applied: true,
			change: capture.Change{Schema: "public", Table: "invoices", Op: capture.Insert, New: capture.Row{
				"id": lineID, "erp_invoice_no": int64(9001), "account_id": acctID, "order_id": orderID, "currency": "EUR",
				"amount": dec("1190.00"), "paid_amount": dec("0.00"), "status": "open", "due_date": time.Date(2024, 3, 31, 0, 0, 0, 0, time.UTC)}},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loadExample(t)
			tx := *testTx
			tx.Applied = tt.applied
			got, err := m.Normalize(tt.system, &tx, 3, &tt.change)
			if err != nil {
				t.Fatalf("Normalize: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Normalize() =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// normalizeInvoice captures an ERP invoice insert and returns its one event.
func normalizeInvoice(t *testing.T, m *transform.Mapping, changes map[string]any) *transform.Event {
	t.Helper()
	evs, err := m.Normalize("erp", testTx, 3, &capture.Change{Schema: "public", Table: "invoices", Op: capture.Insert, New: invoiceRow(changes)})
	if err != nil {
		t.Fatalf("Normalize: %v", err)
	}
	if len(evs) != 1 {
		t.Fatalf("Normalize gave %d events, want 1: %+v", len(evs), evs)
	}
	return &evs[0]
}

// TestMapping_Denormalize_invoiceIntoCRM follows an ERP invoice into the
// CRM: the account and the order are found through the customer's and the
// order's ERP numbers.
func TestMapping_Denormalize_invoiceIntoCRM(t *testing.T) {
	m := boundCRM(t)
	ev := normalizeInvoice(t, m, nil)
	for _, via := range []struct {
		name string
		ev   *transform.Event
	}{{"in memory", ev}, {"over JSON", overJSON(t, ev)}} {
		t.Run(via.name, func(t *testing.T) {
			row, err := m.Denormalize(via.ev, "crm")
			if err != nil {
				t.Fatalf("Denormalize: %v", err)
			}
			if row.Table.QualifiedTable() != "public.invoices" || row.Key != invoiceNo || row.Op != transform.OpUpsert {
				t.Errorf("row = %s key %q op %s, want public.invoices key %s upsert", row.Table.QualifiedTable(), row.Key, row.Op, invoiceNo)
			}
			want := map[string]string{
				"erp_invoice_no": invoiceNo,
				"account_id":     customerNo,
				"order_id":       orderNo,
				"currency":       "EUR",
				"amount":         "1190.0000",
				"paid_amount":    "0.0000",
				"status":         "open",
				"due_date":       "2024-03-31",
			}
			if got := values(row); !reflect.DeepEqual(got, want) {
				t.Errorf("values = %v, want %v", got, want)
			}
			refs := map[string]transform.Ref{}
			for _, v := range row.Values {
				if v.Ref != nil {
					refs[v.Column] = *v.Ref
				}
			}
			wantRefs := map[string]transform.Ref{
				"account_id": {Entity: "customer", Match: transform.Names{"customer_no"}, Column: "id"},
				"order_id":   {Entity: "order", Match: transform.Names{"order_no"}, Column: "id"},
			}
			if !reflect.DeepEqual(refs, wantRefs) {
				t.Errorf("refs = %+v, want %+v", refs, wantRefs)
			}
		})
	}
}

// TestMapping_Denormalize_invoiceAmountDoesNotFitCRM: the ERP keeps four
// decimals, the CRM two. Half a cent is refused, never rounded; zeros past
// the CRM's scale are no digits and go through.
func TestMapping_Denormalize_invoiceAmountDoesNotFitCRM(t *testing.T) {
	m := boundCRM(t)
	tests := []struct {
		name      string
		field     string
		amount    string
		wantValue string // FieldError value; "" for no error
	}{
		{name: "amount 10.005 EUR", field: "amount", amount: "10.0050", wantValue: "10.0050 EUR"},
		{name: "paid amount 0.0001 EUR", field: "paid_amount", amount: "0.0001", wantValue: "0.0001 EUR"},
		{name: "amount 10.0100 EUR fits", field: "amount", amount: "10.0100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := normalizeInvoice(t, m, map[string]any{tt.field: dec(tt.amount)})
			if got, want := ev.Data[tt.field], (transform.Money{Amount: tt.amount, Currency: "EUR"}); got != want {
				t.Fatalf("Normalize: %s = %v, want %v", tt.field, got, want)
			}
			row, err := m.Denormalize(ev, "crm")
			if tt.wantValue == "" {
				if err != nil {
					t.Fatalf("Denormalize: %v", err)
				}
				if got := values(row)[tt.field]; got != tt.amount {
					t.Errorf("%s = %q, want %q", tt.field, got, tt.amount)
				}
				return
			}
			if row != nil {
				t.Errorf("Denormalize returned a row %+v with its error", row.Values)
			}
			checkFieldError(t, err, "invoice", invoiceNo, tt.field, tt.wantValue)
			if err != nil && !strings.Contains(err.Error(), "numeric(18,2)") {
				t.Errorf("error %q does not name the column type numeric(18,2)", err)
			}
		})
	}
}
