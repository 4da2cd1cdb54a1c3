package transform

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Canonical field types.
const (
	TypeText      = "text"
	TypeInteger   = "integer"
	TypeDecimal   = "decimal"
	TypeMoney     = "money"
	TypeTimestamp = "timestamp"
	TypeDate      = "date"
	TypeBoolean   = "boolean"
	TypeUUID      = "uuid"
	TypeCurrency  = "currency"
	TypeEnum      = "enum"
)

// Converters a system column may name. Without one, the converter follows
// the field's canonical type.
const (
	ConvText       = "text"
	ConvInteger    = "integer"
	ConvDecimal    = "decimal"
	ConvMoney      = "money"       // amount column + currency column (or fixed currency)
	ConvMoneyMinor = "money_minor" // bigint in the currency's ISO 4217 minor units
	ConvTimestamp  = "timestamp"
	ConvDate       = "date"
	ConvBoolean    = "boolean"
	ConvUUID       = "uuid"
	ConvEnum       = "enum"     // map of system value -> canonical value
	ConvConstant   = "constant" // fixed value
)

// Owners of a field. OwnerBoth means either system may write it.
const OwnerBoth = "both"

// Values of Entity.Enforce and Entity.Sequence.
const (
	EnforceOwner   = "owner"
	SequenceFollow = "follow"
)

// Mapping is the declarative mapping file: canonical entities and how each
// system stores them.
type Mapping struct {
	Version int `yaml:"version"`
	// Systems lists the system names in a fixed order; the order breaks
	// ties between writes of shared fields that carry the same commit time.
	Systems  []string  `yaml:"systems"`
	Entities []*Entity `yaml:"entities"`
	// Currencies adds currency codes to ISO 4217, or overrides the
	// number of decimals ISO 4217 gives one: code -> decimals, 0 to 9
	// (currencies: {XCG: 2, CNH: 2}). For a code the pinned list lacks
	// (a newer one, an offshore or in-house code) or a system that keeps
	// a currency with other decimals than ISO's.
	Currencies map[string]int32 `yaml:"currencies"`
}

// Entity is one canonical business entity.
type Entity struct {
	Name string `yaml:"name"`
	// Key names the fields that are the entity's canonical key, in key
	// order: one name (key: account_id) or a list for a composite key
	// (key: [company, doc_no]). Every key field has the same owner.
	Key      Names                `yaml:"key"`
	Fields   []*Field             `yaml:"fields"`
	Tables   map[string]*TableMap `yaml:"systems"`
	Truncate string               `yaml:"truncate"` // "refuse" (default) or "propagate"
	// Enforce says what duplex does when a system edits a field of the
	// entity that another system owns (an ownership violation). Empty:
	// the edit is counted and logged, and the two systems stay different
	// until the owner writes the field again. EnforceOwner: the owner's
	// current value is also written back to the system that edited it.
	Enforce string `yaml:"enforce"`
	// Sequence, for an entity with an integer key, says what duplex does
	// with the sequence that generates the key column in a system that
	// does not own the key. Empty: nothing (check warns that such a
	// system should not generate keys). SequenceFollow: after writing
	// rows there, duplex moves that sequence past the highest key it
	// wrote, so the system's own inserts do not collide with replicated
	// keys (they are refused all the same; see OwnershipError).
	Sequence string `yaml:"sequence"`

	fieldByName map[string]*Field
}

// Field is a canonical field.
type Field struct {
	Name  string `yaml:"name"`
	Type  string `yaml:"type"`
	Owner string `yaml:"owner"`
	// Values lists the canonical values of an enum field.
	Values []string `yaml:"values"`
	// PII marks personal data (pii: true): its value is encrypted on the
	// bus (internal/pii), masked in logs and errors, and never kept in
	// clear in a dead letter. A key field cannot be personal: the key
	// orders, holds and names events.
	PII bool `yaml:"pii"`
}

// TableMap says how one system stores an entity.
type TableMap struct {
	Table string `yaml:"table"`
	// KeyColumn is the column of a key of one field; KeyColumnList the
	// columns of a key of one or more fields (key_columns: [company,
	// doc_no]), in the order of the entity's key. A table names exactly
	// one of them; KeyColumns returns the columns either way.
	KeyColumn     string                `yaml:"key_column"`
	KeyColumnList Names                 `yaml:"key_columns"`
	Columns       map[string]*ColumnMap `yaml:"columns"`
	// Default gives target columns a value for the rows duplex inserts
	// and whose event does not write them (a NOT NULL column the mapping
	// does not carry), by column name. Never used for a row that exists.
	Default map[string]*ColumnDefault `yaml:"default"`

	schema, name string
	keyColumns   []string
}

// ColumnMap maps a canonical field to a column of a system's table.
type ColumnMap struct {
	Column  string `yaml:"column"`
	Convert string `yaml:"convert"`
	// CurrencyColumn names the column that holds the currency of a money
	// amount; Currency fixes it instead.
	CurrencyColumn string `yaml:"currency_column"`
	Currency       string `yaml:"currency"`
	// Enum maps system values to canonical values.
	Enum map[string]string `yaml:"enum"`
	// Value is the constant of a constant converter.
	Value *string `yaml:"value"`
	// Rounding allows rounding to the column's scale (half_even, half_up,
	// down). Empty: a value that does not fit is an error.
	Rounding Rounding `yaml:"rounding"`
	// Ref says the column holds a reference to another entity's row in
	// this system, by one of that row's columns; the canonical field holds
	// the referenced entity's canonical key.
	Ref *Ref `yaml:"ref"`

	info *ColumnInfo // bound by Check
}

// ColumnDefault is the value of a target column in a row duplex inserts
// when the event does not write that column: a constant (cast to the
// column's type), or an SQL expression evaluated in the target database by
// the insert, once per row, like a column DEFAULT (now(), a sequence's
// nextval, a function of the database). In YAML a plain scalar is a
// constant: `region: EU`, `region: {value: EU}`, `created_by: {sql: current_user}`.
type ColumnDefault struct {
	Value *string `yaml:"value"`
	SQL   string  `yaml:"sql"`
}

// UnmarshalYAML reads a scalar as a constant, or a mapping with value or sql.
func (d *ColumnDefault) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Tag == "!!null" {
			return fmt.Errorf("line %d: a default needs a value (value: or sql:)", n.Line)
		}
		v := n.Value
		d.Value = &v
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a default is a constant or {value: ...} or {sql: ...}", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "value":
			if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
				return fmt.Errorf("line %d: default value must be a scalar", v.Line)
			}
			s := v.Value
			d.Value = &s
		case "sql":
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: default sql must be a string", v.Line)
			}
			d.SQL = v.Value
		default:
			return fmt.Errorf("line %d: field %s not found in a default (want value or sql)", k.Line, k.Value)
		}
	}
	return nil
}

// Ref points at another entity's row.
type Ref struct {
	Entity string `yaml:"entity"`
	// Column of the referenced row whose value this column holds.
	Column string `yaml:"column"`
	// Match names the canonical fields of the referenced entity that the
	// canonical value is (default: its key, one field or several). A CRM
	// invoice finds its account by the customer's customer_no: match
	// customer_no.
	Match Names `yaml:"match"`
	// Fields names the fields of the referencing entity whose values, in
	// the order of Match (or of the referenced key), find the referenced
	// row: a reference to an entity with a composite key is made of
	// several fields (fields: [company, entry_no]). Default: the field
	// the reference is mapped for.
	Fields Names `yaml:"fields"`
}

// MatchFields are the referenced entity's fields a reference matches on,
// in order.
func (r *Ref) MatchFields(target *Entity) []string {
	if len(r.Match) > 0 {
		return r.Match
	}
	return target.Key
}

// FieldsFor are the referencing entity's fields whose values make the
// reference mapped for field, in the order of MatchFields.
func (r *Ref) FieldsFor(field string) []string {
	if len(r.Fields) > 0 {
		return r.Fields
	}
	return []string{field}
}

// Names is a list of names that YAML may also give as one name:
// key: id, or key: [company, doc_no].
type Names []string

// UnmarshalYAML accepts a scalar (one name) or a sequence of names.
func (n *Names) UnmarshalYAML(v *yaml.Node) error {
	if v.Kind == yaml.ScalarNode {
		var s string
		if err := v.Decode(&s); err != nil {
			return err
		}
		*n = Names{s}
		return nil
	}
	var l []string
	if err := v.Decode(&l); err != nil {
		return fmt.Errorf("line %d: want a name or a list of names: %w", v.Line, err)
	}
	*n = l
	return nil
}

// String is the name, or the names as [a, b].
func (n Names) String() string {
	if len(n) == 1 {
		return n[0]
	}
	return "[" + strings.Join(n, ", ") + "]"
}

// KeyFields returns the fields of the entity's canonical key, in key
// order (one for a simple key).
func (e *Entity) KeyFields() []string { return e.Key }

// IsKey says whether a field is (part of) the entity's key.
func (e *Entity) IsKey(field string) bool { return slices.Contains(e.Key, field) }

// KeyOwner is the owner of the key fields (all key fields have one): the
// system in which the entity lives and dies, or OwnerBoth.
func (e *Entity) KeyOwner() string {
	if len(e.Key) == 0 || e.Field(e.Key[0]) == nil {
		return ""
	}
	return e.Field(e.Key[0]).Owner
}

// KeyColumns returns the table's key columns in the order of the entity's
// key fields.
func (t *TableMap) KeyColumns() []string { return t.keyColumns }

// Load reads and validates a mapping file.
func Load(path string) (*Mapping, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mapping: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return m, nil
}

// Parse decodes and validates a mapping document.
func Parse(b []byte) (*Mapping, error) {
	var m Mapping
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse mapping: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Entity returns the entity of that name, or nil.
func (m *Mapping) Entity(name string) *Entity {
	for _, e := range m.Entities {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// Field returns the field of that name, or nil.
func (e *Entity) Field(name string) *Field { return e.fieldByName[name] }

// HasPII reports whether any field is marked pii: true.
func (m *Mapping) HasPII() bool {
	for _, e := range m.Entities {
		for _, f := range e.Fields {
			if f.PII {
				return true
			}
		}
	}
	return false
}

// PIIField reports whether entity's field is marked pii: true.
func (m *Mapping) PIIField(entity, field string) bool {
	if e := m.Entity(entity); e != nil {
		if f := e.Field(field); f != nil {
			return f.PII
		}
	}
	return false
}

// Validate checks the mapping on its own, without a database, and reports
// every problem it finds.
func (m *Mapping) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if m.Version != 1 {
		bad("version %d is not supported (want 1)", m.Version)
	}
	if len(m.Systems) < 2 {
		bad("systems: name at least two systems, in tie-break order")
	}
	for code, d := range m.Currencies {
		if len(code) != 3 || strings.ToUpper(code) != code || strings.IndexFunc(code, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
			bad("currencies: %q is not a currency code (three upper-case letters)", code)
		}
		if d < 0 || d > 9 {
			bad("currencies: %s has %d decimals; want 0 to 9", code, d)
		}
	}
	seen := map[string]bool{}
	for _, e := range m.Entities {
		if e.Name == "" {
			bad("an entity has no name")
			continue
		}
		if seen[e.Name] {
			bad("entity %s is defined twice", e.Name)
		}
		seen[e.Name] = true
		e.fieldByName = map[string]*Field{}
		for _, f := range e.Fields {
			if e.fieldByName[f.Name] != nil {
				bad("entity %s: field %s is defined twice", e.Name, f.Name)
			}
			e.fieldByName[f.Name] = f
			switch f.Type {
			case TypeText, TypeInteger, TypeDecimal, TypeMoney, TypeTimestamp, TypeDate, TypeBoolean, TypeUUID, TypeCurrency:
			case TypeFloat, TypeTime, TypeInterval, TypeJSON, TypeBytes, TypeArray, TypeNative:
			case TypeEnum:
				if len(f.Values) == 0 {
					bad("entity %s: enum field %s lists no values", e.Name, f.Name)
				}
			default:
				bad("entity %s: field %s has unknown type %q", e.Name, f.Name, f.Type)
			}
			if f.Owner == OwnerBoth && f.Type != TypeText && f.Type != TypeCurrency && f.Type != TypeEnum {
				bad("entity %s: field %s of type %s cannot be owned by both: shared fields must be text, currency or enum", e.Name, f.Name, f.Type)
			}
			if f.Owner != OwnerBoth && !slices.Contains(m.Systems, f.Owner) {
				bad("entity %s: field %s has owner %q; want one of %s or both", e.Name, f.Name, f.Owner, strings.Join(m.Systems, ", "))
			}
		}
		if len(e.Key) == 0 {
			bad("entity %s: no key", e.Name)
		}
		for i, k := range e.Key {
			switch {
			case e.fieldByName[k] == nil:
				bad("entity %s: key %q is not one of its fields", e.Name, k)
			case slices.Index(e.Key, k) != i:
				bad("entity %s: key %s names field %s twice", e.Name, e.Key, k)
			case e.fieldByName[k].PII:
				bad("entity %s: key field %s cannot be pii: true (the key travels in clear: it orders, holds and names events)", e.Name, k)
			case e.fieldByName[k].Owner != e.fieldByName[e.Key[0]].Owner:
				bad("entity %s: key fields %s have different owners (%s: %s, %s: %s); the fields of a key are owned by the one system the entity lives in", e.Name, e.Key, e.Key[0], e.fieldByName[e.Key[0]].Owner, k, e.fieldByName[k].Owner)
			}
		}
		switch e.Truncate {
		case "", "refuse", "propagate":
		default:
			bad("entity %s: truncate %q: want refuse or propagate", e.Name, e.Truncate)
		}
		switch e.Enforce {
		case "", EnforceOwner:
		default:
			bad("entity %s: enforce %q: want owner (or leave it out)", e.Name, e.Enforce)
		}
		switch e.Sequence {
		case "":
		case SequenceFollow:
			if len(e.Key) != 1 {
				bad("entity %s: sequence: follow needs a key of one integer field; the key is %s", e.Name, e.Key)
			} else if kf := e.fieldByName[e.Key[0]]; kf != nil && kf.Type != TypeInteger {
				bad("entity %s: sequence: follow needs an integer key; key %s is %s", e.Name, e.Key[0], kf.Type)
			}
		default:
			bad("entity %s: sequence %q: want follow (or leave it out)", e.Name, e.Sequence)
		}
		for sys, t := range e.Tables {
			if !slices.Contains(m.Systems, sys) {
				bad("entity %s: system %s is not listed under systems", e.Name, sys)
			}
			validateTable(m, e, sys, t, bad)
		}
	}
	for _, e := range m.Entities {
		for sys, t := range e.Tables {
			for fname, c := range t.Columns {
				if c.Ref == nil {
					continue
				}
				// A reference is resolved by the sink, in the target: the
				// system that writes the field (its owner, or either for a
				// shared field) captures the column's value as it is.
				for _, rf := range c.Ref.FieldsFor(fname) {
					if f := e.Field(rf); f == nil {
						bad("entity %s: %s column for %s: reference field %s is not a field of %s", e.Name, sys, fname, rf, e.Name)
					} else if f.Owner == sys || f.Owner == OwnerBoth {
						bad("entity %s: %s table %s maps field %s (owner %s) through a reference; references are resolved on the target side only, so a reference column cannot be in a system that writes the field", e.Name, sys, t.QualifiedTable(), rf, f.Owner)
					}
				}
				if e.IsKey(fname) {
					bad("entity %s: %s column for key field %s is a reference; a key is stored as it is", e.Name, sys, fname)
				}
				target := m.Entity(c.Ref.Entity)
				if target == nil {
					bad("entity %s: %s column for %s refers to unknown entity %s", e.Name, sys, fname, c.Ref.Entity)
					continue
				} else if target.Tables[sys] == nil {
					bad("entity %s: %s column for %s refers to entity %s, which has no %s table", e.Name, sys, fname, c.Ref.Entity, sys)
					continue
				}
				mfs := c.Ref.MatchFields(target)
				for _, mf := range mfs {
					if target.Field(mf) == nil || target.Tables[sys].Columns[mf] == nil || target.Tables[sys].Columns[mf].Column == "" {
						bad("entity %s: %s column for %s matches %s.%s, which is not a field with a %s column", e.Name, sys, fname, c.Ref.Entity, mf, sys)
					}
				}
				if rfs := c.Ref.FieldsFor(fname); !slices.Contains(rfs, fname) {
					bad("entity %s: %s column for %s: ref fields %s do not include %s, the field it is mapped for", e.Name, sys, fname, Names(rfs), fname)
				} else if len(rfs) != len(mfs) {
					bad("entity %s: %s column for %s refers to %s by %d field(s) %s, but %s is matched on %d: %s (name them with ref fields: [...])", e.Name, sys, fname, c.Ref.Entity, len(rfs), Names(rfs), c.Ref.Entity, len(mfs), Names(mfs))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func validateTable(m *Mapping, e *Entity, sys string, t *TableMap, bad func(string, ...any)) {
	where := fmt.Sprintf("entity %s, system %s", e.Name, sys)
	if t == nil || t.Table == "" {
		bad("%s: no table", where)
		return
	}
	t.schema, t.name = "public", t.Table
	if i := strings.IndexByte(t.Table, '.'); i >= 0 {
		t.schema, t.name = t.Table[:i], t.Table[i+1:]
	}
	switch {
	case t.KeyColumn != "" && len(t.KeyColumnList) > 0:
		bad("%s: both key_column and key_columns; name the key's columns once", where)
	case t.KeyColumn != "" && len(e.Key) > 1:
		bad("%s: key_column %s names one column, but key %s has %d fields; use key_columns: [...]", where, t.KeyColumn, e.Key, len(e.Key))
	case t.KeyColumn != "":
		t.keyColumns = []string{t.KeyColumn}
	case len(t.KeyColumnList) == 0:
		bad("%s: no key_column (or key_columns)", where)
	case len(t.KeyColumnList) != len(e.Key):
		bad("%s: key_columns %s has %d columns, but key %s has %d fields", where, t.KeyColumnList, len(t.KeyColumnList), e.Key, len(e.Key))
	default:
		t.keyColumns = t.KeyColumnList
	}
	for i, k := range e.Key {
		if i >= len(t.keyColumns) {
			break
		}
		kc := t.Columns[k]
		if kc == nil {
			bad("%s: key field %s has no column", where, k)
		} else if kc.Column != t.keyColumns[i] {
			if len(t.keyColumns) == 1 {
				bad("%s: key field %s maps to column %s, but key_column is %s", where, k, kc.Column, t.keyColumns[i])
			} else {
				bad("%s: key field %s maps to column %s, but key_columns names %s in its place", where, k, kc.Column, t.keyColumns[i])
			}
		}
		if slices.Index(t.keyColumns, t.keyColumns[i]) != i {
			bad("%s: key column %s is named twice", where, t.keyColumns[i])
		}
	}
	for fname, c := range t.Columns {
		f := e.fieldByName[fname]
		if f == nil {
			bad("%s: column mapping for unknown field %s", where, fname)
			continue
		}
		if c == nil {
			bad("%s: field %s: empty column mapping", where, fname)
			continue
		}
		conv := c.converter(f)
		if c.Column == "" && conv != ConvConstant {
			bad("%s: field %s: no column", where, fname)
		}
		if !convertible(f.Type, conv) {
			bad("%s: field %s: converter %s does not fit canonical type %s", where, fname, conv, f.Type)
		}
		switch conv {
		case ConvMoney, ConvMoneyMinor:
			if (c.CurrencyColumn == "") == (c.Currency == "") {
				bad("%s: field %s: money needs exactly one of currency_column or currency", where, fname)
			}
			if c.Currency != "" {
				if _, err := m.CurrencyScale(c.Currency); err != nil {
					bad("%s: field %s: %w", where, fname, err)
				}
			}
		case ConvEnum:
			if len(c.Enum) == 0 {
				bad("%s: field %s: enum converter without an enum map", where, fname)
			}
			for sv, cv := range c.Enum {
				if !slices.Contains(f.Values, cv) {
					bad("%s: field %s: enum maps %q to %q, which is not a value of the field", where, fname, sv, cv)
				}
			}
		case ConvConstant:
			if c.Value == nil {
				bad("%s: field %s: constant without a value", where, fname)
			}
		}
		switch c.Rounding {
		case RoundNone, RoundHalfEven, RoundHalfUp, RoundDown:
		default:
			bad("%s: field %s: unknown rounding %q", where, fname, c.Rounding)
		}
		if c.Ref != nil && c.Ref.Column == "" {
			bad("%s: field %s: ref needs entity and column", where, fname)
		}
	}
	for col, d := range t.Default {
		switch {
		case col == "":
			bad("%s: default for a column without a name", where)
		case d == nil || (d.Value == nil) == (strings.TrimSpace(d.SQL) == ""):
			bad("%s: default for column %s needs exactly one of value or sql", where, col)
		case col == t.KeyColumn:
			bad("%s: default for key column %s: every row's key comes from its event", where, col)
		}
		for fname, c := range t.Columns {
			if c != nil && c.Column == col && c.Value != nil {
				bad("%s: default for column %s, which field %s writes with a constant", where, col, fname)
			}
		}
	}
	_ = m
}

// Publishes says whether a system's changes to an entity go on the bus:
// when it owns (alone or with another system) at least one of its fields,
// or when the entity enforces ownership (enforce: owner), so that its
// edits of fields other systems own are seen.
func (e *Entity) Publishes(system string) bool {
	if e.Tables[system] == nil {
		return false
	}
	if e.Enforce == EnforceOwner {
		return true
	}
	for _, f := range e.Fields {
		if (f.Owner == system || f.Owner == OwnerBoth) && e.Tables[system].Columns[f.Name] != nil {
			return true
		}
	}
	return false
}

// OwnedElsewhere lists the fields a system maps to a column of its own
// but that another system owns alone (not the key, not constants): an
// edit of one of them in that system is an ownership violation.
func (e *Entity) OwnedElsewhere(system string) []string {
	t := e.Tables[system]
	if t == nil {
		return nil
	}
	var out []string
	for _, f := range e.Fields {
		c := t.Columns[f.Name]
		if e.IsKey(f.Name) || f.Owner == system || f.Owner == OwnerBoth || c == nil || c.Column == "" || c.converter(f) == ConvConstant {
			continue
		}
		out = append(out, f.Name)
	}
	return out
}

// SharedFields lists the fields owned by both systems that a system maps.
func (e *Entity) SharedFields(system string) []string {
	var out []string
	for _, f := range e.Fields {
		if f.Owner == OwnerBoth && e.Tables[system] != nil && e.Tables[system].Columns[f.Name] != nil {
			out = append(out, f.Name)
		}
	}
	return out
}

// converter returns the converter a column uses: the one named, or the
// default of the field's type.
func (c *ColumnMap) converter(f *Field) string {
	if c.Convert != "" {
		return c.Convert
	}
	switch f.Type {
	case TypeMoney:
		return ConvMoney
	case TypeEnum:
		if len(c.Enum) > 0 {
			return ConvEnum
		}
		return ConvText
	case TypeCurrency:
		return ConvText
	}
	if isNativeType(f.Type) {
		return ConvNative
	}
	return f.Type
}

func convertible(typ, conv string) bool {
	switch conv {
	case ConvConstant:
		return true
	case ConvNative:
		return isNativeType(typ)
	case ConvMoney, ConvMoneyMinor:
		return typ == TypeMoney
	case ConvEnum:
		return typ == TypeEnum
	case ConvText:
		return typ == TypeText || typ == TypeCurrency || typ == TypeEnum || typ == TypeUUID
	case ConvDecimal:
		return typ == TypeDecimal || typ == TypeInteger
	case ConvInteger:
		return typ == TypeInteger
	}
	return conv == typ
}

// MappedColumns returns the table's columns the mapping reads or writes
// (key, fields, currency columns), sorted.
func (t *TableMap) MappedColumns() []string {
	set := map[string]bool{}
	for _, k := range t.keyColumns {
		set[k] = true
	}
	for _, c := range t.Columns {
		if c.Column != "" && c.Value == nil {
			set[c.Column] = true
		}
		if c.CurrencyColumn != "" {
			set[c.CurrencyColumn] = true
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// QualifiedTable returns "schema.table".
func (t *TableMap) QualifiedTable() string { return t.schema + "." + t.name }

// Schema and Name split the table.
func (t *TableMap) Schema() string { return t.schema }

// Name is the table name without schema.
func (t *TableMap) Name() string { return t.name }
