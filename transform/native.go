package transform

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

// Canonical types carried as PostgreSQL's own text form between columns of
// the same kind: exact for every value of the type (the text form is what
// PostgreSQL reads back), so no Go representation can lose anything.
const (
	TypeFloat    = "float"    // real, double precision: only as their own type, never into money
	TypeTime     = "time"     // time, time with time zone
	TypeInterval = "interval" // interval
	TypeJSON     = "json"     // json, jsonb
	TypeBytes    = "bytes"    // bytea
	TypeArray    = "array"    // any array type
	TypeNative   = "native"   // any type but money, the same on both sides
)

// ConvNative carries the text form of a value unchanged.
const ConvNative = "native"

func isNativeType(t string) bool {
	switch t {
	case TypeFloat, TypeTime, TypeInterval, TypeJSON, TypeBytes, TypeArray, TypeNative:
		return true
	}
	return false
}

// nativeFits says whether a column's type is of the kind a native field
// names.
func nativeFits(f *Field, c *ColumnInfo) bool {
	switch f.Type {
	case TypeFloat:
		return c.Type == "float4" || c.Type == "float8"
	case TypeTime:
		return c.Type == "time" || c.Type == "timetz"
	case TypeInterval:
		return c.Type == "interval"
	case TypeJSON:
		return c.Type == "json" || c.Type == "jsonb"
	case TypeBytes:
		return c.Type == "bytea"
	case TypeArray:
		return strings.HasPrefix(c.Type, "_")
	case TypeNative:
		return true
	}
	return false
}

// nativeText renders a decoded value in a text form PostgreSQL reads back
// as the same value.
func nativeText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case capture.Special:
		return string(x), nil // NaN, Infinity: valid for float and numeric
	case int64:
		return strconv.FormatInt(x, 10), nil
	case decimal.Decimal:
		return formatExact(x, 0), nil
	case bool:
		return strconv.FormatBool(x), nil
	case time.Time:
		// A timestamp without time zone was decoded as UTC wall time;
		// casting this form to it drops the offset and keeps the wall
		// time, and a date takes its day. Years before 1 are written
		// with PostgreSQL's BC suffix (timevalue.go).
		return pgDateTimeText(x, false, true), nil
	case json.RawMessage:
		return string(x), nil
	case []byte:
		return `\x` + hex.EncodeToString(x), nil
	}
	return "", fmt.Errorf("no text form for %T", v)
}
