package capture

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LSN is a PostgreSQL log sequence number: a byte position in the WAL.
type LSN uint64

// String formats the LSN the way PostgreSQL does (16/B374D848).
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// MarshalText implements encoding.TextMarshaler.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// ParseLSN parses the textual form X/Y of an LSN.
func ParseLSN(s string) (LSN, error) {
	// strconv rather than fmt.Sscanf: every event's position carries an
	// LSN, and Sscanf cost a microsecond each on the flow's hot path.
	a, b, ok := strings.Cut(s, "/")
	if !ok || a == "" || b == "" || len(a) > 8 || len(b) > 8 {
		return 0, fmt.Errorf("parse lsn %q: want two hexadecimal numbers of at most 8 digits, separated by /", s)
	}
	hi, err := strconv.ParseUint(a, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	lo, err := strconv.ParseUint(b, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return LSN(hi<<32 | lo), nil
}

// Op is the kind of a row change.
type Op uint8

// Row change kinds, as pgoutput reports them.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Unchanged marks a column whose value the source did not send because it did
// not change (an unchanged TOASTed value). A sink must leave such a column as
// it is; it is never NULL.
//
// Known says Value is the value the column holds, found by the source
// (capture/postgres: the old row under REPLICA IDENTITY FULL, else the row
// read again by key): what a row must hold when it has to be created from
// this change (the target lacks it). Without Known the value is unknown,
// and such a row cannot be created.
type Unchanged struct {
	Known bool
	Value any
}

// Row maps column names to exact Go values: nil (SQL NULL), int64, string,
// bool, decimal.Decimal, time.Time, []byte, json.RawMessage, Unchanged, or
// Special for values with no exact Go form (numeric NaN/Infinity).
type Row map[string]any

// Special is a value that has no exact Go representation of its column's
// kind, kept as PostgreSQL's text (numeric 'NaN', 'Infinity'). Converters
// refuse it where it cannot be carried exactly.
type Special string

// Change is one row change of a committed transaction.
type Change struct {
	Schema string
	Table  string
	Op     Op
	// New holds the new row for Insert and Update.
	New Row
	// Old holds the replica identity columns (or the whole old row with
	// REPLICA IDENTITY FULL) for Delete, and for Update when the key changed
	// or the table has REPLICA IDENTITY FULL. Nil otherwise.
	Old Row
	// Tables lists every truncated table for Truncate ("schema.table").
	// A partition of a mapped partitioned table is named by that table.
	Tables []string
	// Partition is the partition ("schema.table") the row change was made
	// in, when Schema and Table name the mapped partitioned table it
	// belongs to (pgoutput names the partition unless the publication
	// publishes via the partition root).
	Partition string `json:",omitempty"`
	// Partitions, for a Truncate that emptied only some partitions of a
	// mapped partitioned table, maps that table (in Tables) to the
	// partitions truncated. A table all of whose partitions were
	// truncated is not in it.
	Partitions map[string][]string `json:",omitempty"`
	// RowCommitTime, for a row copied by a snapshot or backfill from a
	// table of CommitTimes (capture/postgres Config), is the commit time
	// of the transaction that last wrote the row
	// (pg_xact_commit_timestamp(xmin), read with the row); nil when
	// unknown (track_commit_timestamp off then, or the row frozen).
	RowCommitTime *time.Time `json:",omitempty"`
}

// QualifiedTable is "schema.table".
func (c *Change) QualifiedTable() string { return c.Schema + "." + c.Table }

// TxInfo identifies a committed source transaction.
type TxInfo struct {
	// System names the source ("crm").
	System string
	// CommitLSN is the LSN of the commit record; with Chunk it identifies
	// a message on the bus.
	CommitLSN LSN
	// EndLSN is the end of the commit record: the position the slot is
	// confirmed to once the transaction is durable downstream.
	EndLSN     LSN
	CommitTime time.Time
	Xid        uint32
	// Origin is the replication origin that wrote the transaction, if any.
	Origin string
	// Applied is set when the origin is one of duplex's own sinks: the
	// transaction is duplex applying another system's changes, not a
	// change made here.
	Applied bool
	// Snapshot marks rows copied by the initial snapshot: each chunk
	// stands alone, and CommitLSN is the slot's consistent point.
	Snapshot bool
	// SnapshotName, for rows of the initial snapshot, names the snapshot
	// the rows were read in (the slot's, imported with SET TRANSACTION
	// SNAPSHOT), as the reading transaction exports it
	// (pg_export_snapshot): it stays importable while that transaction
	// is open, which it is while the chunk is handed on, so what else is
	// read about the rows (the recorded versions of their shared fields)
	// is read as of the same moment. Not the slot's own export: that one
	// is importable only while the replication session that created the
	// slot lives, and that session sits idle in a transaction for the
	// whole copy (idle_in_transaction_session_timeout ends it). Empty
	// otherwise (a backfill chunk reads the rows live).
	SnapshotName string
}

// Chunk is a run of consecutive changes of one transaction. Large
// transactions arrive as several chunks numbered from 0; the one with Last
// set closes the transaction. A chunk is handed on only after the source
// has seen the transaction commit.
type Chunk struct {
	Tx      TxInfo
	Index   int
	Last    bool
	First   int // index in the transaction of Changes[0]
	Changes []Change
}

// Handler receives what a source captures.
type Handler interface {
	// Chunk takes a chunk of a committed transaction. It may block to
	// apply back-pressure. An error ends the source's session.
	Chunk(ctx context.Context, c *Chunk) error
	// Drain waits until everything handed on is durable. It returns nil
	// only then; otherwise the error says why it gave up: ctx ended (the
	// error wraps ctx.Err()) or handing on failed (a publish was refused).
	// A source calls it before recording anything as complete (a
	// snapshot, a backfill chunk) and when asked to stop, before its last
	// status update.
	Drain(ctx context.Context) error
}
