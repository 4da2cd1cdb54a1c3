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
