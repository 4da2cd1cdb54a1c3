// Package reconcile compares what two systems hold of each entity through
// the mapping: row counts, rows missing on either side, rows whose carried
// fields differ, and money totals per currency. It streams both sides in
// key order (bounded memory) and compares canonical values by meaning.
package reconcile

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// Side is one system's database.
type Side struct {
	System string
	Conn   *pgx.Conn
}

// Diff is one row that differs.
type Diff struct {
	Entity string
	Key    string
	// Kind is "missing" (in target), "extra" (only in target) or "changed".
	Kind   string
	Fields []string
}

func (d Diff) String() string {
	if d.Kind == "changed" {
		return fmt.Sprintf("%s %s: %s differs", d.Entity, d.Key, strings.Join(d.Fields, ", "))
	}
	return fmt.Sprintf("%s %s: %s", d.Entity, d.Key, d.Kind)
}

// EntityReport is the comparison of one entity.
type EntityReport struct {
	Entity      string
	SourceRows  int64
	TargetRows  int64
	Missing     int64
	Extra       int64
	Changed     int64
	SourceTotal map[string]decimal.Decimal // "field currency" -> sum
	TargetTotal map[string]decimal.Decimal
	// DayField is the entity's first timestamp or date field carried, by
	// whose day money is also summed ("field currency day" -> sum).
	DayField  string
	SourceDay map[string]decimal.Decimal
	TargetDay map[string]decimal.Decimal
}

// DaysDiffering lists the "field currency day" totals that differ.
func (e *EntityReport) DaysDiffering() []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range []map[string]decimal.Decimal{e.SourceDay, e.TargetDay} {
		for k := range m {
			if !seen[k] && !e.SourceDay[k].Equal(e.TargetDay[k]) {
				out = append(out, k)
			}
			seen[k] = true
		}
	}
	sort.Strings(out)
	return out
}

// Report is the comparison of all entities.
type Report struct {
	Entities []EntityReport
	// Diffs holds up to MaxDiffs differing rows.
	Diffs []Diff
}

// Equal reports whether nothing differs.
func (r *Report) Equal() bool {
	for _, e := range r.Entities {
		if e.Missing+e.Extra+e.Changed > 0 || e.SourceRows != e.TargetRows || !sameTotals(e.SourceTotal, e.TargetTotal) || len(e.DaysDiffering()) > 0 {
			return false
		}
	}
	return true
}

func sameTotals(a, b map[string]decimal.Decimal) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !v.Equal(w) {
			return false
		}
	}
	return true
}

// String renders the report as a table.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %10s %10s %8s %8s %8s\n", "entity", "source", "target", "missing", "extra", "changed")
	for _, e := range r.Entities {
		fmt.Fprintf(&b, "%-12s %10d %10d %8d %8d %8d\n", e.Entity, e.SourceRows, e.TargetRows, e.Missing, e.Extra, e.Changed)
		for _, k := range sortedKeys(e.SourceTotal) {
			mark := "="
			if !e.SourceTotal[k].Equal(e.TargetTotal[k]) {
				mark = "≠"
			}
			fmt.Fprintf(&b, "  %-30s %s %s %s\n", k, amount(k, e.SourceTotal[k]), mark, amount(k, e.TargetTotal[k]))
		}
		if e.DayField != "" {
			days := e.DaysDiffering()
			fmt.Fprintf(&b, "  per day of %s: %d totals, %d differ\n", e.DayField, max(len(e.SourceDay), len(e.TargetDay)), len(days))
			for i, k := range days {
				if i == 20 {
					fmt.Fprintf(&b, "    … %d more\n", len(days)-i)
					break
				}
				fmt.Fprintf(&b, "    %-40s %s ≠ %s\n", k, amount(k, e.SourceDay[k]), amount(k, e.TargetDay[k]))
			}
		}
	}
	for _, d := range r.Diffs {
		fmt.Fprintf(&b, "  %s\n", d)
	}
	return b.String()
}

// amount shows a total with at least its currency's decimals (the
// currency is the second word of a totals key: "field currency [day]").
func amount(key string, d decimal.Decimal) string {
	scale := int32(0)
	if w := strings.Fields(key); len(w) > 1 {
		if s, err := transform.CurrencyScale(w[1]); err == nil {
			scale = s
		}
	}
	digits := int32(0)
	if str := d.String(); strings.Contains(str, ".") { // String drops trailing zeros
		digits = int32(len(str) - strings.Index(str, ".") - 1)
	}
	return d.StringFixed(max(scale, digits))
}

func sortedKeys(m map[string]decimal.Decimal) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// MaxDiffs bounds the rows listed in a report.
const MaxDiffs = 50

// Compare compares every entity stored by both systems, over the fields a
// flow from source to target carries.
func Compare(ctx context.Context, m *transform.Mapping, src, dst Side) (*Report, error) {
	return CompareWith(ctx, m, src, dst, nil)
}

// Progress is told, every 10,000 rows and at the end of each entity, how
// many source and target rows of the entity were compared.
type Progress func(entity string, sourceRows, targetRows int64, done bool)

// CompareWith is Compare reporting progress.
func CompareWith(ctx context.Context, m *transform.Mapping, src, dst Side, progress Progress) (*Report, error) {
	rep := &Report{}
	for _, e := range m.Entities {
		if e.Tables[src.System] == nil || e.Tables[dst.System] == nil {
			continue
		}
		er, err := compareEntity(ctx, m, e, src, dst, rep, progress)
		if err != nil {
			return nil, err
		}
		rep.Entities = append(rep.Entities, er)
	}
	return rep, nil
}

type cursor struct {
	rows   pgx.Rows
	dec    *pgcapture.Decoder
	m      *transform.Mapping
	e      *transform.Entity
	system string
	fields []string
	key    string
	parts  []string // the key's parts, for ordering
	data   map[string]any
	done   bool
	err    error
}

func (c *cursor) next() {
	if !c.rows.Next() {
		c.done = true
		c.err = c.rows.Err()
		return
	}
	fds := c.rows.FieldDescriptions()
	raw := c.rows.RawValues()
	row := capture.Row{}
	nk := len(c.e.KeyFields()) // the sort key columns come first
	for i, fd := range fds[nk:] {
		if raw[i+nk] == nil {
			row[fd.Name] = nil
			continue
		}
		v, err := c.dec.Decode(fd.DataTypeOID, raw[i+nk])
		if err != nil {
			c.done, c.err = true, fmt.Errorf("%s %s: column %s: %w", c.system, c.e.Name, fd.Name, err)
			return
		}
		row[fd.Name] = v
	}
	key, data, err := c.m.CanonicalRow(c.system, c.e, row, c.fields)
	if err != nil {
		c.done, c.err = true, fmt.Errorf("%s %s: %w", c.system, c.e.Name, err)
		return
	}
	parts, err := capture.SplitKey(key, nk)
	if err != nil {
		c.done, c.err = true, fmt.Errorf("%s %s: %w", c.system, c.e.Name, err)
		return
	}
	c.key, c.parts, c.data = key, parts, data
}

// before says whether cursor a's row comes before b's in key order.
func before(a, b *cursor) bool { return capture.ComparePartsC(a.parts, b.parts) < 0 }

// query selects the key columns (as text, for ordering: one sort column
// per key column) and the columns of the fields, with reference columns
// replaced by the referenced row's key (or, for a reference made of
// several fields, by the part of the referenced key the field holds).
func query(m *transform.Mapping, e *transform.Entity, system string, fields []string) string {
	t := e.Tables[system]
	var cols, order []string
	for i, kc := range t.KeyColumns() {
		cols = append(cols, fmt.Sprintf("t.%s::text COLLATE \"C\" AS duplex_sort_key%d", pgx.Identifier{kc}.Sanitize(), i))
		order = append(order, fmt.Sprint(i+1))
	}
	joins := ""
	seen := map[string]bool{}
	add := func(expr, name string) {
		if !seen[name] {
			seen[name] = true
			cols = append(cols, expr+" AS "+pgx.Identifier{name}.Sanitize())
		}
	}
	for i, f := range fields {
		c := t.Columns[f]
		if c.Column == "" {
			continue
		}
		if c.Ref != nil {
			rt := m.Entity(c.Ref.Entity).Tables[system]
			alias := fmt.Sprintf("r%d", i)
			joins += fmt.Sprintf(" LEFT JOIN %s AS %s ON %s.%s = t.%s", pgx.Identifier{rt.Schema(), rt.Name()}.Sanitize(), alias,
				alias, pgx.Identifier{c.Ref.Column}.Sanitize(), pgx.Identifier{c.Column}.Sanitize())
			re := m.Entity(c.Ref.Entity)
			mfs := c.Ref.MatchFields(re)
			mf := mfs[0]
			if j := slices.Index(c.Ref.FieldsFor(f), f); j >= 0 && j < len(mfs) {
				mf = mfs[j]
			}
			add(alias+"."+pgx.Identifier{rt.Columns[mf].Column}.Sanitize(), c.Column)
		} else {
			add("t."+pgx.Identifier{c.Column}.Sanitize(), c.Column)
		}
		if c.CurrencyColumn != "" {
			add("t."+pgx.Identifier{c.CurrencyColumn}.Sanitize(), c.CurrencyColumn)
		}
	}
	return fmt.Sprintf("SELECT %s FROM %s AS t%s ORDER BY %s", strings.Join(cols, ", "), pgx.Identifier{t.Schema(), t.Name()}.Sanitize(), joins, strings.Join(order, ", "))
}

func open(ctx context.Context, m *transform.Mapping, e *transform.Entity, s Side, fields []string) (*cursor, error) {
	rows, err := s.Conn.Query(ctx, query(m, e, s.System, fields), pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", s.System, e.Name, err)
	}
	c := &cursor{rows: rows, dec: pgcapture.NewDecoder(), m: m, e: e, system: s.System, fields: fields}
	c.next()
	return c, nil
}

func compareEntity(ctx context.Context, m *transform.Mapping, e *transform.Entity, src, dst Side, rep *Report, progress Progress) (EntityReport, error) {
	er := EntityReport{Entity: e.Name, SourceTotal: map[string]decimal.Decimal{}, TargetTotal: map[string]decimal.Decimal{},
		SourceDay: map[string]decimal.Decimal{}, TargetDay: map[string]decimal.Decimal{}}
	fields := e.Carried(src.System, dst.System)
	for _, f := range fields {
		if t := e.Field(f).Type; t == transform.TypeTimestamp || t == transform.TypeDate {
			er.DayField = f
			break
		}
	}
	if progress != nil {
		defer func() { progress(e.Name, er.SourceRows, er.TargetRows, true) }()
	}
	a, err := open(ctx, m, e, src, fields)
	if err != nil {
		return er, err
	}
	defer a.rows.Close()
	// Two queries on one connection each cannot be open at once, so the
	// caller gives each side its own connection.
	b, err := open(ctx, m, e, dst, fields)
	if err != nil {
		return er, err
	}
	defer b.rows.Close()
	note := func(d Diff) {
		if len(rep.Diffs) < MaxDiffs {
			rep.Diffs = append(rep.Diffs, d)
		}
	}
	for !a.done || !b.done {
		if progress != nil && (er.SourceRows+er.TargetRows)%20000 == 0 && er.SourceRows+er.TargetRows > 0 {
			progress(e.Name, er.SourceRows, er.TargetRows, false)
		}
		switch {
		case !a.done && (b.done || before(a, b)):
			er.SourceRows++
			addTotals(e, er.SourceTotal, er.SourceDay, er.DayField, a.data)
			er.Missing++
			note(Diff{Entity: e.Name, Key: a.key, Kind: "missing"})
			a.next()
		case !b.done && (a.done || before(b, a)):
			er.TargetRows++
			addTotals(e, er.TargetTotal, er.TargetDay, er.DayField, b.data)
			er.Extra++
			note(Diff{Entity: e.Name, Key: b.key, Kind: "extra"})
			b.next()
		default:
			er.SourceRows++
			er.TargetRows++
			addTotals(e, er.SourceTotal, er.SourceDay, er.DayField, a.data)
			addTotals(e, er.TargetTotal, er.TargetDay, er.DayField, b.data)
			var differ []string
			for _, f := range fields {
				if !e.Field(f).Equal(a.data[f], b.data[f]) {
					differ = append(differ, f)
				}
			}
			if len(differ) > 0 {
				er.Changed++
				note(Diff{Entity: e.Name, Key: a.key, Kind: "changed", Fields: differ})
			}
			a.next()
			b.next()
		}
	}
	if a.err != nil {
		return er, a.err
	}
	return er, b.err
}

func addTotals(e *transform.Entity, totals, days map[string]decimal.Decimal, dayField string, data map[string]any) {
	day := ""
	if s, ok := data[dayField].(string); ok {
		// A canonical date, or the date part of a canonical timestamp
		// (its year may have more than four digits and a sign).
		day, _, _ = strings.Cut(s, "T")
	}
	for _, f := range e.Fields {
		if f.Type != transform.TypeMoney {
			continue
		}
		mv, ok := data[f.Name].(transform.Money)
		if !ok {
			continue
		}
		d, err := decimal.NewFromString(mv.Amount)
		if err != nil {
			continue
		}
		k := f.Name + " " + mv.Currency
		totals[k] = totals[k].Add(d)
		if day != "" {
			days[k+" "+day] = days[k+" "+day].Add(d)
		}
	}
}
