// Package pgstate owns duplex's own state in every PostgreSQL database
// duplex touches: the schema duplex and its tables.
//
//   - duplex.schema_version: the migrations applied, one row each;
//   - duplex.applied: a flow's applied position, written by the sink in
//     the same transaction as the rows (target databases);
//   - duplex.field_versions: who wrote each shared (owner both) field's
//     value and when, written by the sink in its apply transaction and by
//     the capture of the same database (VersionRecorder); the value is
//     recorded as a keyed hash (FieldHasher, HMAC-SHA256) that both must
//     compute with the same key;
//   - duplex.snapshots: the initial snapshots completed, per slot;
//   - duplex.backfills: backfill requests and their progress, per slot;
//   - duplex.held: entities a source holds back because their table no
//     longer fits the mapping;
//   - duplex.held_released: per entity whose hold was released, the
//     position up to which its held changes were read again (WAL a slot
//     may send again after a crash, with the table as it was);
//   - duplex.slots: the replication slots duplex created, with the
//     cluster they live in and the highest position duplex may have
//     reported flushed on each (source databases).
//
// Every session that uses these tables calls Ensure once after connecting.
// Ensure checks that duplex can trust what is there (the schema and each
// object in it owned by the connecting role or a role it is a member of,
// only ordinary tables and their sequences, no triggers or rules duplex
// did not create), applies the numbered migrations the database lacks, in
// order, each in its own transaction under an advisory lock, and records
// them in duplex.schema_version. An install made before the schema was
// versioned is adopted: migration 1 creates exactly the tables of that
// release where they are missing and keeps those that exist with their
// data. A database whose schema is newer than this binary knows is
// refused. Verify makes the same checks without changing anything.
//
// The bookkeeping functions run on a Querier (a *pgx.Conn or a pgx.Tx) the
// caller owns, so that the sink's writes share its apply transaction; they
// are set-based where they handle many rows. This package does not own the
// replicated tables, the publication, the replication slot or origin, or
// the decision what to record: that stays with capture/postgres,
// sinks/postgres and internal/app, which hold no SQL on duplex's tables.
package pgstate
