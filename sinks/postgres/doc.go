// Package postgres applies canonical transactions to a PostgreSQL database
// as idempotent, set-based upserts and deletes.
//
// A batch of whole source transactions becomes one target transaction.
// Inside it the sink reads the flow's applied position from its own schema
// (duplex.applied), skips every source transaction at or below it, folds
// the rest to the last change per key, resolves references to other
// entities by their canonical keys, writes each entity with one statement
// per column set (unnest of text arrays, cast to the column types read from
// the catalog), records the new applied position, and commits. Only mapped
// columns are written, and a row whose values are already equal is not
// touched. The position lives in the target database so that a backup of
// it carries the position too.
//
// The session is bound to a PostgreSQL replication origin, and each apply
// transaction sets the origin's remote LSN and commit time, so that
// PostgreSQL records the origin's progress atomically with the commit and a
// capture of this database can recognise (and skip) what duplex wrote.
// Only one session can hold an origin, which also keeps a second applier of
// the same flow out.
package postgres
