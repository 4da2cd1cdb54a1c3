package transform

import "fmt"

// Source returns the entity stored in the given system's table, or nil.
func (m *Mapping) Source(system, qualifiedTable string) *Entity {
	for _, e := range m.Entities {
		if t := e.Tables[system]; t != nil && t.QualifiedTable() == qualifiedTable {
			return e
		}
	}
	return nil
}

// SourceTables returns the tables whose changes a system publishes.
func (m *Mapping) SourceTables(system string) []string {
	var out []string
	for _, e := range m.Entities {
		if e.Publishes(system) {
			out = append(out, e.Tables[system].QualifiedTable())
		}
	}
	return out
}

// Tables returns the qualified tables the mapping uses in a system, in
// entity order.
func (m *Mapping) Tables(system string) []string {
	var out []string
	for _, e := range m.Entities {
		if t := e.Tables[system]; t != nil {
			out = append(out, t.QualifiedTable())
		}
	}
	return out
}

// carries says whether a flow out of system carries field f.
func carries(e *Entity, f *Field, system string) bool {
	return e.IsKey(f.Name) || f.Owner == system || f.Owner == OwnerBoth
}

// Carried lists the fields a flow from system carries for an entity and
// that both systems store in a column of their own (constants excluded).
func (e *Entity) Carried(from, to string) []string {
	var out []string
	for _, f := range e.Fields {
		if !carries(e, f, from) {
			continue
		}
		a, b := e.Tables[from], e.Tables[to]
		if a == nil || b == nil || a.Columns[f.Name] == nil || b.Columns[f.Name] == nil {
			continue
		}
		if a.Columns[f.Name].converter(f) == ConvConstant || b.Columns[f.Name].converter(f) == ConvConstant {
			continue
		}
		out = append(out, f.Name)
	}
	return out
}

// PublishedTable finds table (as "schema.table" or a bare name) among the
// tables system stores mapped entities in and returns it as "schema.table".
// It is an error when no entity maps the table for system, or when system
// publishes none of that entity's fields.
func (m *Mapping) PublishedTable(system, table string) (string, error) {
	var known []string
	for _, e := range m.Entities {
		t := e.Tables[system]
		if t == nil {
			continue
		}
		known = append(known, t.QualifiedTable())
		if table == t.QualifiedTable() || table == t.Name() {
			if !e.Publishes(system) {
				return "", fmt.Errorf("table %s (entity %s) is not published by %s: it owns none of its fields", table, e.Name, system)
			}
			return t.QualifiedTable(), nil
		}
	}
	return "", fmt.Errorf("table %q is not mapped for %s; mapped tables: %v", table, system, known)
}
