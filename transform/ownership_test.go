package transform_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

func erpCustomerRow(changes map[string]any) capture.Row {
	r := capture.Row{
		"customer_no": int64(1), "crm_account_id": acctID, "name": "Acme GmbH", "email": "ap@acme.example",
		"country": "DE", "currency": "EUR", "credit_limit_minor": int64(123450), "updated_at": time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC),
		"open_balance": dec("17.0000"), "payment_terms": "NET30",
	}
	for k, v := range changes {
		r[k] = v
	}
	return r
}

// Case 10 of issue 11: a row made by the system that does not own the
// entity's key is refused (never an edit of the owner's row of that key);
// copies (snapshot, backfill) and duplex's own applies are not.
func TestNormalize_InsertByNonOwnerOfTheKey(t *testing.T) {
	m := loadExample(t)
	ins := &capture.Change{Schema: "public", Table: "customers", Op: capture.Insert, New: erpCustomerRow(nil)}
	tx := *testTx
	tx.System = "erp"
	evs, err := m.Normalize("erp", &tx, 0, ins)
	var oe *transform.OwnershipError
	if !errors.As(err, &oe) {
		t.Fatalf("Normalize(erp insert into customers) = %+v, %v; want an OwnershipError", evs, err)
	}
	if oe.System != "erp" || oe.Entity != "customer" || oe.Key != acctID || oe.Owner != "crm" || oe.Op != "insert" || oe.Table != "public.customers" {
		t.Errorf("OwnershipError = %+v", oe)
	}
	for _, sub := range []string{"erp inserted", "public.customers", "entity customer", "key " + acctID, "crm owns the entity's key"} {
		if !strings.Contains(err.Error(), sub) {
			t.Errorf("error %q lacks %q", err, sub)
		}
	}
	for name, mod := range map[string]func(*capture.TxInfo){
		"snapshot copy":  func(t *capture.TxInfo) { t.Snapshot = true },
		"duplex's apply": func(t *capture.TxInfo) { t.Applied = true },
	} {
		tx := *testTx
		mod(&tx)
		if _, err := m.Normalize("erp", &tx, 0, ins); err != nil {
			t.Errorf("%s of an erp customer row: %v", name, err)
		}
	}
	// The owner's insert is what creates rows.
	if _, err := m.Normalize("crm", testTx, 0, &capture.Change{Schema: "public", Table: "accounts", Op: capture.Insert, New: accountRow(acctID, nil)}); err != nil {
		t.Errorf("crm insert: %v", err)
	}
	// A key changed by the non-owner would move the row onto another of
	// the owner's rows.
	upd := &capture.Change{Schema: "public", Table: "customers", Op: capture.Update, New: erpCustomerRow(map[string]any{"crm_account_id": acctID2}),
		Old: capture.Row{"crm_account_id": acctID}}
	if _, err := m.Normalize("erp", testTx, 0, upd); !errors.As(err, &oe) || oe.Op != "key change" {
		t.Errorf("erp key change: err = %v, want an OwnershipError (key change)", err)
	}
}

// Case 11(a): an edit by erp of fields crm owns (name, credit_limit) is
// reported on the event (Violated), never carried; with the old row
// (REPLICA IDENTITY FULL) only fields that changed count.
func TestNormalize_EditOfAFieldAnotherSystemOwns(t *testing.T) {
	m := loadExample(t)
	old := erpCustomerRow(nil)
	tests := []struct {
		name         string
		applied      bool
		new, oldRow  capture.Row
		wantViolated []string
		wantData     map[string]any // nil: no event; the shared email, unchanged, is left out when the old row is there
	}{
		{name: "name and credit limit edited in erp", new: erpCustomerRow(map[string]any{"name": "Other", "credit_limit_minor": int64(1)}), oldRow: old,
			wantViolated: []string{"name", "credit_limit"}, wantData: map[string]any{"account_id": acctID, "customer_no": "1",
				"open_balance": transform.Money{Amount: "17.0000", Currency: "EUR"}, "payment_terms": "NET30"}},
		{name: "only erp's own field edited", new: erpCustomerRow(map[string]any{"payment_terms": "NET60"}), oldRow: old,
			wantData: map[string]any{"account_id": acctID, "customer_no": "1",
				"open_balance": transform.Money{Amount: "17.0000", Currency: "EUR"}, "payment_terms": "NET60"}},
		{name: "duplex's own apply is no violation", applied: true, new: erpCustomerRow(map[string]any{"name": "From CRM"}), oldRow: old},
		{name: "without the old row nothing can be told", new: erpCustomerRow(map[string]any{"name": "Other"}),
			wantData: map[string]any{"account_id": acctID, "customer_no": "1", "email": "ap@acme.example",
				"open_balance": transform.Money{Amount: "17.0000", Currency: "EUR"}, "payment_terms": "NET30"}},
		{name: "an unchanged TOAST value is no edit", new: erpCustomerRow(map[string]any{"name": capture.Unchanged{}}), oldRow: old,
			wantData: map[string]any{"account_id": acctID, "customer_no": "1",
				"open_balance": transform.Money{Amount: "17.0000", Currency: "EUR"}, "payment_terms": "NET30"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := *testTx
			tx.Applied = tt.applied
			evs, err := m.Normalize("erp", &tx, 0, &capture.Change{Schema: "public", Table: "customers", Op: capture.Update, New: tt.new, Old: tt.oldRow})
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantData == nil {
				if len(evs) != 0 {
					t.Fatalf("events %+v, want none", evs)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("events %+v, want one", evs)
			}
			if !reflect.DeepEqual(evs[0].Violated, tt.wantViolated) {
				t.Errorf("Violated = %v, want %v", evs[0].Violated, tt.wantViolated)
			}
			if !reflect.DeepEqual(evs[0].Data, tt.wantData) {
				t.Errorf("Data = %v, want %v", evs[0].Data, tt.wantData)
			}
		})
	}
}

// An edit of only fields another system owns, in an entity the editing
// system owns nothing of, still makes an event (the key and Violated)
// when the entity enforces ownership; without enforce: owner such a
// table is not published at all.
func TestNormalize_ViolationOnlyEvent(t *testing.T) {
	m := loadExample(t)
	e := m.Entity("order_line")
	if e.Publishes("erp") {
		t.Fatal("erp publishes order_line without enforce: owner")
	}
	e.Enforce = transform.EnforceOwner
	if !e.Publishes("erp") {
		t.Fatal("erp does not publish order_line with enforce: owner")
	}
	row := capture.Row{"line_no": int64(1), "crm_line_id": lineID, "order_no": int64(5), "sku": "A", "quantity": dec("1.000"), "unit_price": dec("2.0000")}
	changed := capture.Row{}
	for k, v := range row {
		changed[k] = v
	}
	changed["quantity"] = dec("3.000")
	evs, err := m.Normalize("erp", testTx, 0, &capture.Change{Schema: "public", Table: "sales_order_lines", Op: capture.Update, New: changed, Old: row})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || !reflect.DeepEqual(evs[0].Violated, []string{"quantity"}) || !reflect.DeepEqual(evs[0].Data, map[string]any{"line_id": lineID}) {
		t.Errorf("events = %+v, want one with Violated [quantity] and only the key", evs)
	}
	evs, err = m.Normalize("erp", testTx, 0, &capture.Change{Schema: "public", Table: "sales_order_lines", Op: capture.Update, New: row, Old: row})
	if err != nil || len(evs) != 0 {
		t.Errorf("an update that changed nothing: %+v, %v; want no event", evs, err)
	}
}

// enforce: owner needs the non-owner's old rows (REPLICA IDENTITY FULL);
// Check refuses without, naming the table and the fix.
func TestCheck_EnforceOwnerNeedsFullReplicaIdentity(t *testing.T) {
	m := loadExample(t)
	m.Entity("order").Enforce = transform.EnforceOwner
	cat := erpCatalog()
	cat.Tables["public.sales_orders"].ReplicaIdentity = 'd'
	err := m.Check("erp", cat, "both")
	if err == nil || !strings.Contains(err.Error(), "erp table public.sales_orders (entity order): enforce: owner needs the old row") ||
		!strings.Contains(err.Error(), "ALTER TABLE public.sales_orders REPLICA IDENTITY FULL") {
		t.Errorf("Check = %v, want the refusal naming public.sales_orders", err)
	}
	cat.Tables["public.sales_orders"].ReplicaIdentity = 'f'
	if err := m.Check("erp", cat, "both"); err != nil && strings.Contains(err.Error(), "enforce") {
		t.Errorf("Check with FULL: %v", err)
	}
}

func TestMapping_Validate_EnforceAndSequence(t *testing.T) {
	for name, mod := range map[string]func(*transform.Entity){
		"unknown enforce":      func(e *transform.Entity) { e.Enforce = "always" },
		"unknown sequence":     func(e *transform.Entity) { e.Sequence = "lead" },
		"follow on a uuid key": func(e *transform.Entity) { e.Sequence = transform.SequenceFollow },
	} {
		m := loadExample(t)
		mod(m.Entity("customer"))
		if err := m.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	m := loadExample(t)
	m.Entity("invoice").Sequence = transform.SequenceFollow
	m.Entity("invoice").Enforce = transform.EnforceOwner
	if err := m.Validate(); err != nil {
		t.Errorf("follow on an integer key, enforce owner: %v", err)
	}
}
