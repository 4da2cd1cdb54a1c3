package transform_test

import (
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/transform"
)

func TestCurrencyScale(t *testing.T) {
	tests := []struct {
		name    string
		code    string
		want    int32
		wantErr bool
	}{
		{name: "JPY", code: "JPY", want: 0},
		{name: "EUR", code: "EUR", want: 2},
		{name: "USD", code: "USD", want: 2},
		{name: "BHD", code: "BHD", want: 3},
		{name: "KWD", code: "KWD", want: 3},
		{name: "CLF", code: "CLF", want: 4},
		{name: "UYW", code: "UYW", want: 4},
		{name: "ISK", code: "ISK", want: 0},
		{name: "KRW", code: "KRW", want: 0},
		{name: "XCG, in force since 2025-03-31", code: "XCG", want: 2},
		{name: "ANG, which XCG replaces, still read", code: "ANG", want: 2},
		{name: "IQD", code: "IQD", want: 3},
		{name: "a fund: BOV", code: "BOV", want: 2},
		{name: "gold has no minor unit", code: "XAU", wantErr: true},
		{name: "lower case", code: "eur", want: 2},
		{name: "padded", code: " bhd ", want: 3},
		{name: "unknown", code: "XXZ", wantErr: true},
		{name: "empty", code: "", wantErr: true},
		{name: "two letters", code: "EU", wantErr: true},
		{name: "withdrawn DEM", code: "DEM", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := transform.CurrencyScale(tt.code)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CurrencyScale(%q) error = %v, wantErr %v", tt.code, err, tt.wantErr)
			}
			if tt.wantErr {
				if !strings.Contains(err.Error(), tt.code) || !strings.Contains(err.Error(), "ISO 4217") {
					t.Errorf("error %q does not name the code and ISO 4217", err)
				}
				return
			}
			if got != tt.want {
				t.Errorf("CurrencyScale(%q) = %d, want %d", tt.code, got, tt.want)
			}
		})
	}
}

func TestNewMoney(t *testing.T) {
	tests := []struct {
		name     string
		amount   string
		currency string
		want     transform.Money
		wantErr  bool
	}{
		{name: "pads to the currency's decimals", amount: "12.5", currency: "EUR", want: transform.Money{Amount: "12.50", Currency: "EUR"}},
		{name: "keeps a third decimal", amount: "12.345", currency: "EUR", want: transform.Money{Amount: "12.345", Currency: "EUR"}},
		{name: "JPY integer", amount: "100", currency: "JPY", want: transform.Money{Amount: "100", Currency: "JPY"}},
		{name: "JPY keeps given decimals", amount: "100.00", currency: "JPY", want: transform.Money{Amount: "100.00", Currency: "JPY"}},
		{name: "BHD", amount: "12.3", currency: "BHD", want: transform.Money{Amount: "12.300", Currency: "BHD"}},
		{name: "exponent form", amount: "1.5e3", currency: "EUR", want: transform.Money{Amount: "1500.00", Currency: "EUR"}},
		{name: "negative", amount: "-0.5", currency: "USD", want: transform.Money{Amount: "-0.50", Currency: "USD"}},
		{name: "zero", amount: "0", currency: "EUR", want: transform.Money{Amount: "0.00", Currency: "EUR"}},
		{name: "many digits", amount: "12345678901234567890123456789.123456", currency: "EUR",
			want: transform.Money{Amount: "12345678901234567890123456789.123456", Currency: "EUR"}},
		{name: "normalizes the code", amount: "1", currency: " eur ", want: transform.Money{Amount: "1.00", Currency: "EUR"}},
		{name: "unknown currency", amount: "1", currency: "XXZ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := transform.NewMoney(dec(tt.amount), tt.currency)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewMoney(%s, %q) error = %v, wantErr %v", tt.amount, tt.currency, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("NewMoney(%s, %q) = %+v, want %+v", tt.amount, tt.currency, got, tt.want)
			}
			if !tt.wantErr && !dec(got.Amount).Equal(dec(tt.amount)) {
				t.Errorf("NewMoney(%s) changed the value to %s", tt.amount, got.Amount)
			}
		})
	}
}

// roundingMapping has one money field per converter and rounding mode.
const roundingMapping = `
version: 1
systems: [src, dst]
entities:
  - name: ledger
    key: id
    fields:
      - {name: id,         type: text,  owner: src}
      - {name: minor_none, type: money, owner: src}
      - {name: minor_even, type: money, owner: src}
      - {name: minor_up,   type: money, owner: src}
      - {name: minor_down, type: money, owner: src}
      - {name: num_none,   type: money, owner: src}
      - {name: num_even,   type: money, owner: src}
      - {name: num_up,     type: money, owner: src}
      - {name: num_down,   type: money, owner: src}
    systems:
      src:
        table: ledger
        key_column: id
        columns:
          id: {column: id}
      dst:
        table: ledger
        key_column: id
        columns:
          id:         {column: id}
          minor_none: {column: minor_none, convert: money_minor, currency_column: cur}
          minor_even: {column: minor_even, convert: money_minor, currency_column: cur, rounding: half_even}
          minor_up:   {column: minor_up,   convert: money_minor, currency_column: cur, rounding: half_up}
          minor_down: {column: minor_down, convert: money_minor, currency_column: cur, rounding: down}
          num_none:   {column: num_none, currency_column: cur}
          num_even:   {column: num_even, currency_column: cur, rounding: half_even}
          num_up:     {column: num_up,   currency_column: cur, rounding: half_up}
          num_down:   {column: num_down, currency_column: cur, rounding: down}
`

func roundingCatalog() *transform.Catalog {
	cols := []*transform.ColumnInfo{col("id", "text", "notnull"), col("cur", "character(3)")}
	for _, r := range []string{"none", "even", "up", "down"} {
		cols = append(cols, col("minor_"+r, "bigint"), col("num_"+r, "numeric(19,2)"))
	}
	return &transform.Catalog{Tables: map[string]*transform.TableInfo{"public.ledger": table("id", nil, cols...)}}
}

// TestColumnMap_Rounding checks that a column's explicit rounding mode
// rounds a value that does not fit, and that without one it is an error.
func TestColumnMap_Rounding(t *testing.T) {
	m, err := transform.Parse([]byte(roundingMapping))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Check("dst", roundingCatalog(), "target"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		field    string
		amount   string
		currency string
		want     string
		wantErr  bool
	}{
		{name: "minor, no rounding, half cent", field: "minor_none", amount: "10.005", currency: "EUR", wantErr: true},
		{name: "minor, no rounding, exact", field: "minor_none", amount: "10.00", currency: "EUR", want: "1000"},
		{name: "minor, half_even, down to even", field: "minor_even", amount: "10.005", currency: "EUR", want: "1000"},
		{name: "minor, half_even, up to even", field: "minor_even", amount: "10.015", currency: "EUR", want: "1002"},
		{name: "minor, half_even, negative", field: "minor_even", amount: "-10.015", currency: "EUR", want: "-1002"},
		{name: "minor, half_even, JPY half", field: "minor_even", amount: "0.5", currency: "JPY", want: "0"},
		{name: "minor, half_even, JPY one and a half", field: "minor_even", amount: "1.5", currency: "JPY", want: "2"},
		{name: "minor, half_even, not a tie", field: "minor_even", amount: "10.0051", currency: "EUR", want: "1001"},
		{name: "minor, half_up", field: "minor_up", amount: "10.005", currency: "EUR", want: "1001"},
		{name: "minor, half_up, negative away from zero", field: "minor_up", amount: "-10.005", currency: "EUR", want: "-1001"},
		{name: "minor, half_up, BHD", field: "minor_up", amount: "1.0005", currency: "BHD", want: "1001"},
		{name: "minor, half_up, below half", field: "minor_up", amount: "1.0004", currency: "BHD", want: "1000"},
		{name: "minor, down", field: "minor_down", amount: "10.009", currency: "EUR", want: "1000"},
		{name: "minor, down, negative toward zero", field: "minor_down", amount: "-10.009", currency: "EUR", want: "-1000"},
		{name: "minor, rounding past bigint", field: "minor_up", amount: "92233720368547758.075", currency: "EUR", wantErr: true},
		{name: "numeric, no rounding", field: "num_none", amount: "2.675", currency: "EUR", wantErr: true},
		{name: "numeric, no rounding, exact", field: "num_none", amount: "2.67", currency: "EUR", want: "2.67"},
		{name: "numeric, half_even up", field: "num_even", amount: "2.675", currency: "EUR", want: "2.68"},
		{name: "numeric, half_even down", field: "num_even", amount: "2.665", currency: "EUR", want: "2.66"},
		{name: "numeric, half_up", field: "num_up", amount: "2.665", currency: "EUR", want: "2.67"},
		{name: "numeric, half_up, negative", field: "num_up", amount: "-2.665", currency: "EUR", want: "-2.67"},
		{name: "numeric, down", field: "num_down", amount: "2.669", currency: "EUR", want: "2.66"},
		{name: "numeric, down, negative", field: "num_down", amount: "-2.669", currency: "EUR", want: "-2.66"},
		{name: "numeric, rounding up past precision", field: "num_up", amount: "99999999999999999.995", currency: "EUR", wantErr: true},
		{name: "numeric, rounding within precision", field: "num_even", amount: "99999999999999999.994", currency: "EUR", want: "99999999999999999.99"},
		{name: "numeric, too large without rounding", field: "num_down", amount: "100000000000000000", currency: "EUR", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := &transform.Event{Source: "src", Entity: "ledger", Op: transform.OpUpsert, Key: "L1", Data: map[string]any{
				tt.field: transform.Money{Amount: tt.amount, Currency: tt.currency},
			}}
			row, err := m.Denormalize(ev, "dst")
			if (err != nil) != tt.wantErr {
				t.Fatalf("Denormalize(%s %s into %s) error = %v, wantErr %v", tt.amount, tt.currency, tt.field, err, tt.wantErr)
			}
			if tt.wantErr {
				checkFieldError(t, err, "ledger", "L1", tt.field, tt.amount)
				return
			}
			// The amount's column, and its currency in the currency column.
			var got []transform.ColValue
			for _, v := range row.Values {
				if v.Column == tt.field {
					got = append(got, v)
				} else if v.Column != "cur" || v.Text != tt.currency {
					t.Errorf("unexpected column value %+v", v)
				}
			}
			if len(got) != 1 || got[0].Text != tt.want {
				t.Errorf("Denormalize(%s %s into %s) = %+v, want %s", tt.amount, tt.currency, tt.field, row.Values, tt.want)
			}
		})
	}
}

// TestColumnMap_fixedCurrency checks a money column with a fixed currency.
func TestColumnMap_fixedCurrency(t *testing.T) {
	doc := strings.NewReplacer(
		"minor_none: {column: minor_none, convert: money_minor, currency_column: cur}",
		"minor_none: {column: minor_none, convert: money_minor, currency: jpy}",
	).Replace(roundingMapping)
	m, err := transform.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Check("dst", roundingCatalog(), "target"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		amount   string
		currency string
		want     string
		wantErr  bool
	}{
		{name: "same currency", amount: "1500", currency: "JPY", want: "1500"},
		{name: "same currency, other case", amount: "15", currency: "jpy", want: "15"},
		{name: "other currency", amount: "15.00", currency: "EUR", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := &transform.Event{Source: "src", Entity: "ledger", Op: transform.OpUpsert, Key: "L1", Data: map[string]any{
				"minor_none": transform.Money{Amount: tt.amount, Currency: tt.currency},
			}}
			row, err := m.Denormalize(ev, "dst")
			if (err != nil) != tt.wantErr {
				t.Fatalf("Denormalize() error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				checkFieldError(t, err, "ledger", "L1", "minor_none", tt.amount)
				if !strings.Contains(err.Error(), "fixed currency") {
					t.Errorf("error %q does not mention the fixed currency", err)
				}
				return
			}
			if len(row.Values) != 1 || row.Values[0].Text != tt.want {
				t.Errorf("Values = %+v, want minor_none %s", row.Values, tt.want)
			}
		})
	}
	// Reading back uses the fixed currency.
	_, data, err := m.CanonicalRow("dst", m.Entity("ledger"), map[string]any{"id": "L1", "minor_none": int64(1500)}, []string{"minor_none"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := data["minor_none"], (transform.Money{Amount: "1500", Currency: "JPY"}); got != want {
		t.Errorf("CanonicalRow minor_none = %v, want %v", got, want)
	}
}

// TestMapping_Currencies: a mapping adds a code ISO 4217 lacks and
// overrides the decimals of one it has; money through both is exact and
// an amount with more decimals than the override allows is still refused.
func TestMapping_Currencies(t *testing.T) {
	m := loadExample(t)
	m.Currencies = map[string]int32{"CNH": 2, "JPY": 2}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	for code, want := range map[string]int32{"CNH": 2, "cnh": 2, "JPY": 2, "EUR": 2, "BHD": 3, "XCG": 2} {
		if got, err := m.CurrencyScale(code); err != nil || got != want {
			t.Errorf("CurrencyScale(%s) = %d, %v; want %d", code, got, err, want)
		}
	}
	if _, err := transform.CurrencyScale("CNH"); err == nil {
		t.Error("the package's CurrencyScale knows CNH; only the mapping adds it")
	}
	if got, err := m.NewMoney(dec("12.5"), "jpy"); err != nil || got != (transform.Money{Amount: "12.50", Currency: "JPY"}) {
		t.Errorf("NewMoney(12.5 JPY) with JPY at 2 decimals = %+v, %v", got, err)
	}
	m = boundERP(t)
	m.Currencies = map[string]int32{"CNH": 2}
	row, err := m.Denormalize(&transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
		"account_id": acctID, "currency": "CNH", "credit_limit": transform.Money{Amount: "10.25", Currency: "CNH"},
	}}, "erp")
	if err != nil {
		t.Fatalf("Denormalize of a CNH amount into minor units: %v", err)
	}
	found := false
	for _, v := range row.Values {
		if v.Column == "credit_limit_minor" {
			found = v.Text == "1025"
		}
	}
	if !found {
		t.Errorf("credit_limit_minor of 10.25 CNH: %+v, want 1025", row.Values)
	}
	_, err = m.Denormalize(&transform.Event{Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: acctID, Data: map[string]any{
		"account_id": acctID, "currency": "CNH", "credit_limit": transform.Money{Amount: "10.255", Currency: "CNH"},
	}}, "erp")
	if err == nil {
		t.Error("10.255 CNH (2 decimals by the mapping) into minor units was accepted")
	}
}

func TestMapping_Currencies_Validate(t *testing.T) {
	for name, cur := range map[string]map[string]int32{
		"lower case code": {"xcg": 2},
		"four letters":    {"XCGG": 2},
		"negative":        {"XCG": -1},
		"too many":        {"XCG": 10},
	} {
		t.Run(name, func(t *testing.T) {
			m := loadExample(t)
			m.Currencies = cur
			if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "currencies") {
				t.Errorf("Validate() = %v, want a currencies error", err)
			}
		})
	}
}
