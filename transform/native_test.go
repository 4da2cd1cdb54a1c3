package transform

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

func TestNativeText(t *testing.T) {
	for _, c := range []struct {
		in   any
		want string
	}{
		{"{a,\"b c\",NULL}", "{a,\"b c\",NULL}"},
		{capture.Special("NaN"), "NaN"},
		{capture.Special("-Infinity"), "-Infinity"},
		{int64(-9223372036854775808), "-9223372036854775808"},
		{decimal.RequireFromString("1.50"), "1.50"},
		{decimal.RequireFromString("12345678901234567890.000000000001"), "12345678901234567890.000000000001"},
		{true, "true"},
		{time.Date(2026, 11, 24, 7, 1, 2, 123456000, time.UTC), "2026-11-24 07:01:02.123456+00"},
		{time.Date(-4712, 1, 1, 0, 0, 0, 0, time.UTC), "4713-01-01 00:00:00+00 BC"},
		{time.Date(0, 12, 31, 23, 59, 59, 999999000, time.UTC), "0001-12-31 23:59:59.999999+00 BC"},
		{time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), "294276-12-31 23:59:59.999999+00"},
		{time.Date(5874897, 12, 31, 0, 0, 0, 0, time.UTC), "5874897-12-31 00:00:00+00"},
		{capture.Special("infinity"), "infinity"},
		{json.RawMessage(`{"a": [1, 2]}`), `{"a": [1, 2]}`},
		{[]byte{0, 1, 0xfe}, `\x0001fe`},
	} {
		got, err := nativeText(c.in)
		if err != nil || got != c.want {
			t.Errorf("nativeText(%#v) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := nativeText(struct{}{}); err == nil {
		t.Error("nativeText of an unknown value did not fail")
	}
}

func TestNativeFits(t *testing.T) {
	for _, c := range []struct {
		typ, col string
		ok       bool
	}{
		{TypeFloat, "float8", true}, {TypeFloat, "float4", true}, {TypeFloat, "numeric", false},
		{TypeTime, "timetz", true}, {TypeTime, "timestamp", false},
		{TypeInterval, "interval", true}, {TypeJSON, "jsonb", true}, {TypeJSON, "text", false},
		{TypeBytes, "bytea", true}, {TypeArray, "_text", true}, {TypeArray, "text", false},
		{TypeNative, "tsvector", true},
	} {
		if got := nativeFits(&Field{Type: c.typ}, &ColumnInfo{Type: c.col}); got != c.ok {
			t.Errorf("nativeFits(%s, %s) = %v", c.typ, c.col, got)
		}
	}
}

// A float column is never money: the catalog check refuses it, naming the
// column type, field and converter.
func TestFloatIsNeverMoney(t *testing.T) {
	for _, conv := range []string{ConvMoney, ConvDecimal} {
		err := columnFits(&Field{Name: "amount", Type: TypeMoney}, conv, &ColumnInfo{Type: "float8", SQLType: "double precision"})
		if err == nil || !strings.Contains(err.Error(), "double precision") {
			t.Errorf("float8 for money through %s: %v", conv, err)
		}
	}
	if err := columnFits(&Field{Name: "x", Type: TypeFloat}, ConvNative, &ColumnInfo{Type: "float8", SQLType: "double precision"}); err != nil {
		t.Errorf("float8 as float: %v", err)
	}
	if err := columnFits(&Field{Name: "x", Type: TypeNative}, ConvNative, &ColumnInfo{Type: "money", SQLType: "money"}); err == nil {
		t.Errorf("the money type was accepted as native")
	}
}
