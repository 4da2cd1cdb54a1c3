// Package postgres is a capture source that reads committed row changes of
// one PostgreSQL database from a logical replication slot with the pgoutput
// plugin (protocol version 1).
//
// It owns the publication and the slot: it creates them when absent and adds
// mapped tables missing from the publication. It records the slot it
// creates (duplex.slots) and refuses, with a permanent *SlotLostError, a
// slot that was dropped, replaced, invalidated or is in another cluster. Stream runs one replication
// session: it starts at the slot's confirmed position, decodes Relation,
// Origin, Begin, Insert, Update, Delete, Truncate and Commit messages, keeps
// a relation cache, turns text-format values into exact Go values by type
// OID (numeric becomes decimal.Decimal), and hands each transaction on in
// chunks, the last one once a new snapshot of the database shows the
// transaction (the walsender decodes it before the committing backend
// leaves the proc array; visible.go). It answers keepalives and reports
// as flushed only the LSN that the caller confirmed durable (Confirm), so a
// crash anywhere makes the slot send again whatever was not yet safe
// downstream.
//
// A mapped table may be partitioned: the changes pgoutput sends under a
// partition's name are handed on under the mapped table's (Change.Partition
// names the partition), whether or not the publication publishes via the
// partition root; a relation is resolved against the catalog when its
// Relation message arrives, so new partitions need no restart.
//
// Every identifier it sends is quoted, in SQL and in the replication
// commands and options (slot, publication_names): a publication named
// DuplexPub is "DuplexPub". Slot names must follow PostgreSQL's rule
// ([a-z0-9_], at most 63 characters); Config.Validate refuses others.
//
// Retrying a lost session is the caller's job (pipeline), which starts a new
// Stream with backoff; this package does not reconnect by itself. Its own
// bookkeeping (snapshots, backfills) lives in duplex's schema, owned by
// internal/pgstate.
//
// Files: source.go (Config, Source, confirmed position), setup.go
// (publication and slot), stream.go (the replication session: keepalives,
// status updates, flush position), pgoutput.go (decoding pgoutput messages
// into chunks), unchanged.go (the values of unchanged TOASTed columns,
// from the old row or read again by key), visible.go (waiting until the
// transaction being decoded is visible to other sessions, before a catalog
// read for it and before it is handed on), partition.go (changes of
// partitions routed to their mapped partitioned table, truncates of some
// partitions told from truncates of all), decode.go (values by type OID),
// snapshot.go (initial copy in the slot's exported snapshot, in pages by
// the key's columns: WHERE (a, b) > ($1, $2) ORDER BY a, b), backfill.go (DBLog watermark
// backfills), slot.go (slot positions for status and lag), slotcheck.go
// (the slot checked against duplex's record of it at every start; the
// position recorded before it is reported flushed; ResetSlot for resync),
// privileges.go (CheckPrivileges: SELECT on the published tables and the
// right to create or complete the publication, checked before start).
package postgres
