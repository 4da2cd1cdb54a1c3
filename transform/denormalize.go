package transform

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
)

// ColValue is the value for one target column, as PostgreSQL text.
type ColValue struct {
	Column string
	// Null is set for SQL NULL; Text is unused then.
	Null bool
	Text string
	// Ref, when set, means Text is the canonical key of Ref.Entity and the
	// sink must look up the column value in the target (Ref.Column of the
	// referenced row).
	Ref *Ref
	// InsertOnly: the value of a field the change left unchanged
	// (Event.Unchanged), written only when the row is created, never
	// over an existing row.
	InsertOnly bool
}

// Row is a canonical event made ready for one system: the table, the key
// columns' values, and the columns to write, sorted by column name.
type Row struct {
	Entity *Entity
	Table  *TableMap
	Op     Op
	// Key is the text of the key columns' values, joined by
	// capture.JoinKey (one key column: its value); KeyParts holds them,
	// in the order of Table.KeyColumns().
	Key      string
	KeyParts []string
	Values   []ColValue
	// Guards are values the target row must already hold for Values to
	// be written (the currency next to an amount, owned by another
	// system); a row that holds something else is an error, not a write.
	Guards []ColValue
	// Unknown lists the fields the change left unchanged whose value is
	// not known (Event.Unchanged without a value): the row is updated if
	// it exists, but cannot be created from this event.
	Unknown []string
}

// fieldOfColumn returns the field a column of the table stores, if any.
func fieldOfColumn(e *Entity, t *TableMap, column string) string {
	for name, c := range t.Columns {
		if c.Column == column {
			return name
		}
	}
	return ""
}

// Signature names the set of columns written, so that rows with the same
// columns can share one set-based statement.
func (r *Row) Signature() string {
	var b strings.Builder
	for _, v := range r.Values {
		b.WriteString(v.Column)
		if v.InsertOnly {
			b.WriteByte('+')
		}
		b.WriteByte(',')
	}
	if len(r.Unknown) > 0 {
		b.WriteByte('?')
	}
	return b.String()
}

// Denormalize turns a canonical event into the column values of system.
// Only the fields the event's source carries are written. It returns an
// error naming entity, key, field and value when a value does not fit the
// target column exactly.
func (m *Mapping) Denormalize(ev *Event, system string) (*Row, error) {
	e := m.Entity(ev.Entity)
	if e == nil {
		return nil, &EventError{ID: ev.ID, Reason: "unknown entity " + ev.Entity}
	}
	t := e.Tables[system]
	if t == nil {
		return nil, &EventError{ID: ev.ID, Reason: fmt.Sprintf("entity %s has no %s table", ev.Entity, system)}
	}
	r := &Row{Entity: e, Table: t, Op: ev.Op}
	if ev.Op == OpTruncate {
		return r, nil
	}
	parts, err := capture.SplitKey(ev.Key, len(e.Key))
	if err != nil {
		return nil, &EventError{ID: ev.ID, Reason: fmt.Sprintf("entity %s: %v", e.Name, err)}
	}
	r.KeyParts = make([]string, len(parts))
	for i, kf := range e.Key {
		kv, err := m.targetText(e, e.Field(kf), t.Columns[kf], parts[i], ev.Key)
		if err != nil {
			return nil, err
		}
		r.KeyParts[i] = kv.Text
	}
	r.Key = capture.JoinKey(r.KeyParts)
	if ev.Op == OpDelete {
		return r, nil
	}
	if ev.Op != OpUpsert {
		return nil, &EventError{ID: ev.ID, Reason: fmt.Sprintf("unknown operation %q", ev.Op)}
	}
	r.Values = make([]ColValue, 0, len(t.Columns))
	currencyCols := map[string]string{} // currency column -> currency a money value needs there
	for _, f := range e.Fields {
		c := t.Columns[f.Name]
		if c == nil || c.Column == "" {
			continue
		}
		if c.converter(f) == ConvConstant {
			r.Values = append(r.Values, ColValue{Column: c.Column, Text: *c.Value})
			continue
		}
		if !carries(e, f, ev.Source) {
			continue
		}
		v, ok := ev.Data[f.Name]
		if c.Ref != nil && len(c.Ref.Fields) > 0 {
			v, ok, err = refValue(e, c, f.Name, ev)
			if err != nil {
				return nil, err
			}
		}
		unchanged := slices.Contains(ev.Unchanged, f.Name)
		if !ok {
			if unchanged {
				r.Unknown = append(r.Unknown, f.Name)
			}
			continue
		}
		cv, err := m.targetText(e, f, c, v, ev.Key)
		if err != nil {
			return nil, err
		}
		if unchanged {
			cv.InsertOnly = true
			r.Values = append(r.Values, cv)
			continue
		}
		r.Values = append(r.Values, cv)
		if c.CurrencyColumn != "" && v != nil {
			mv, _ := moneyOf(v)
			if prev, ok := currencyCols[c.CurrencyColumn]; ok && prev != mv.Currency {
				return nil, &FieldError{Entity: e.Name, Key: ev.Key, Field: f.Name, Value: describe(v), PII: f.PII,
					Err: fmt.Errorf("currency %s differs from %s that another amount puts in column %s", mv.Currency, prev, c.CurrencyColumn)}
			}
			currencyCols[c.CurrencyColumn] = mv.Currency
		}
	}
	// An amount is only meaningful with its currency: the currency column
	// must hold the money's currency, written by the currency field or,
	// when no field writes it, by the amount itself.
	for _, col := range sortedKeys(currencyCols) {
		cur := currencyCols[col]
		i := slices.IndexFunc(r.Values, func(v ColValue) bool { return v.Column == col })
		if i < 0 {
			if fieldOfColumn(e, t, col) != "" {
				// Another system's field holds the currency: the amount
				// may only land next to the same currency.
				r.Guards = append(r.Guards, ColValue{Column: col, Text: cur})
			} else {
				r.Values = append(r.Values, ColValue{Column: col, Text: cur})
			}
			continue
		}
		if got := strings.ToUpper(strings.TrimSpace(r.Values[i].Text)); r.Values[i].Null || got != cur {
			return nil, &FieldError{Entity: e.Name, Key: ev.Key, Field: col, Value: r.Values[i].Text,
				Err: fmt.Errorf("currency column %s would hold %q but an amount of the same row is in %s", col, r.Values[i].Text, cur)}
		}
	}
	sort.Slice(r.Values, func(i, j int) bool { return r.Values[i].Column < r.Values[j].Column })
	return r, nil
}

// refValue is the canonical value of a reference made of several fields
// (ref fields: [company, entry_no]): the referenced key's text, joined by
// capture.JoinKey from the event's values of those fields; nil when one of
// them is NULL. ok is false when the event carries none of them (the
// reference is not written); an event carrying only some is an error, as
// the reference cannot be found by half a key.
func refValue(e *Entity, c *ColumnMap, field string, ev *Event) (v any, ok bool, err error) {
	fields := c.Ref.FieldsFor(field)
	parts := make([]string, 0, len(fields))
	var missing []string
	null := false
	for _, rf := range fields {
		x, has := ev.Data[rf]
		switch {
		case !has:
			missing = append(missing, rf)
		case x == nil:
			null = true
		default:
			s, isStr := x.(string)
			if !isStr {
				return nil, false, &FieldError{Entity: e.Name, Key: ev.Key, Field: rf, Value: describe(x), Err: fmt.Errorf("reference part must be a key string, have %T", x)}
			}
			parts = append(parts, s)
		}
	}
	switch {
	case len(missing) == len(fields):
		return nil, false, nil
	case len(missing) > 0:
		return nil, false, &FieldError{Entity: e.Name, Key: ev.Key, Field: field, Value: "",
			Err: fmt.Errorf("the reference to %s is made of fields %s, and the event lacks %s", c.Ref.Entity, Names(fields), Names(missing))}
	case null:
		return nil, true, nil
	}
	return capture.JoinKey(parts), true, nil
}

// targetText converts a canonical value to the text of a target column.
func (m *Mapping) targetText(e *Entity, f *Field, c *ColumnMap, v any, key string) (ColValue, error) {
	out := ColValue{Column: c.Column, Ref: c.Ref}
	if v == nil {
		out.Null = true
		return out, nil
	}
	fail := func(err error) (ColValue, error) {
		return ColValue{}, &FieldError{Entity: e.Name, Key: key, Field: f.Name, Value: describe(v), PII: f.PII, Err: err}
	}
	if c.Ref != nil {
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("reference must be a key string, have %T", v))
		}
		out.Text = s
		return out, nil
	}
	conv := c.converter(f)
	switch conv {
	case ConvMoney, ConvMoneyMinor:
		mv, err := moneyOf(v)
		if err != nil {
			return fail(err)
		}
		if c.Currency != "" && !strings.EqualFold(c.Currency, mv.Currency) {
			return fail(fmt.Errorf("currency %s does not match the column's fixed currency %s", mv.Currency, c.Currency))
		}
		amount, err := parseDecimal(mv.Amount)
		if err != nil {
			return fail(fmt.Errorf("amount %q is %w", mv.Amount, err))
		}
		if conv == ConvMoneyMinor {
			n, err := m.toMinorUnits(amount, mv.Currency, c.Rounding)
			if err != nil {
				return fail(err)
			}
			if err := fitsInt(n, c.info); err != nil {
				return fail(err)
			}
			out.Text = strconv.FormatInt(n, 10)
			return out, nil
		}
		s, err := numericText(amount, c)
		if err != nil {
			return fail(err)
		}
		out.Text = s
		return out, nil
	case ConvInteger, ConvDecimal:
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("want a decimal string, have %T", v))
		}
		d, err := parseDecimal(s)
		if err != nil {
			return fail(err)
		}
		if c.info != nil && isIntType(c.info) {
			if !d.IsInteger() || !d.BigInt().IsInt64() {
				return fail(fmt.Errorf("does not fit integer column %s", c.Column))
			}
			if err := fitsInt(d.IntPart(), c.info); err != nil {
				return fail(err)
			}
			out.Text = d.BigInt().String()
			return out, nil
		}
		txt, err := numericText(d, c)
		if err != nil {
			return fail(err)
		}
		out.Text = txt
		return out, nil
	case ConvBoolean:
		b, ok := v.(bool)
		if !ok {
			return fail(fmt.Errorf("want a boolean, have %T", v))
		}
		out.Text = strconv.FormatBool(b)
		return out, nil
	case ConvTimestamp:
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("want a timestamp string, have %T", v))
		}
		ts, inf, err := ParseCanonicalTime(s, false)
		switch {
		case err != nil:
			return fail(err)
		case inf != 0:
			out.Text = pgInfinity(inf)
		case c.info != nil && c.info.Type == "timestamp":
			out.Text = pgDateTimeText(ts, false, false)
		case ts.Year() >= 1 && ts.Year() <= 9999:
			out.Text = ts.UTC().Format(time.RFC3339Nano)
		default:
			out.Text = pgDateTimeText(ts, false, true)
		}
		return out, nil
	case ConvDate:
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("want a date string, have %T", v))
		}
		d, inf, err := ParseCanonicalTime(s, true)
		switch {
		case err != nil:
			return fail(err)
		case inf != 0:
			out.Text = pgInfinity(inf)
		default:
			out.Text = pgDateTimeText(d, true, false)
		}
		return out, nil
	case ConvEnum:
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("want an enum string, have %T", v))
		}
		// Several system values may map to one canonical value; the
		// smallest is written, so the choice is stable.
		for _, sv := range sortedKeys(c.Enum) {
			if c.Enum[sv] == s {
				out.Text = sv
				return out, nil
			}
		}
		return fail(fmt.Errorf("no %s value is mapped for it", c.Column))
	default:
		s, ok := v.(string)
		if !ok {
			return fail(fmt.Errorf("want a string, have %T", v))
		}
		if c.info != nil && c.info.MaxLen >= 0 && len([]rune(s)) > c.info.MaxLen {
			return fail(fmt.Errorf("longer than the %d characters of column %s", c.info.MaxLen, c.Column))
		}
		out.Text = s
		return out, nil
	}
}

// numericText formats an exact decimal for a numeric column, refusing a
// value with more decimals than the column's scale (unless the mapping names
// a rounding mode) or more digits than its precision.
func numericText(d decimal.Decimal, c *ColumnMap) (string, error) {
	if c.info != nil && c.info.Scale >= 0 {
		if !fitsScale(d, c.info.Scale) {
			if c.Rounding == RoundNone {
				return "", fmt.Errorf("has more than the %d decimals of column %s %s", c.info.Scale, c.Column, c.info.SQLType)
			}
			d = c.Rounding.apply(d, c.info.Scale)
		}
		if c.info.Precision > 0 && !fitsPrecision(d, c.info.Precision, c.info.Scale) {
			return "", fmt.Errorf("is too large for column %s %s", c.Column, c.info.SQLType)
		}
	}
	return formatExact(d, 0), nil
}

func fitsInt(n int64, ci *ColumnInfo) error {
	if ci == nil {
		return nil
	}
	switch ci.Type {
	case "int2":
		if n < -1<<15 || n >= 1<<15 {
			return fmt.Errorf("out of range for smallint column %s", ci.Name)
		}
	case "int4":
		if n < -1<<31 || n >= 1<<31 {
			return fmt.Errorf("out of range for integer column %s", ci.Name)
		}
	case "numeric":
		if ci.Precision > 0 && !fitsPrecision(decimal.NewFromInt(n), ci.Precision, 0) {
			return fmt.Errorf("too large for column %s %s", ci.Name, ci.SQLType)
		}
	}
	return nil
}

func moneyOf(v any) (Money, error) {
	switch x := v.(type) {
	case Money:
		return x, nil
	case *Money:
		return *x, nil
	case map[string]any:
		a, _ := x["amount"].(string)
		c, _ := x["currency"].(string)
		if a == "" || c == "" {
			return Money{}, errors.New("money needs amount and currency")
		}
		return Money{Amount: a, Currency: strings.ToUpper(c)}, nil
	}
	return Money{}, fmt.Errorf("want money, have %T", v)
}
