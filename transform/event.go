package transform

import (
	"fmt"
	"time"

	"github.com/duplex-cdc/duplex/capture"
)

// SchemaVersion is the version of the event format on the bus.
const SchemaVersion = 1

// Op is the operation of a canonical event.
type Op string

// Canonical operations.
const (
	OpUpsert   Op = "upsert"
	OpDelete   Op = "delete"
	OpTruncate Op = "truncate"
)

// LSN is a position in a source's write-ahead log (capture.LSN), the type
// of Position.LSN and Tx.CommitLSN: later stages name it here.
type LSN = capture.LSN

// Position is where an event comes from in its source.
type Position struct {
	// LSN is the commit LSN of the source transaction.
	LSN        capture.LSN `json:"lsn"`
	CommitTime time.Time   `json:"commit_time"`
	Xid        uint32      `json:"xid"`
	// Index is the event's place in its source transaction.
	Index int `json:"index"`
}

// Less orders positions of one source.
func (p Position) Less(q Position) bool {
	if p.LSN != q.LSN {
		return p.LSN < q.LSN
	}
	return p.Index < q.Index
}

// Event is one canonical change of one entity instance. Data holds the
// canonical values of the fields the source owns: strings for text, uuid,
// integer, decimal, timestamp (RFC 3339 UTC) and date; bool for booleans;
// Money (or its JSON object form) for money; nil for NULL. A field absent
// from Data was not changed and must be left as it is.
type Event struct {
	Version int            `json:"v"`
	ID      string         `json:"id"`
	Source  string         `json:"source"`
	Entity  string         `json:"entity"`
	Op      Op             `json:"op"`
	Key     string         `json:"key"`
	Pos     Position       `json:"pos"`
	Data    map[string]any `json:"data,omitempty"`
	// Unchanged lists fields an update left as they were and the source
	// did not send (unchanged TOASTed values). Such a field's value in
	// Data, when there, is what the source holds: written only to create
	// a row the target lacks, never over an existing row. Without a value
	// in Data it is unknown, and the target does not create the row from
	// this event (it is dead-lettered with the reason instead).
	Unchanged []string `json:"unchanged,omitempty"`
	// Redo marks a change of an entity that was held (its source table
	// did not fit the mapping) and is published late, after the fix: it
	// is applied even though the flow has applied later positions.
	Redo bool `json:"redo,omitempty"`
	// Versions, for a copied row (snapshot, backfill), holds the recorded
	// version of shared fields whose value is still the one recorded: the
	// write they come from, rather than the time of the copy.
	Versions map[string]FieldVersion `json:"versions,omitempty"`
	// Violated lists the fields another system owns (alone) that this
	// local write changed in the source: an ownership violation, counted
	// and logged by the capture. Data does not carry them. When Data
	// carries nothing but the key, the event exists only to report them:
	// the flow into the owner writes nothing for it, and with enforce:
	// owner has the owner's current value re-read and written back.
	Violated []string `json:"violated,omitempty"`
	// DataRef, when set, says Data did not fit in one message: it is
	// stored as JSON in an object of JetStream's object store and the
	// message carries the event without it. A flow reads the object back
	// into Data before applying the event (pipeline/largechange.go).
	DataRef *DataRef `json:"data_ref,omitempty"`
}

// DataRef names the object holding an event's Data.
type DataRef struct {
	Bucket string `json:"bucket"`
	Object string `json:"object"`
	// Size is the object's length in bytes.
	Size int64 `json:"size"`
	// Digest is the SHA-256 of the object's bytes, as JetStream's object
	// store writes it ("SHA-256=<base64url>"). The event travels in a
	// signed message, the object does not: a flow checks the object it
	// reads against this digest, not against the object's own meta, which
	// whoever stored the object wrote.
	Digest string `json:"digest,omitempty"`
}

// FieldVersion is who wrote a field's value, and when (source commit time).
type FieldVersion struct {
	Source string    `json:"source"`
	At     time.Time `json:"at"`
}

// EventID is "<source>:<commit LSN>:<index>".
func EventID(source string, lsn capture.LSN, index int) string {
	return fmt.Sprintf("%s:%s:%d", source, lsn, index)
}

// Tx is one source transaction, or one chunk of a large one, as it travels
// on the bus: one JetStream message.
type Tx struct {
	Version    int         `json:"v"`
	Source     string      `json:"source"`
	CommitLSN  capture.LSN `json:"commit_lsn"`
	EndLSN     capture.LSN `json:"end_lsn"`
	CommitTime time.Time   `json:"commit_time"`
	Xid        uint32      `json:"xid"`
	Chunk      int         `json:"chunk"`
	Last       bool        `json:"last"`
	// Snapshot marks a chunk of the initial snapshot: rows as they were at
	// the slot's consistent point (CommitLSN). Each such chunk stands alone.
	Snapshot bool `json:"snapshot,omitempty"`
	// Redo marks a transaction read again after a held entity was fixed
	// (it carries that entity's Redo events).
	Redo bool `json:"redo,omitempty"`
	// Part numbers the messages of a snapshot (or backfill) chunk too
	// large for one message: each stands alone like the chunk, with the
	// chunk's number and its own part, from 0.
	Part int `json:"part,omitempty"`
	// PrevLSN is the commit LSN of the transaction the same capture session
	// published before this one (0 for its first, and for snapshot and
	// backfill chunks). JetStream stores messages in the order it accepts
	// them, not in LSN order: when a publish fails while later ones
	// succeed (a NATS cluster leader change), the transaction published
	// again comes after its successors. A flow applies a transaction only
	// once its predecessor is applied, so the late one is not skipped as
	// already applied (Applier, reorder.go).
	PrevLSN capture.LSN `json:"prev_lsn,omitempty"`
	Events  []Event     `json:"events"`
}

// MsgID is the JetStream message id of the chunk: "<source>:<commit LSN>:<chunk>",
// followed by ".<part>" for a part after the first of a snapshot chunk.
func (t *Tx) MsgID() string {
	id := fmt.Sprintf("%s:%s:%d", t.Source, t.CommitLSN, t.Chunk)
	if t.Part > 0 {
		id += fmt.Sprintf(".%d", t.Part)
	}
	if t.Redo {
		id += ":redo"
	}
	return id
}
