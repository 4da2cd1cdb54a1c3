package transform_test

import (
	"encoding/json"
	"errors"
	"math/big"
	"strconv"
	"strings"
	"testing"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// fuzzMapping stores one money amount in three systems: "num" as an amount
// in a numeric(38,6) column next to a currency column (converter money),
// "num4" the same in numeric(19,4) (fewer decimals than the input may
// have), "minor" as bigint minor units of the currency (converter
// money_minor).
const fuzzMapping = `
version: 1
systems: [num, num4, minor]
entities:
  - name: amount
    key: id
    fields:
      - {name: id,    type: text,     owner: minor}
      - {name: cur,   type: currency, owner: minor}
      - {name: value, type: money,    owner: minor}
    systems:
      num:
        table: amounts
        key_column: id
        columns:
          id:    {column: id}
          cur:   {column: cur}
          value: {column: value, currency_column: cur}
      num4:
        table: amounts4
        key_column: id
        columns:
          id:    {column: id}
          cur:   {column: cur}
          value: {column: value, currency_column: cur}
      minor:
        table: ledger.amounts_minor
        key_column: id
        columns:
          id:    {column: id}
          cur:   {column: cur}
          value: {column: value_minor, convert: money_minor, currency_column: cur}
`

// fuzzCurrencies covers every minor unit in use: 0, 2, 3 and 4 decimals.
var fuzzCurrencies = []string{"JPY", "EUR", "BHD", "USD", "KWD", "ISK", "CLF", "UYW"}

const (
	fuzzPrecision = 38
	fuzzScale     = 6
)

// numericCols are the numeric columns amounts go into.
var numericCols = []struct {
	system           string
	precision, scale int32
}{
	{"num", 38, 6},
	{"num4", 19, 4},
}

func fuzzBoundMapping(t testing.TB) *transform.Mapping {
	t.Helper()
	m, err := transform.Parse([]byte(fuzzMapping))
	if err != nil {
		t.Fatal(err)
	}
	num := &transform.Catalog{Tables: map[string]*transform.TableInfo{"public.amounts": fullTable("id", nil,
		col("id", "text", "notnull"), col("cur", "character(3)", "notnull"), col("value", "numeric(38,6)"))}}
	if err := m.Check("num", num, "both"); err != nil {
		t.Fatal(err)
	}
	num4 := &transform.Catalog{Tables: map[string]*transform.TableInfo{"public.amounts4": fullTable("id", nil,
		col("id", "text", "notnull"), col("cur", "character(3)", "notnull"), col("value", "numeric(19,4)"))}}
	if err := m.Check("num4", num4, "both"); err != nil {
		t.Fatal(err)
	}
	minor := &transform.Catalog{Tables: map[string]*transform.TableInfo{"ledger.amounts_minor": fullTable("id", nil,
		col("id", "text", "notnull"), col("cur", "character(3)", "notnull"), col("value_minor", "bigint"))}}
	if err := m.Check("minor", minor, "both"); err != nil {
		t.Fatal(err)
	}
	return m
}

// fuzzDecimal builds a decimal of at most 38 significant digits and 0 to 6
// decimals: the unscaled value and the decimal itself.
func fuzzDecimal(digits string, neg bool, scale uint8) (*big.Int, int32, decimal.Decimal) {
	var b strings.Builder
	for _, r := range digits {
		if r >= '0' && r <= '9' && b.Len() < fuzzPrecision {
			b.WriteRune(r)
		}
	}
	s := b.String()
	if s == "" {
		s = "0"
	}
	unscaled, _ := new(big.Int).SetString(s, 10)
	if neg {
		unscaled.Neg(unscaled)
	}
	exp := -int32(scale % (fuzzScale + 1))
	return unscaled, exp, decimal.NewFromBigInt(new(big.Int).Set(unscaled), exp)
}

var ten = big.NewInt(10)

func pow10(n int32) *big.Int { return new(big.Int).Exp(ten, big.NewInt(int64(n)), nil) }

// fitsNumeric says, with big.Int arithmetic only, whether unscaled*10^exp
// (exp <= 0) fits numeric(precision, scale): no non-zero digit past scale
// decimals and fewer than precision-scale integer digits.
func fitsNumeric(unscaled *big.Int, exp, precision, scale int32) bool {
	if -exp > scale {
		if new(big.Int).Rem(unscaled, pow10(-exp-scale)).Sign() != 0 {
			return false
		}
	}
	intPart := new(big.Int).Quo(new(big.Int).Abs(unscaled), pow10(-exp))
	return intPart.Cmp(pow10(precision-scale)) < 0
}

// minorUnits says, with big.Int arithmetic only, whether unscaled*10^exp
// is a whole number of minor units of a currency with scale decimals that
// fits a bigint, and returns it.
func minorUnits(unscaled *big.Int, exp, scale int32) (int64, bool) {
	n := new(big.Int).Mul(unscaled, pow10(scale))
	q, r := new(big.Int).QuoRem(n, pow10(-exp), new(big.Int))
	if r.Sign() != 0 || !q.IsInt64() {
		return 0, false
	}
	return q.Int64(), true
}

// overJSON carries an event over the bus encoding.
func overJSON(t *testing.T, ev *transform.Event) *transform.Event {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var back transform.Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	return &back
}

// FuzzMoneyRoundTrip pushes amounts through every money converter and back:
// the amount comes back exactly (decimal.Equal, same currency) or the
// conversion is refused with a FieldError; it is never changed. It also
// checks that a refusal is justified: a value that fits the column is
// never refused.
func FuzzMoneyRoundTrip(f *testing.F) {
	idx := func(code string) uint8 {
		for i, c := range fuzzCurrencies {
			if c == code {
				return uint8(i)
			}
		}
		panic(code)
	}
	nines := strings.Repeat("9", 38)
	f.Add("1", false, uint8(2), idx("USD"))                         // 0.01
	f.Add("1", false, uint8(2), idx("EUR"))                         // 0.01
	f.Add("123456789012345678", false, uint8(2), idx("EUR"))        // 1234567890123456.78
	f.Add("10005", false, uint8(3), idx("EUR"))                     // 10.005
	f.Add("10005", true, uint8(3), idx("EUR"))                      // -10.005
	f.Add("12345", false, uint8(3), idx("BHD"))                     // 12.345
	f.Add("1000", false, uint8(0), idx("JPY"))                      // 1000
	f.Add("100000", false, uint8(2), idx("JPY"))                    // 1000.00
	f.Add("150", false, uint8(2), idx("JPY"))                       // 1.50
	f.Add(nines, false, uint8(0), idx("JPY"))                       // 38 nines
	f.Add(nines, true, uint8(6), idx("BHD"))                        // -99999999999999999999999999999999.999999
	f.Add(nines[:32], false, uint8(0), idx("EUR"))                  // largest integer of numeric(38,6)
	f.Add("1"+strings.Repeat("0", 32), false, uint8(0), idx("EUR")) // 10^32: too large
	f.Add("0", false, uint8(0), idx("EUR"))
	f.Add("0", true, uint8(6), idx("KWD"))
	f.Add("9223372036854775807", false, uint8(0), idx("JPY")) // max bigint
	f.Add("9223372036854775808", false, uint8(0), idx("JPY")) // max bigint + 1
	f.Add("9223372036854775808", true, uint8(2), idx("EUR"))  // min bigint of cents
	f.Add("9223372036854775809", true, uint8(2), idx("EUR"))
	f.Add("922337203685477580700", false, uint8(5), idx("CLF"))
	f.Add("1", true, uint8(6), idx("UYW"))
	f.Add("5", false, uint8(1), idx("ISK"))
	f.Add("123456700", false, uint8(6), idx("EUR"))           // 123.456700: zeros past numeric(19,4)
	f.Add("123456789", false, uint8(6), idx("EUR"))           // 123.456789: digits past numeric(19,4)
	f.Add("9999999999999999999", false, uint8(4), idx("EUR")) // largest numeric(19,4)

	m := fuzzBoundMapping(f)
	tx := &capture.TxInfo{System: "x", CommitLSN: 1}
	f.Fuzz(func(t *testing.T, digits string, neg bool, scale uint8, curIdx uint8) {
		unscaled, exp, d := fuzzDecimal(digits, neg, scale)
		cur := fuzzCurrencies[int(curIdx)%len(fuzzCurrencies)]
		curScale, err := transform.CurrencyScale(cur)
		if err != nil {
			t.Fatal(err)
		}

		money, err := transform.NewMoney(d, cur)
		if err != nil {
			t.Fatalf("NewMoney(%s, %s): %v", d, cur, err)
		}
		if got := decimal.RequireFromString(money.Amount); !got.Equal(d) || money.Currency != cur {
			t.Fatalf("NewMoney(%s, %s) = %+v: value changed", d, cur, money)
		}
		decimals := int32(0)
		if i := strings.IndexByte(money.Amount, '.'); i >= 0 {
			decimals = int32(len(money.Amount) - i - 1)
		}
		if want := max(curScale, -exp); decimals != want {
			t.Errorf("NewMoney(%s, %s) = %q: %d decimals, want %d", d, cur, money.Amount, decimals, want)
		}

		// Each hop goes over JSON, as on the bus.
		ev := overJSON(t, &transform.Event{Version: transform.SchemaVersion, Source: "minor", Entity: "amount", Op: transform.OpUpsert, Key: "k",
			Data: map[string]any{"id": "k", "cur": cur, "value": money}})

		// (a) money: amount into numeric(38,6) and numeric(19,4), currency
		// into its column.
		for _, nc := range numericCols {
			t.Run(nc.system, func(t *testing.T) {
				row, err := m.Denormalize(ev, nc.system)
				fits := fitsNumeric(unscaled, exp, nc.precision, nc.scale)
				if err != nil {
					checkFuzzRefusal(t, err, d, cur, nc.system, fits)
					return
				}
				if !fits {
					t.Fatalf("%s %s accepted into numeric(%d,%d) as %+v; PostgreSQL would refuse or round it", d, cur, nc.precision, nc.scale, row.Values)
				}
				vals := values(row)
				if vals["cur"] != cur {
					t.Fatalf("currency column = %q, want %q", vals["cur"], cur)
				}
				text := vals["value"]
				stored, err := decimal.NewFromString(text)
				if err != nil {
					t.Fatalf("numeric text %q: %v", text, err)
				}
				if !stored.Equal(d) {
					t.Fatalf("%s %s written to numeric(%d,%d) as %q: value changed", d, cur, nc.precision, nc.scale, text)
				}
				// PostgreSQL hands the column back with exactly scale decimals.
				stored = decimal.RequireFromString(stored.StringFixed(nc.scale))
				checkFuzzBack(t, m, tx, nc.system, capture.Row{"id": "k", "cur": cur, "value": stored}, d, cur)
			})
		}

		// (b) money_minor: integer minor units of the currency.
		t.Run("minor", func(t *testing.T) {
			row, err := m.Denormalize(ev, "minor")
			want, fits := minorUnits(unscaled, exp, curScale)
			if err != nil {
				checkFuzzRefusal(t, err, d, cur, "minor", fits)
				return
			}
			if !fits {
				t.Fatalf("%s %s accepted as minor units %+v; it is not a whole bigint of minor units", d, cur, row.Values)
			}
			text := values(row)["value_minor"]
			n, err := strconv.ParseInt(text, 10, 64)
			if err != nil {
				t.Fatalf("minor units text %q: %v", text, err)
			}
			if n != want {
				t.Fatalf("%s %s written as %d minor units, want %d", d, cur, n, want)
			}
			checkFuzzBack(t, m, tx, "minor", capture.Row{"id": "k", "cur": cur, "value_minor": n}, d, cur)
		})
	})
}

// checkFuzzRefusal checks that a refused conversion is a FieldError naming
// the row and that the value really does not fit.
func checkFuzzRefusal(t *testing.T, err error, d decimal.Decimal, cur, system string, fits bool) {
	t.Helper()
	var fe *transform.FieldError
	if !errors.As(err, &fe) || fe.Entity != "amount" || fe.Key != "k" || fe.Field != "value" {
		t.Fatalf("%s %s into %s: error %v is not a FieldError naming amount/k/value", d, cur, system, err)
	}
	if fits {
		t.Fatalf("%s %s into %s refused although it fits: %v", d, cur, system, err)
	}
}

// checkFuzzBack normalizes a stored row and checks the amount is the one
// that was written.
func checkFuzzBack(t *testing.T, m *transform.Mapping, tx *capture.TxInfo, system string, row capture.Row, d decimal.Decimal, cur string) {
	t.Helper()
	// Read back as the capture of that system would, whoever owns the
	// fields.
	key, data, err := m.CanonicalRow(system, m.Entity("amount"), row, nil)
	if err != nil {
		t.Fatalf("CanonicalRow(%s, %v): %v", system, row, err)
	}
	back := overJSON(t, &transform.Event{Version: transform.SchemaVersion, Source: system, Entity: "amount", Op: transform.OpUpsert, Key: key, Data: data})
	_ = tx
	mv, ok := back.Data["value"].(map[string]any)
	if !ok {
		t.Fatalf("Normalize(%s) value = %#v, want money", system, back.Data["value"])
	}
	amount, _ := mv["amount"].(string)
	got, err := decimal.NewFromString(amount)
	if err != nil {
		t.Fatalf("Normalize(%s) amount %q: %v", system, amount, err)
	}
	if !got.Equal(d) || mv["currency"] != cur {
		t.Fatalf("round trip through %s: %s %s came back as %s %v", system, d, cur, amount, mv["currency"])
	}
	if back.Data["cur"] != cur {
		t.Fatalf("round trip through %s: currency field %v, want %s", system, back.Data["cur"], cur)
	}
}
