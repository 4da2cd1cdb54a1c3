package postgres

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

// Decoder turns PostgreSQL text-format values into exact Go values. It is
// not safe for concurrent use.
type Decoder struct {
	types *pgtype.Map
}

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder { return &Decoder{types: pgtype.NewMap()} }

// Decode converts the text form of a value of type oid. Values of types
// with no exact Go form of their own are kept as their text (string), which
// is exact; numeric NaN and ±Infinity become capture.Special.
func (d *Decoder) Decode(oid uint32, text []byte) (any, error) {
	switch oid {
	case pgtype.BoolOID:
		switch string(text) {
		case "t", "true":
			return true, nil
		case "f", "false":
			return false, nil
		}
		return nil, fmt.Errorf("bad boolean %q", text)
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		n, err := strconv.ParseInt(string(text), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad integer %q", text)
		}
		return n, nil
	case pgtype.NumericOID:
		switch s := string(text); s {
		case "NaN", "Infinity", "-Infinity":
			return capture.Special(s), nil
		default:
			v, err := decimal.NewFromString(s)
			if err != nil {
				return nil, fmt.Errorf("bad numeric %q: %w", s, err)
			}
			return v, nil
		}
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.UUIDOID:
		return string(text), nil
	case pgtype.JSONOID, pgtype.JSONBOID:
		return json.RawMessage(append([]byte(nil), text...)), nil
	case pgtype.TimestamptzOID, pgtype.TimestampOID, pgtype.DateOID:
		var t pgtype.Timestamptz
		var err error
		switch oid {
		case pgtype.TimestamptzOID:
			err = d.types.Scan(oid, pgtype.TextFormatCode, text, &t)
		case pgtype.TimestampOID:
			var ts pgtype.Timestamp
			err = d.types.Scan(oid, pgtype.TextFormatCode, text, &ts)
			t = pgtype.Timestamptz(ts)
		default:
			var dt pgtype.Date
			err = d.types.Scan(oid, pgtype.TextFormatCode, text, &dt)
			t = pgtype.Timestamptz(dt)
		}
		if err != nil {
			return nil, fmt.Errorf("bad timestamp %q: %w", text, err)
		}
		if t.InfinityModifier != pgtype.Finite {
			return capture.Special(string(text)), nil
		}
		return t.Time.UTC(), nil
	case pgtype.ByteaOID:
		var b []byte
		if err := d.types.Scan(oid, pgtype.TextFormatCode, text, &b); err != nil {
			return nil, fmt.Errorf("bad bytea: %w", err)
		}
		return b, nil
	}
	return string(text), nil
}
