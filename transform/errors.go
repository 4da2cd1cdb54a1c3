package transform

import "fmt"

// FieldError is a conversion that cannot be done exactly. It names entity,
// key, field and value so that an operator can find the row.
type FieldError struct {
	Entity string
	Key    string
	Field  string
	Value  string
	Err    error
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("entity %s key %s field %s value %q: %v", e.Entity, e.Key, e.Field, e.Value, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// Permanent marks the error as one that retrying cannot fix.
func (e *FieldError) Permanent() bool { return true }

// EventError is an event that makes no row of a system at all: its
// entity is not mapped, the entity has no table in the system, or its
// operation is unknown. Retrying cannot fix it.
type EventError struct {
	ID     string // the event's id
	Reason string
}

func (e *EventError) Error() string { return fmt.Sprintf("event %s: %s", e.ID, e.Reason) }

// Permanent marks the error as one that retrying cannot fix.
func (e *EventError) Permanent() bool { return true }

// SchemaError says a source table no longer fits the mapping: a mapped
// column is gone (dropped or renamed). It is not the data's fault: the
// entity's changes are held until the mapping or the table is fixed.
type SchemaError struct {
	System, Table, Column string
	Entity, Field         string
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("%s table %s has no column %s any more (dropped or renamed?), mapped to field %s of entity %s; fix the mapping or the table, then restart duplex",
		e.System, e.Table, e.Column, e.Field, e.Entity)
}
