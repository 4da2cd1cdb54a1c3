// Package transform owns the canonical model of duplex and the mapping
// between it and each system's tables.
//
// A mapping (YAML, see Load) names entities, the canonical key of each (one
// field, or several in order: key: [company, entry_no]), fields with a
// canonical type and an owner system, and for each system its table, key
// column(s) (key_column, or key_columns for a key of several fields) and
// the column (and converter) of each field. An event's key is the text of
// the key fields' canonical values joined by capture.JoinKey (a key of one
// field: its value; several: PostgreSQL's row text form, "(EU01,1042)"). Normalize
// turns a captured row change of one system into canonical events;
// Denormalize turns a canonical event into the column values of another
// system. Money is exact end to end (shopspring/decimal); a conversion that
// would lose a digit is an error naming entity, key, field and value, never
// a rounding unless the mapping names a rounding mode.
//
// The package does not talk to databases: Check compares a mapping with a
// Catalog that the caller read from the live database.
//
// Files: mapping.go (the YAML model and Validate), lookup.go (which
// tables and fields a system publishes or carries), catalog.go (Check
// against a catalog), order.go (the order rows are written in, from refs
// and a catalog's foreign keys; cycles), event.go (Tx, Event, positions), normalize.go
// (captured change to events), canonical.go (column value to canonical
// value and back, comparison), denormalize.go (event to columns),
// money.go (ISO 4217 scales, exact conversions), native.go (types carried
// as PostgreSQL's text form), errors.go.
package transform
