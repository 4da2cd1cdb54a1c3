// Package postgres applies canonical transactions to a PostgreSQL database
// as idempotent, set-based upserts and deletes, under a replication origin.
//
// A batch of whole source transactions becomes one target transaction.
// Inside it the sink reads the flow's applied position from its own schema
// (duplex.applied), skips every source transaction at or below it, folds
// the rest to the last change per key as the target compares keys (two
// source keys that a citext, char(n) or numeric key column holds as one
// value are one row there; both existing is a collision, refused naming
// both), resolves references to other entities by their canonical keys,
// resolves shared (owner both) fields against what the target holds,
// writes each entity with one statement per column set (unnest of text
// arrays, cast to the column types read from the catalog), records the new
// applied position, and commits. Only mapped columns are written, and a
// row whose values are already equal is not touched. Rows that cannot be
// created (a NOT NULL column without a value, an unchanged TOASTed value
// the event does not know) are updated if they exist and otherwise refused
// with the reason; a row that is created gets the mapping's default:
// values and the event's unchanged values, which never overwrite an
// existing row. Rows of an entity whose key the target owns are never
// created by the sink, only updated: such a row is born in the target, and
// one that is gone there was deleted there. A streamed change of such a row
// is left out; a copied one (the other system's snapshot or a backfill) is
// a row the other system created, and is refused as an ownership violation
// (dead letter naming system, entity and key). The position lives in
// the target database so that a backup of it carries the position too. A
// source transaction too large to hold whole is applied chunk by chunk in
// one target transaction (PartSink).
//
// Entities are written parents first and deleted children first, by the
// mapping's refs and by the target's foreign keys between the entities the
// flow writes (transform.Mapping.WriteOrder); foreign keys that form a
// cycle are left out of the order, since the sink checks every foreign key
// itself at the end of the transaction (fkcheck.go). A batch that fails on a
// unique violation is applied again one source transaction at a time, and
// a transaction that still fails, change by change in source order: values
// swapped between rows, or freed by a delete and taken by an insert, fit
// as they did in the source; only a change that still violates the index
// is an error naming its event.
//
// The session is bound to a PostgreSQL replication origin, and each apply
// transaction sets the origin's remote LSN and commit time, so that
// PostgreSQL records the origin's progress atomically with the commit and a
// capture of this database can recognise (and skip) what duplex wrote.
// Only one session can hold an origin, which also keeps a second applier of
// the same flow out. The session also sets session_replication_role =
// replica, as PostgreSQL's apply worker does, so that the target's ordinary
// triggers and rules do not fire on replicated rows; since foreign keys are
// triggers as well, the sink checks them itself at the end of each target
// transaction and performs their ON DELETE actions (fkcheck.go).
//
// Privileges (privileges.go): at connect the sink checks every privilege
// it uses in the target (tables, the tables foreign keys tie to them,
// sequences) and refuses to apply with more power than a written table's
// owner (superuser, BYPASSRLS, CREATEROLE or a role membership the owner
// lacks), since a trigger the owner enabled for replicas runs as the
// applying role. The session runs with a pinned search_path (pg_catalog,
// the schemas of the mapped columns' types, pg_temp; session.go) and
// qualifies every name it sends.
//
// Ownership at the target (ownership.go): an event reporting that its
// source edited a field this system owns (Event.Violated) writes nothing;
// with enforce: owner the sink records a re-read of those rows for this
// database's capture (backfills in duplex.backfills by the key's columns,
// each condition within internal/pgexpr's MaxLength, in the apply
// transaction), which sends the owner's values back. With sequence:
// follow it moves the key column's sequence past the keys it writes.
//
// The package does not own duplex's own tables (duplex.applied,
// duplex.field_versions and the rest belong to internal/pgstate, which it
// calls in its apply transaction) nor the stream: fetching, assembly,
// acknowledgement, retries and dead letters are pipeline's; the sink only
// classifies its errors as pipeline.ApplyError kinds.
//
// Files: sink.go (Sink, Config, Apply, Close), session.go (connect,
// origin, catalog), apply.go (begin, collect, write, finish), parts.go
// (large transactions); fold.go (last change per key), targetkey.go (keys
// as the target compares them), mode.go (per transaction and source-order
// writes after a unique violation), upsert.go and delete.go (writing
// rows), statements.go (SQL generation), keys.go (matching rows by every
// key column: ON CONFLICT (a, b), joins on unnest of one text array per
// key column), lookup.go (references),
// sharedfields.go (shared-field versions), unique.go (moved unique
// values), isolate.go (row by row under savepoints), order.go (write
// order), errors.go (classification), fkcheck.go
// (foreign keys checked by the sink), ownership.go (enforce: owner,
// sequence: follow), privileges.go (the privileges it uses, the owner
// rule).
package postgres
