package transform

import (
	"errors"
	"fmt"
	"strings"

	"github.com/shopspring/decimal"
)

// currencyScale is the ISO 4217 minor unit (number of decimals) of active
// currencies. Currencies missing here are refused, never guessed.
var currencyScale = map[string]int32{
	"AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2, "AWG": 2, "AZN": 2,
	"BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0, "BMD": 2, "BND": 2, "BOB": 2, "BRL": 2,
	"BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2, "CAD": 2, "CDF": 2, "CHF": 2, "CLF": 4, "CLP": 0,
	"CNY": 2, "COP": 2, "CRC": 2, "CUP": 2, "CVE": 2, "CZK": 2, "DJF": 0, "DKK": 2, "DOP": 2, "DZD": 2,
	"EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2, "FJD": 2, "FKP": 2, "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2,
	"GMD": 2, "GNF": 0, "GTQ": 2, "GYD": 2, "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2, "IDR": 2, "ILS": 2,
	"INR": 2, "IQD": 3, "IRR": 2, "ISK": 0, "JMD": 2, "JOD": 3, "JPY": 0, "KES": 2, "KGS": 2, "KHR": 2,
	"KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2, "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2,
	"LSL": 2, "LYD": 3, "MAD": 2, "MDL": 2, "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2,
	"MUR": 2, "MVR": 2, "MWK": 2, "MXN": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2, "NOK": 2,
	"NPR": 2, "NZD": 2, "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2, "PKR": 2, "PLN": 2, "PYG": 0,
	"QAR": 2, "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0, "SAR": 2, "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2,
	"SGD": 2, "SHP": 2, "SLE": 2, "SOS": 2, "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2,
	"THB": 2, "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2, "TWD": 2, "TZS": 2, "UAH": 2,
	"UGX": 0, "USD": 2, "UYI": 0, "UYU": 2, "UYW": 4, "UZS": 2, "VES": 2, "VND": 0, "VUV": 0, "WST": 2,
	"XAF": 0, "XCD": 2, "XOF": 0, "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2, "ZWG": 2,
}

// CurrencyScale returns the ISO 4217 number of decimals of a currency code.
func CurrencyScale(code string) (int32, error) {
	s, ok := currencyScale[strings.ToUpper(strings.TrimSpace(code))]
	if !ok {
		return 0, fmt.Errorf("unknown currency %q (not an active ISO 4217 code)", code)
	}
	return s, nil
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
	cur := strings.ToUpper(strings.TrimSpace(currency))
	scale, err := CurrencyScale(cur)
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
func toMinorUnits(amount decimal.Decimal, currency string, r Rounding) (int64, error) {
	scale, err := CurrencyScale(currency)
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
func fromMinorUnits(minor int64, currency string) (decimal.Decimal, error) {
	scale, err := CurrencyScale(currency)
	if err != nil {
		return decimal.Decimal{}, err
	}
	return decimal.New(minor, -scale), nil
}
