package transform_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

func customerEvent(amount, currency string) *transform.Event {
	return &transform.Event{
		Version: transform.SchemaVersion, ID: "crm:0/10:1", Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID,
		Data: map[string]any{
			"account_id":   acctID,
			"currency":     currency,
			"credit_limit": transform.Money{Amount: amount, Currency: currency},
		},
	}
}

func orderEvent(data map[string]any) *transform.Event {
	d := map[string]any{"order_id": orderID}
	for k, v := range data {
		d[k] = v
	}
	return &transform.Event{Version: transform.SchemaVersion, ID: "crm:0/10:3", Source: "crm", Entity: "order", Op: transform.OpUpsert, Key: orderID, Data: d}
}

// values maps column -> text ("NULL" for SQL NULL) of a row.
func values(r *transform.Row) map[string]string {
	out := map[string]string{}
	for _, v := range r.Values {
		if v.Null {
			out[v.Column] = "NULL"
		} else {
			out[v.Column] = v.Text
		}
	}
	return out
}

func TestMapping_Denormalize(t *testing.T) {
	tests := []struct {
		name       string
		ev         *transform.Event
		want       map[string]string // every column written
		wantErr    bool
		wantErrKey string // FieldError: key, field and value
		wantField  string
		wantValue  string
		wantMsg    string
	}{
		{
			name: "credit limit EUR into minor units",
			ev:   customerEvent("1234.50", "EUR"),
			want: map[string]string{"crm_account_id": acctID, "currency": "EUR", "credit_limit_minor": "123450"},
		},
		{
			name: "credit limit JPY has no minor unit",
			ev:   customerEvent("1000", "JPY"),
			want: map[string]string{"crm_account_id": acctID, "currency": "JPY", "credit_limit_minor": "1000"},
		},
		{
			name: "credit limit BHD has three decimals",
			ev:   customerEvent("12.345", "BHD"),
			want: map[string]string{"crm_account_id": acctID, "currency": "BHD", "credit_limit_minor": "12345"},
		},
		{
			name: "one cent",
			ev:   customerEvent("0.01", "USD"),
			want: map[string]string{"crm_account_id": acctID, "currency": "USD", "credit_limit_minor": "1"},
		},
		{
			name: "negative amount",
			ev:   customerEvent("-5.5", "EUR"),
			want: map[string]string{"crm_account_id": acctID, "currency": "EUR", "credit_limit_minor": "-550"},
		},
		{
			name: "zeros past the currency's decimals are no digits",
			ev:   customerEvent("10.000", "JPY"),
			want: map[string]string{"crm_account_id": acctID, "currency": "JPY", "credit_limit_minor": "10"},
		},
		{
			name:    "half a cent does not fit minor units",
			ev:      customerEvent("10.005", "EUR"),
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "10.005",
			wantMsg: "more than the 2 decimals of its currency",
		},
		{
			name:    "yen with decimals",
			ev:      customerEvent("10.5", "JPY"),
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "10.5",
		},
		{
			name:    "minor units beyond bigint",
			ev:      customerEvent("92233720368547758.08", "EUR"),
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "92233720368547758.08",
			wantMsg: "out of range",
		},
		{
			name: "largest bigint of minor units",
			ev:   customerEvent("92233720368547758.07", "EUR"),
			want: map[string]string{"crm_account_id": acctID, "currency": "EUR", "credit_limit_minor": "9223372036854775807"},
		},
		{
			// The currency text itself is written as is; the amount is refused.
			name:    "unknown currency",
			ev:      customerEvent("1", "XXZ"),
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "XXZ",
			wantMsg: `unknown currency "XXZ"`,
		},
		{
			name: "all customer fields, NULL email, timestamp in UTC",
			ev: &transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
				"account_id": acctID, "name": "Acme GmbH", "email": nil, "country": "DE", "currency": "EUR",
				"credit_limit": transform.Money{Amount: "1234.50", Currency: "EUR"}, "updated_at": "2024-03-01T10:00:00+01:00",
			}},
			want: map[string]string{"crm_account_id": acctID, "name": "Acme GmbH", "email": "NULL", "country": "DE", "currency": "EUR",
				"credit_limit_minor": "123450", "updated_at": "2024-03-01T09:00:00Z"},
		},
		{
			name: "country longer than char(2)",
			ev: &transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
				"country": "DEU",
			}},
			wantErr: true, wantErrKey: acctID, wantField: "country", wantValue: "DEU",
			wantMsg: "longer than the 2 characters of column country",
		},
		{
			name: "bad timestamp",
			ev: &transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
				"updated_at": "01.03.2024",
			}},
			wantErr: true, wantErrKey: acctID, wantField: "updated_at", wantValue: "01.03.2024",
		},
		{
			name: "money that is not money",
			ev: &transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
				"credit_limit": "12.50",
			}},
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "12.50",
		},
		{
			name:    "money amount that is not a number",
			ev:      customerEvent("12,50", "EUR"),
			wantErr: true, wantErrKey: acctID, wantField: "credit_limit", wantValue: "12,50",
		},
		{
			name: "fields not owned by the source are not written",
			ev: &transform.Event{Source: "erp", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
				"account_id": acctID, "name": "from erp", "credit_limit": transform.Money{Amount: "1", Currency: "EUR"}, "currency": "EUR",
			}},
			want: map[string]string{"crm_account_id": acctID},
		},
		{
			name: "order total into numeric(19,4)",
			ev:   orderEvent(map[string]any{"currency": "EUR", "total": transform.Money{Amount: "1234.50", Currency: "EUR"}}),
			want: map[string]string{"crm_order_id": orderID, "currency": "EUR", "total": "1234.50"},
		},
		{
			name:    "order total whose currency differs from the currency field",
			ev:      orderEvent(map[string]any{"currency": "USD", "total": transform.Money{Amount: "1.00", Currency: "EUR"}}),
			wantErr: true, wantErrKey: orderID, wantField: "currency", wantValue: "USD",
			wantMsg: "currency column currency would hold \"USD\" but an amount of the same row is in EUR",
		},
		{
			name: "order total with four decimals",
			ev:   orderEvent(map[string]any{"total": transform.Money{Amount: "0.0001", Currency: "EUR"}}),
			want: map[string]string{"crm_order_id": orderID, "total": "0.0001"}, // the currency becomes a guard
		},
		{
			name: "order total with zeros beyond the scale keeps its text",
			ev:   orderEvent(map[string]any{"total": transform.Money{Amount: "1.2300000", Currency: "EUR"}}),
			want: map[string]string{"crm_order_id": orderID, "total": "1.2300000"}, // the currency becomes a guard
		},
		{
			name:    "order total with five decimals",
			ev:      orderEvent(map[string]any{"total": transform.Money{Amount: "1.23456", Currency: "EUR"}}),
			wantErr: true, wantErrKey: orderID, wantField: "total", wantValue: "1.23456",
			wantMsg: "has more than the 4 decimals of column total numeric(19,4)",
		},
		{
			name: "order total with fifteen integer digits",
			ev:   orderEvent(map[string]any{"total": transform.Money{Amount: "123456789012345.67", Currency: "EUR"}}),
			want: map[string]string{"crm_order_id": orderID, "total": "123456789012345.67"}, // the currency becomes a guard
		},
		{
			name: "largest numeric(19,4)",
			ev:   orderEvent(map[string]any{"total": transform.Money{Amount: "-999999999999999.9999", Currency: "EUR"}}),
			want: map[string]string{"crm_order_id": orderID, "total": "-999999999999999.9999"}, // the currency becomes a guard
		},
		{
			// numeric(19,4) holds 19-4 = 15 integer digits; PostgreSQL
			// refuses 16 with "numeric field overflow".
			name:    "order total 1234567890123456.78 has sixteen integer digits",
			ev:      orderEvent(map[string]any{"total": transform.Money{Amount: "1234567890123456.78", Currency: "EUR"}}),
			wantErr: true, wantErrKey: orderID, wantField: "total", wantValue: "1234567890123456.78",
			wantMsg: "is too large for column total numeric(19,4)",
		},
		{
			name:    "order total of 10^15",
			ev:      orderEvent(map[string]any{"total": transform.Money{Amount: "1000000000000000", Currency: "EUR"}}),
			wantErr: true, wantErrKey: orderID, wantField: "total", wantValue: "1000000000000000",
		},
		{
			name: "enum and reference",
			ev:   orderEvent(map[string]any{"status": "confirmed", "account_id": acctID, "ordered_at": "2024-03-01T08:00:00.25Z"}),
			want: map[string]string{"crm_order_id": orderID, "status": "CONFIRMED", "customer_no": acctID, "ordered_at": "2024-03-01T08:00:00.25Z"},
		},
		{
			name:    "enum value without system value",
			ev:      orderEvent(map[string]any{"status": "shipped"}),
			wantErr: true, wantErrKey: orderID, wantField: "status", wantValue: "shipped",
		},
		{
			name:    "reference that is not a key",
			ev:      orderEvent(map[string]any{"account_id": int64(7)}),
			wantErr: true, wantErrKey: orderID, wantField: "account_id", wantValue: "7",
		},
		{
			name: "order line decimals",
			ev: &transform.Event{Source: "crm", Entity: "order_line", Op: transform.OpUpsert, Key: lineID, Data: map[string]any{
				"line_id": lineID, "order_id": orderID, "sku": "SKU-1", "quantity": "2.500", "unit_price": "19.9900",
			}},
			want: map[string]string{"crm_line_id": lineID, "order_no": orderID, "sku": "SKU-1", "quantity": "2.500", "unit_price": "19.9900"},
		},
		{
			name: "order line quantity with four decimals into numeric(12,3)",
			ev: &transform.Event{Source: "crm", Entity: "order_line", Op: transform.OpUpsert, Key: lineID, Data: map[string]any{
				"quantity": "2.5001",
			}},
			wantErr: true, wantErrKey: lineID, wantField: "quantity", wantValue: "2.5001",
		},
		{
			name: "order line quantity not a number",
			ev: &transform.Event{Source: "crm", Entity: "order_line", Op: transform.OpUpsert, Key: lineID, Data: map[string]any{
				"quantity": "two",
			}},
			wantErr: true, wantErrKey: lineID, wantField: "quantity", wantValue: "two",
		},
		{
			name:    "unknown entity",
			ev:      &transform.Event{ID: "crm:0/1:1", Source: "crm", Entity: "shipment", Op: transform.OpUpsert, Key: "1"},
			wantErr: true, wantMsg: "unknown entity shipment",
		},
		{
			name:    "unknown operation",
			ev:      &transform.Event{ID: "crm:0/1:1", Source: "crm", Entity: "order", Op: "merge", Key: orderID},
			wantErr: true, wantMsg: `unknown operation "merge"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := boundERP(t)
			row, err := m.Denormalize(tt.ev, "erp")
			if (err != nil) != tt.wantErr {
				t.Fatalf("Denormalize() error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				if tt.wantField != "" {
					checkFieldError(t, err, tt.ev.Entity, tt.wantErrKey, tt.wantField, tt.wantValue)
				}
				if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("error %q does not say %q", err, tt.wantMsg)
				}
				return
			}
			if row.Op != tt.ev.Op || row.Entity != m.Entity(tt.ev.Entity) || row.Table != m.Entity(tt.ev.Entity).Tables["erp"] {
				t.Errorf("row = {Op:%s Entity:%v Table:%v}, want the event's op, entity and erp table", row.Op, row.Entity, row.Table)
			}
			if row.Key != tt.ev.Key {
				t.Errorf("row.Key = %q, want %q", row.Key, tt.ev.Key)
			}
			if got := values(row); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("values = %v, want %v", got, tt.want)
			}
			for i := 1; i < len(row.Values); i++ {
				if row.Values[i-1].Column >= row.Values[i].Column {
					t.Errorf("values not sorted by column: %s before %s", row.Values[i-1].Column, row.Values[i].Column)
				}
			}
		})
	}
}

// TestMapping_Denormalize_row checks a whole row, references included.
func TestMapping_Denormalize_row(t *testing.T) {
	m := boundERP(t)
	ev := orderEvent(map[string]any{
		"account_id": acctID, "currency": "EUR", "total": transform.Money{Amount: "99.90", Currency: "EUR"},
		"status": "open", "ordered_at": "2024-03-01T08:00:00Z",
	})
	row, err := m.Denormalize(ev, "erp")
	if err != nil {
		t.Fatal(err)
	}
	want := []transform.ColValue{
		{Column: "crm_order_id", Text: orderID},
		{Column: "currency", Text: "EUR"},
		{Column: "customer_no", Text: acctID, Ref: &transform.Ref{Entity: "customer", Column: "customer_no"}},
		{Column: "ordered_at", Text: "2024-03-01T08:00:00Z"},
		{Column: "status", Text: "OPEN"},
		{Column: "total", Text: "99.90"},
	}
	if !reflect.DeepEqual(row.Values, want) {
		t.Errorf("Values =\n%+v\nwant\n%+v", row.Values, want)
	}
	if got, want := row.Signature(), "crm_order_id,currency,customer_no,ordered_at,status,total,"; got != want {
		t.Errorf("Signature() = %q, want %q", got, want)
	}
	if row.Key != orderID {
		t.Errorf("Key = %q, want %q", row.Key, orderID)
	}

	// A NULL reference is NULL, still marked as a reference.
	row, err = m.Denormalize(orderEvent(map[string]any{"account_id": nil}), "erp")
	if err != nil {
		t.Fatal(err)
	}
	wantNull := []transform.ColValue{
		{Column: "crm_order_id", Text: orderID},
		{Column: "customer_no", Null: true, Ref: &transform.Ref{Entity: "customer", Column: "customer_no"}},
	}
	if !reflect.DeepEqual(row.Values, wantNull) {
		t.Errorf("Values =\n%+v\nwant\n%+v", row.Values, wantNull)
	}
}

func TestMapping_Denormalize_ops(t *testing.T) {
	tests := []struct {
		name    string
		ev      transform.Event
		system  string
		wantKey string
		wantErr bool
	}{
		{name: "delete", ev: transform.Event{Source: "crm", Entity: "customer", Op: transform.OpDelete, Key: acctID}, system: "erp", wantKey: acctID},
		{name: "truncate", ev: transform.Event{Source: "crm", Entity: "order", Op: transform.OpTruncate}, system: "erp"},
		{name: "no table in system", ev: transform.Event{Source: "crm", Entity: "order", Op: transform.OpDelete, Key: orderID}, system: "sap", wantErr: true},
		{name: "upsert into crm", ev: transform.Event{Source: "erp", Entity: "order", Op: transform.OpUpsert, Key: orderID}, system: "crm", wantKey: orderID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := boundERP(t)
			row, err := m.Denormalize(&tt.ev, tt.system)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Denormalize() error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if row.Op != tt.ev.Op || row.Key != tt.wantKey || len(row.Values) != 0 {
				t.Errorf("row = {Op:%s Key:%q Values:%v}, want {%s %q no values}", row.Op, row.Key, row.Values, tt.ev.Op, tt.wantKey)
			}
			if row.Table != m.Entity(tt.ev.Entity).Tables[tt.system] {
				t.Errorf("row.Table = %v, want the %s table", row.Table, tt.system)
			}
		})
	}
}

// TestMapping_Denormalize_json checks that an event survives the bus: after
// a JSON round trip, money is a map[string]any and Denormalize writes the
// same values.
func TestMapping_Denormalize_json(t *testing.T) {
	tests := []struct {
		name    string
		ev      *transform.Event
		wantErr bool
	}{
		{name: "customer EUR", ev: customerEvent("1234.50", "EUR")},
		{name: "customer BHD", ev: customerEvent("12.345", "BHD")},
		{name: "order", ev: orderEvent(map[string]any{
			"account_id": acctID, "currency": "JPY", "total": transform.Money{Amount: "1000", Currency: "JPY"},
			"status": "cancelled", "ordered_at": "2024-03-01T08:00:00Z",
		})},
		{name: "order total that does not fit", ev: orderEvent(map[string]any{"total": transform.Money{Amount: "0.00001", Currency: "EUR"}}), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := boundERP(t)
			tt.ev.Pos = transform.Position{LSN: testTx.CommitLSN, CommitTime: testTx.CommitTime.UTC(), Xid: testTx.Xid, Index: 3}
			b, err := json.Marshal(tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			var back transform.Event
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("unmarshal %s: %v", b, err)
			}
			for k, v := range tt.ev.Data {
				if _, isMoney := v.(transform.Money); isMoney {
					mv, ok := back.Data[k].(map[string]any)
					if !ok {
						t.Fatalf("after JSON, %s is %T, want map[string]any", k, back.Data[k])
					}
					want := v.(transform.Money)
					if mv["amount"] != want.Amount || mv["currency"] != want.Currency {
						t.Errorf("after JSON, %s = %v, want amount %q currency %q", k, mv, want.Amount, want.Currency)
					}
				}
			}
			if back.Pos != tt.ev.Pos || back.ID != tt.ev.ID || back.Key != tt.ev.Key || back.Op != tt.ev.Op {
				t.Errorf("after JSON, event = %+v, want %+v", back, *tt.ev)
			}
			want, werr := m.Denormalize(tt.ev, "erp")
			got, gerr := m.Denormalize(&back, "erp")
			if (werr != nil) != tt.wantErr || (gerr != nil) != tt.wantErr {
				t.Fatalf("Denormalize errors: before JSON %v, after %v; wantErr %v", werr, gerr, tt.wantErr)
			}
			if tt.wantErr {
				var we, ge *transform.FieldError
				if !errors.As(werr, &we) || !errors.As(gerr, &ge) {
					t.Fatalf("errors %v and %v are not both FieldErrors", werr, gerr)
				}
				if we.Entity != ge.Entity || we.Key != ge.Key || we.Field != ge.Field || we.Err.Error() != ge.Err.Error() {
					t.Errorf("error after JSON %q, want %q", gerr, werr)
				}
				if !strings.Contains(ge.Value, "0.00001") {
					t.Errorf("error after JSON has value %q, want it to show 0.00001", ge.Value)
				}
				return
			}
			if !reflect.DeepEqual(got.Values, want.Values) {
				t.Errorf("after JSON Values =\n%+v\nwant\n%+v", got.Values, want.Values)
			}
		})
	}
}

// TestMapping_roundTrip normalizes CRM rows, carries the events over JSON,
// denormalizes them into the ERP and reads the ERP row back: every carried
// field comes back equal.
func TestMapping_roundTrip(t *testing.T) {
	m := boundERP(t)
	if err := m.Check("crm", crmCatalog(), "source"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		currency string
		amount   string
		wantErr  bool
	}{
		{name: "EUR", currency: "EUR", amount: "1234.50"},
		{name: "JPY", currency: "JPY", amount: "1000"},
		{name: "BHD", currency: "BHD", amount: "12.34"},
		{name: "negative", currency: "USD", amount: "-0.01"},
		{name: "zero", currency: "EUR", amount: "0.00"},
		{name: "JPY with decimals", currency: "JPY", amount: "10.50", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := &capture.Change{Schema: "public", Table: "accounts", Op: capture.Insert,
				New: accountRow(acctID, map[string]any{"currency": tt.currency, "credit_limit": dec(tt.amount)})}
			evs, err := m.Normalize("crm", testTx, 0, ch)
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(evs[0])
			if err != nil {
				t.Fatal(err)
			}
			var ev transform.Event
			if err := json.Unmarshal(b, &ev); err != nil {
				t.Fatal(err)
			}
			row, err := m.Denormalize(&ev, "erp")
			if (err != nil) != tt.wantErr {
				t.Fatalf("Denormalize() error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				checkFieldError(t, err, "customer", acctID, "credit_limit", tt.amount)
				return
			}
			// What the ERP would hand back for the row.
			stored := map[string]any{"customer_no": int64(1)}
			for _, v := range row.Values {
				switch {
				case v.Null:
					stored[v.Column] = nil
				case v.Column == "credit_limit_minor":
					stored[v.Column] = dec(v.Text).IntPart()
				case v.Column == "updated_at":
					stored[v.Column] = must(time.Parse(time.RFC3339Nano, v.Text))
				default:
					stored[v.Column] = v.Text
				}
			}
			key, data, err := m.CanonicalRow("erp", m.Entity("customer"), stored, nil)
			if err != nil {
				t.Fatal(err)
			}
			if key != acctID {
				t.Errorf("key = %q, want %q", key, acctID)
			}
			e := m.Entity("customer")
			for name, want := range evs[0].Data {
				if !e.Field(name).Equal(data[name], want) {
					t.Errorf("field %s: got %v back, want %v", name, data[name], want)
				}
			}
		})
	}
}

// TestMapping_Denormalize_unchanged: a field the change left unchanged is
// written only when the row is created (InsertOnly) when its value came
// with the event, and is Unknown when it did not; both show in the
// signature, so they get statements of their own.
func TestMapping_Denormalize_unchanged(t *testing.T) {
	m := boundERP(t)
	ev := orderEvent(map[string]any{"status": "open", "ordered_at": "2024-03-01T08:00:00Z"})
	ev.Unchanged = []string{"ordered_at", "total"}
	row, err := m.Denormalize(ev, "erp")
	if err != nil {
		t.Fatal(err)
	}
	want := []transform.ColValue{
		{Column: "crm_order_id", Text: orderID},
		{Column: "ordered_at", Text: "2024-03-01T08:00:00Z", InsertOnly: true},
		{Column: "status", Text: "OPEN"},
	}
	if !reflect.DeepEqual(row.Values, want) {
		t.Errorf("Values =\n%+v\nwant\n%+v", row.Values, want)
	}
	if !reflect.DeepEqual(row.Unknown, []string{"total"}) {
		t.Errorf("Unknown = %v, want [total]", row.Unknown)
	}
	if got, want := row.Signature(), "crm_order_id,ordered_at+,status,?"; got != want {
		t.Errorf("Signature() = %q, want %q", got, want)
	}
}
