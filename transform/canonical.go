package transform

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

// skip marks a field that is not carried (unchanged TOAST value).
var skip = &struct{}{}

// canonical converts a column value of a source row to the field's
// canonical value.
func (m *Mapping) canonical(e *Entity, f *Field, c *ColumnMap, row capture.Row, key string) (any, error) {
	conv := c.converter(f)
	if conv == ConvConstant {
		return *c.Value, nil
	}
	v, ok := row[c.Column]
	if !ok {
		return skip, nil
	}
	if u, ok := v.(capture.Unchanged); ok {
		if !u.Known {
			return skip, nil
		}
		v = u.Value // the value it holds (normalize marks it unchanged)
	}
	fail := func(err error) (any, error) {
		return nil, &FieldError{Entity: e.Name, Key: key, Field: f.Name, Value: describe(v), PII: f.PII, Err: err}
	}
	if v == nil {
		return nil, nil
	}
	if conv == ConvNative {
		t, err := nativeText(v)
		if err != nil {
			return fail(err)
		}
		return t, nil
	}
	if inf := timeInfinity(v); inf != "" && (conv == ConvTimestamp || conv == ConvDate) {
		return inf, nil
	}
	if sp, ok := v.(capture.Special); ok {
		return fail(fmt.Errorf("%s cannot be carried exactly as %s", string(sp), f.Type))
	}
	switch conv {
	case ConvText:
		s, err := asText(v)
		if err != nil {
			return fail(err)
		}
		if f.Type == TypeCurrency {
			s = strings.ToUpper(strings.TrimSpace(s))
			if _, err := m.CurrencyScale(s); err != nil {
				return fail(err)
			}
		}
		if f.Type == TypeEnum && !slices.Contains(f.Values, s) {
			return fail(fmt.Errorf("not a value of the enum (%s)", strings.Join(f.Values, ", ")))
		}
		return s, nil
	case ConvUUID:
		s, err := asText(v)
		if err != nil {
			return fail(err)
		}
		return s, nil
	case ConvEnum:
		s, err := asText(v)
		if err != nil {
			return fail(err)
		}
		cv, ok := c.Enum[s]
		if !ok {
			return fail(errors.New("no canonical value is mapped for it"))
		}
		return cv, nil
	case ConvInteger, ConvDecimal:
		d, err := asDecimal(v)
		if err != nil {
			return fail(err)
		}
		if f.Type == TypeInteger && !d.IsInteger() {
			return fail(errors.New("not an integer"))
		}
		return formatExact(d, 0), nil
	case ConvMoney, ConvMoneyMinor:
		cur, err := m.currencyOf(c, row)
		if err != nil {
			return fail(err)
		}
		var amount decimal.Decimal
		if conv == ConvMoneyMinor {
			n, ok := v.(int64)
			if !ok {
				d, err := asDecimal(v)
				if err != nil || !d.IsInteger() || !d.BigInt().IsInt64() {
					return fail(errors.New("minor units must be an integer"))
				}
				n = d.IntPart()
			}
			amount, err = m.fromMinorUnits(n, cur)
		} else {
			amount, err = asDecimal(v)
		}
		if err != nil {
			return fail(err)
		}
		money, err := m.NewMoney(amount, cur)
		if err != nil {
			return fail(err)
		}
		return money, nil
	case ConvTimestamp:
		t, ok := v.(time.Time)
		if !ok {
			return fail(fmt.Errorf("want a timestamp, have %T", v))
		}
		return CanonicalTimestamp(t), nil
	case ConvDate:
		t, ok := v.(time.Time)
		if !ok {
			return fail(fmt.Errorf("want a date, have %T", v))
		}
		return CanonicalDate(t), nil
	case ConvBoolean:
		b, ok := v.(bool)
		if !ok {
			return fail(fmt.Errorf("want a boolean, have %T", v))
		}
		return b, nil
	}
	return fail(fmt.Errorf("unknown converter %s", conv))
}

func (m *Mapping) currencyOf(c *ColumnMap, row capture.Row) (string, error) {
	if c.Currency != "" {
		return strings.ToUpper(c.Currency), nil
	}
	v, ok := row[c.CurrencyColumn]
	if !ok || v == nil {
		return "", fmt.Errorf("currency column %s is empty", c.CurrencyColumn)
	}
	if u, ok := v.(capture.Unchanged); ok {
		if !u.Known || u.Value == nil {
			return "", fmt.Errorf("currency column %s was not sent", c.CurrencyColumn)
		}
		v = u.Value
	}
	s, err := asText(v)
	if err != nil {
		return "", err
	}
	return strings.ToUpper(strings.TrimSpace(s)), nil
}

func asText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case decimal.Decimal:
		return formatExact(x, 0), nil
	case uuid.UUID:
		return x.String(), nil
	case json.RawMessage:
		return string(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", fmt.Errorf("want text, have %T", v)
}

func asDecimal(v any) (decimal.Decimal, error) {
	switch x := v.(type) {
	case decimal.Decimal:
		return x, nil
	case int64:
		return decimal.NewFromInt(x), nil
	case string:
		return parseDecimal(x)
	}
	return decimal.Decimal{}, fmt.Errorf("want a number, have %T", v)
}

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case decimal.Decimal:
		return x.String()
	case time.Time:
		return CanonicalTimestamp(x)
	case capture.Special:
		return string(x)
	case Money:
		return x.Amount + " " + x.Currency
	case map[string]any:
		if m, err := moneyOf(x); err == nil {
			return m.Amount + " " + m.Currency
		}
	case []byte:
		return fmt.Sprintf("\\x%x", x)
	case json.RawMessage:
		return string(x)
	}
	return fmt.Sprint(v)
}

// CanonicalRow converts a stored row of an entity in a system into its
// canonical key and the canonical values of the given fields (all mapped
// fields when fields is nil). Reference columns must already hold the
// referenced entity's canonical key.
func (m *Mapping) CanonicalRow(system string, e *Entity, row capture.Row, fields []string) (string, map[string]any, error) {
	t := e.Tables[system]
	if t == nil {
		return "", nil, fmt.Errorf("entity %s has no %s table", e.Name, system)
	}
	parts := make([]string, len(e.Key))
	for i, kf := range e.Key {
		k, err := m.canonical(e, e.Field(kf), t.Columns[kf], row, "")
		if err != nil {
			return "", nil, err
		}
		parts[i], _ = k.(string)
	}
	key := capture.JoinKey(parts)
	data := map[string]any{}
	for _, f := range e.Fields {
		c := t.Columns[f.Name]
		if c == nil || (fields != nil && !slices.Contains(fields, f.Name)) {
			continue
		}
		v, err := m.canonical(e, f, c, row, key)
		if err != nil {
			return key, nil, err
		}
		if v != skip {
			data[f.Name] = v
		}
	}
	return key, data, nil
}

// Equal compares two canonical values of a field by meaning: amounts and
// decimals numerically (12.5 equals 12.50), timestamps as instants.
func (f *Field) Equal(a, b any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	switch f.Type {
	case TypeMoney:
		ma, err1 := moneyOf(a)
		mb, err2 := moneyOf(b)
		if err1 != nil || err2 != nil || ma.Currency != mb.Currency {
			return false
		}
		da, err1 := parseDecimal(ma.Amount)
		db, err2 := parseDecimal(mb.Amount)
		return err1 == nil && err2 == nil && da.Equal(db)
	case TypeDecimal, TypeInteger:
		sa, _ := a.(string)
		sb, _ := b.(string)
		da, err1 := parseDecimal(sa)
		db, err2 := parseDecimal(sb)
		return err1 == nil && err2 == nil && da.Equal(db)
	case TypeTimestamp:
		sa, _ := a.(string)
		sb, _ := b.(string)
		ta, ia, err1 := ParseCanonicalTime(sa, false)
		tb, ib, err2 := ParseCanonicalTime(sb, false)
		return err1 == nil && err2 == nil && ia == ib && ta.Equal(tb)
	}
	return a == b
}

// ColumnCanonical converts the text of one column of a system's stored
// row, as PostgreSQL outputs it (what pgoutput sends; nil for NULL), into
// the canonical value of the entity's field: what the capture of that
// system would publish for it. The sink uses it to compare the value a
// shared field holds with the recorded version, which is kept by
// canonical value.
func (m *Mapping) ColumnCanonical(system string, e *Entity, field string, text *string) (any, error) {
	f := e.Field(field)
	t := e.Tables[system]
	if f == nil || t == nil || t.Columns[field] == nil {
		return nil, fmt.Errorf("entity %s: field %s has no %s column", e.Name, field, system)
	}
	c := t.Columns[field]
	var v any
	if text != nil {
		v = *text
	}
	out, err := m.canonical(e, f, c, capture.Row{c.Column: v}, "")
	if err != nil {
		return nil, err
	}
	if out == skip {
		return nil, fmt.Errorf("entity %s: field %s: no value", e.Name, field)
	}
	return out, nil
}
