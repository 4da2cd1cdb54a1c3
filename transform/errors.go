package transform

import (
	"fmt"

	"github.com/duplex-cdc/duplex/internal/redact"
)

// FieldError is a conversion that cannot be done exactly. It names entity,
// key, field and value so that an operator can find the row.
type FieldError struct {
	Entity string
	Key    string
	Field  string
	Value  string
	// PII says the field is personal (pii: true): Error masks Value.
	PII bool
	Err error
}

// Error names entity, key and field, and the value cut to
// redact.MaxValue characters, or masked for a personal field.
func (e *FieldError) Error() string {
	return fmt.Sprintf("entity %s key %s field %s value %q: %v", e.Entity, e.Key, e.Field, redact.Field(e.Value, e.PII), e.Err)
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

// OwnershipError is a local change by a system that does not own what it
// changed, refused at capture (the change is dead-lettered there, never
// published): a row inserted (Op "insert"), or a key changed (Op
// "key change"), by a system other than the owner of the entity's key.
// Rows of an entity are created, and keyed, only in the system that owns
// its key (DESIGN.md, field ownership): the non-owner's row would
// otherwise overwrite the owner's row of the same key, or create a row the
// owner never made.
type OwnershipError struct {
	System, Table, Entity, Key string
	// Owner is the system that owns the entity's key.
	Owner string
	Op    string
}

func (e *OwnershipError) Error() string {
	return fmt.Sprintf("ownership violation: %s %s a row of %s (entity %s, key %s), but %s owns the entity's key: rows of %s are created and keyed in %s only; "+
		"the change is not replicated (it would overwrite %s's row of that key or make a row %s never created); delete or fix the row in %s, create it in %s",
		e.System, verbOf(e.Op), e.Table, e.Entity, e.Key, e.Owner, e.Entity, e.Owner, e.Owner, e.Owner, e.System, e.Owner)
}

func verbOf(op string) string {
	if op == "insert" {
		return "inserted"
	}
	return "changed the key of"
}

// Permanent marks the error as one that retrying cannot fix.
func (e *OwnershipError) Permanent() bool { return true }
