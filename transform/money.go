package transform

import (
	"errors"
	"fmt"
	"strings"

	"github.com/shopspring/decimal"
)

//go:generate go run ./internal/iso4217gen -list iso4217/list-one.xml -amendments iso4217/amendments.txt -out iso4217.go

// CurrencyScale returns the ISO 4217 number of decimals (minor unit) of a
// currency code, from the table generated from the pinned ISO 4217 list
// (iso4217.go; transform/iso4217/README.md says how to update it). A code
// missing there is refused, never guessed. Mapping.CurrencyScale also
// knows the mapping's own currencies.
func CurrencyScale(code string) (int32, error) {
	s, ok := iso4217Scale[strings.ToUpper(strings.TrimSpace(code))]
	if !ok {
		return 0, fmt.Errorf("unknown currency %q (not an active ISO 4217 code with a minor unit, list of %s; a mapping may add it under currencies:)", code, iso4217Published)
	}
	return s, nil
}

// CurrencyScale returns the number of decimals of a currency code: the
// mapping's currencies (which add codes or override ISO 4217's minor
// unit) first, then ISO 4217 (the package's CurrencyScale).
func (m *Mapping) CurrencyScale(code string) (int32, error) {
	if m != nil && len(m.Currencies) > 0 {
		if s, ok := m.Currencies[strings.ToUpper(strings.TrimSpace(code))]; ok {
			return s, nil
		}
	}
	return CurrencyScale(code)
}

// Money is the canonical form of an amount of money: an exact decimal
// string and an ISO 4217 currency code.
type Money struct {
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
}

// NewMoney formats an exact amount for the bus: never fewer decimals than
// the currency has (so 12.5 EUR reads "12.50"), and never fewer than the
// amount carries (no digit is dropped).
func NewMoney(amount decimal.Decimal, currency string) (Money, error) {
	return (*Mapping)(nil).NewMoney(amount, currency)
}

// NewMoney is the package's NewMoney with the mapping's currencies.
func (m *Mapping) NewMoney(amount decimal.Decimal, currency string) (Money, error) {
	cur := strings.ToUpper(strings.TrimSpace(currency))
	scale, err := m.CurrencyScale(cur)
	if err != nil {
		return Money{}, err
	}
	return Money{Amount: formatExact(amount, scale), Currency: cur}, nil
}

// formatExact prints d with at least minScale decimals and without
// dropping any of its digits.
func formatExact(d decimal.Decimal, minScale int32) string {
	s := -d.Exponent()
	if s < minScale {
		s = minScale
	}
	if s < 0 {
		s = 0
	}
	return d.StringFixed(s)
}

// The range of PostgreSQL's numeric: up to 131072 digits before the
// decimal point and 16383 after.
const (
	numericMaxIntDigits  = 131072
	numericMaxFracDigits = 16383
)

var (
	errNotDecimal   = errors.New("not a decimal number")
	errNumericRange = errors.New("beyond the range of a PostgreSQL numeric")
)

// parseDecimal reads a decimal string of an event. It refuses a value no
// PostgreSQL numeric holds, so that an exponent such as 1e999999999 is an
// error instead of an endless computation of its digits.
func parseDecimal(s string) (decimal.Decimal, error) {
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, errNotDecimal
	}
	if exp := int64(d.Exponent()); exp < -numericMaxFracDigits || exp+int64(d.NumDigits()) > numericMaxIntDigits {
		return decimal.Decimal{}, errNumericRange
	}
	return d, nil
}

// fitsScale reports whether d has no significant digit beyond scale
// decimals.
func fitsScale(d decimal.Decimal, scale int32) bool {
	if -d.Exponent() <= scale {
		return true
	}
	return d.Truncate(scale).Equal(d)
}

// fitsPrecision reports whether |d| < 10^(precision-scale), the range of a
// numeric(precision, scale) column.
func fitsPrecision(d decimal.Decimal, precision, scale int32) bool {
	return d.Abs().Cmp(decimal.New(1, precision-scale)) < 0
}

// Rounding names an explicit rounding mode a mapping may choose for a
// column; without one, a value that does not fit is an error.
type Rounding string

// Rounding modes.
const (
	RoundNone     Rounding = ""
	RoundHalfEven Rounding = "half_even"
	RoundHalfUp   Rounding = "half_up"
	RoundDown     Rounding = "down"
)

func (r Rounding) apply(d decimal.Decimal, scale int32) decimal.Decimal {
	switch r {
	case RoundHalfEven:
		return d.RoundBank(scale)
	case RoundHalfUp:
		return d.Round(scale)
	case RoundDown:
		return d.Truncate(scale)
	}
	return d
}

// toMinorUnits converts an amount into integer minor units of its
// currency, refusing an amount with more decimals than the currency has.
func (m *Mapping) toMinorUnits(amount decimal.Decimal, currency string, r Rounding) (int64, error) {
	scale, err := m.CurrencyScale(currency)
	if err != nil {
		return 0, err
	}
	if !fitsScale(amount, scale) {
		if r == RoundNone {
			return 0, fmt.Errorf("amount %s %s has more than the %d decimals of its currency", amount.String(), currency, scale)
		}
		amount = r.apply(amount, scale)
	}
	minor := amount.Shift(scale)
	bi := minor.BigInt()
	if !bi.IsInt64() {
		return 0, fmt.Errorf("amount %s %s is out of range for minor units in a bigint", amount.String(), currency)
	}
	return bi.Int64(), nil
}

// fromMinorUnits is the exact inverse of toMinorUnits.
func (m *Mapping) fromMinorUnits(minor int64, currency string) (decimal.Decimal, error) {
	scale, err := m.CurrencyScale(currency)
	if err != nil {
		return decimal.Decimal{}, err
	}
	return decimal.New(minor, -scale), nil
}
