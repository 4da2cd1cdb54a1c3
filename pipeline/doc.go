// Package pipeline carries canonical events between systems on NATS
// JetStream and owns the rules of delivery: ordering, acknowledgement,
// retries, dead letters and replay.
//
// A Producer takes the chunks a capture source hands on, normalizes them
// into canonical transactions (transform.Tx), and publishes one message per
// chunk on the stream DUPLEX (subject duplex.<source>.tx) with bounded
// in-flight asynchronous publishes and a Nats-Msg-Id of
// <source>:<commit LSN>:<chunk>, so a transaction captured twice is
// deduplicated. It confirms a source LSN only after JetStream acknowledged
// every message up to that commit.
//
// An Applier is one flow ("to-erp"): a durable pull consumer that fetches in
// batches, reassembles whole source transactions, hands them to a Sink and
// acknowledges only after the sink committed. Events that fail permanently
// go to the stream DUPLEX_DLQ with the reason and the flow goes on;
// transient failures are retried with capped, jittered backoff for as long
// as they last.
//
// The bus is not trusted (sign.go, incomplete.go): a capture signs every
// message it publishes with its source's nkey (Signer; the signature, in
// the header Duplex-Signature, covers the source, the subject, the
// Nats-Msg-Id and the body), and a flow verifies it before it decodes
// anything (Verifier): a message without a valid signature of a key it
// trusts for its source, or naming another source, is dead-lettered as a
// reference (flow, stream sequence, reason), applies nothing and is
// counted (FlowCounts.Refused). Even validly signed, each event is checked
// again against the mapping before the sink sees it
// (transform.Mapping.CheckIncoming: the flow's source, fields the source
// owns or shares, deletes only from the key's owner, truncates only where
// the mapping propagates them, shared-field versions not ahead of the
// flow's clock by more than MaxClockSkew); a refused event is a dead
// letter naming system, entity, key, field and reason. An object of
// DUPLEX_LARGE is checked against the digest its signed event carries. A
// transaction whose last chunk does not come within MaxWait is given up
// into dead letters, so no message stalls a flow for ever.
//
// Retention removes from DUPLEX only what every flow reading a source
// applied (its consumer's ack floor), bounded by age and size for replay;
// JetStream itself never deletes from DUPLEX (no max age, discard new at
// the ceiling), and publishing waits while the stream is full.
//
// The package declares the small interfaces it needs of a source and a
// sink; it knows nothing of PostgreSQL.
//
// Files, in the order a change travels: source.go (what a source must
// offer), producer.go (normalize, publish, confirm; ownership violations
// counted and logged, refused inserts dead-lettered), unmapped.go
// (changes of tables no entity maps, counted and logged), message.go (the
// message body), largechange.go (messages cut by bytes within the
// server's max payload, events too large for a message in the
// DUPLEX_LARGE object store), holds.go (entities held back, and
// what a slot sends again of them after a crash), streams.go
// (DUPLEX, DUPLEX_DLQ), retention.go and retention_large.go (what may be
// removed from DUPLEX and DUPLEX_LARGE), lease.go (one active instance per
// flow and capture), consumer.go (a flow's durable consumer, fetch, ack,
// rewind), assembler.go (whole source transactions from chunks, taken in
// the order their capture published them), reorder.go (waiting for a
// transaction JetStream stored after its successors, prev_lsn),
// applier.go (the flow's session loop and apply), largetx.go (transactions
// applied in parts), retry.go (backoff, isolating a failing event),
// deadletter.go and dlqretry.go (dead letters and their retry rules),
// sink.go (what a sink must offer), pii.go (the FieldCipher that seals
// personal fields before publishing and opens them before applying, and
// what a capture-stage dead letter keeps of a row), stats.go, permissions.go (the NATS
// identities duplex connects as, operator, capture-<source> and
// flow-<name>, and the subjects each may use), sign.go (signatures of
// DUPLEX messages, and what a flow refuses), incomplete.go (transactions
// whose last chunk never comes).
package pipeline
