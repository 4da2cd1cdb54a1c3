package postgres

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

func TestDecoder_Decode(t *testing.T) {
	tests := []struct {
		name    string
		oid     uint32
		text    string
		want    any
		wantErr bool
	}{
		{name: "bool true", oid: pgtype.BoolOID, text: "t", want: true},
		{name: "bool false", oid: pgtype.BoolOID, text: "f", want: false},
		{name: "bool bad", oid: pgtype.BoolOID, text: "x", wantErr: true},
		{name: "int8 max", oid: pgtype.Int8OID, text: "9223372036854775807", want: int64(9223372036854775807)},
		{name: "int2 negative", oid: pgtype.Int2OID, text: "-32768", want: int64(-32768)},
		{name: "int bad", oid: pgtype.Int4OID, text: "1.5", wantErr: true},
		{name: "numeric exact", oid: pgtype.NumericOID, text: "1234567890123456789012345678.123456789", want: decimal.RequireFromString("1234567890123456789012345678.123456789")},
		{name: "numeric cent", oid: pgtype.NumericOID, text: "0.01", want: decimal.RequireFromString("0.01")},
		{name: "numeric NaN", oid: pgtype.NumericOID, text: "NaN", want: capture.Special("NaN")},
		{name: "numeric -Infinity", oid: pgtype.NumericOID, text: "-Infinity", want: capture.Special("-Infinity")},
		{name: "text", oid: pgtype.TextOID, text: "héllo", want: "héllo"},
		{name: "char padded", oid: pgtype.BPCharOID, text: "EU ", want: "EU "},
		{name: "uuid", oid: pgtype.UUIDOID, text: "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01", want: "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01"},
		{name: "jsonb", oid: pgtype.JSONBOID, text: `{"a": 1}`, want: json.RawMessage(`{"a": 1}`)},
		{name: "timestamptz utc", oid: pgtype.TimestamptzOID, text: "2026-11-24 01:02:03.123456+00", want: time.Date(2026, 11, 24, 1, 2, 3, 123456000, time.UTC)},
		{name: "timestamptz offset", oid: pgtype.TimestamptzOID, text: "2026-11-24 03:02:03+02", want: time.Date(2026, 11, 24, 1, 2, 3, 0, time.UTC)},
		{name: "timestamptz infinity", oid: pgtype.TimestamptzOID, text: "infinity", want: capture.Special("infinity")},
		{name: "timestamp", oid: pgtype.TimestampOID, text: "2026-11-24 01:02:03", want: time.Date(2026, 11, 24, 1, 2, 3, 0, time.UTC)},
		{name: "date", oid: pgtype.DateOID, text: "2026-02-28", want: time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC)},
		{name: "bytea", oid: pgtype.ByteaOID, text: `\x00ff`, want: []byte{0, 255}},
		{name: "other type kept as text", oid: pgtype.Float8OID, text: "0.1", want: "0.1"},
	}
	d := NewDecoder()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.Decode(tt.oid, []byte(tt.text))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Decode(%d, %q) error = %v, wantErr %v", tt.oid, tt.text, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if gd, ok := got.(decimal.Decimal); ok {
				if !gd.Equal(tt.want.(decimal.Decimal)) || gd.String() != tt.want.(decimal.Decimal).String() {
					t.Errorf("Decode = %s, want %s", gd, tt.want)
				}
				return
			}
			if gt, ok := got.(time.Time); ok {
				if !gt.Equal(tt.want.(time.Time)) || gt.Location() != time.UTC {
					t.Errorf("Decode = %v, want %v in UTC", gt, tt.want)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode = %#v, want %#v", got, tt.want)
			}
		})
	}
}

// FuzzDecoder_Numeric: any numeric text PostgreSQL could send decodes to a
// decimal that prints back to the same value, or to Special, or is refused;
// it never panics and never changes a digit.
func FuzzDecoder_Numeric(f *testing.F) {
	for _, s := range []string{"0", "0.01", "-1234.5600", "99999999999999999999999999999999999999", "NaN", "1e5", "", "."} {
		f.Add(s)
	}
	d := NewDecoder()
	f.Fuzz(func(t *testing.T, s string) {
		v, err := d.Decode(pgtype.NumericOID, []byte(s))
		if err != nil {
			return
		}
		switch x := v.(type) {
		case capture.Special:
		case decimal.Decimal:
			back, err := decimal.NewFromString(x.String())
			if err != nil || !back.Equal(x) {
				t.Fatalf("%q decoded to %s which does not read back (%v)", s, x, err)
			}
			orig, err := decimal.NewFromString(s)
			if err == nil && !orig.Equal(x) {
				t.Fatalf("%q decoded to a different value %s", s, x)
			}
		default:
			t.Fatalf("%q decoded to %T", s, v)
		}
	})
}
