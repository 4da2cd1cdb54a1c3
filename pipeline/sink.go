package pipeline

import (
	"context"

	"github.com/duplex-cdc/duplex/transform"
)

// Sink is what the pipeline needs of a target: apply whole source
// transactions atomically and idempotently.
type Sink interface {
	// Apply applies the transactions, in order, in one target transaction,
	// skipping any it has already applied. On failure nothing is applied
	// and the error says (as an *ApplyError) what kind of failure it is and,
	// when known, which event caused it.
	Apply(ctx context.Context, txs []*transform.Tx) (ApplyResult, error)
}

// PartSink is implemented by sinks that can apply one source transaction
// in parts: a transaction too large to hold whole in memory is written
// chunk by chunk inside one target transaction and committed with its last
// chunk, so the target still sees it atomically.
type PartSink interface {
	BeginParts(ctx context.Context) (PartSession, error)
}

// PartSession is one target transaction receiving the chunks of one source
// transaction, in order. After an error the session is finished.
type PartSession interface {
	Part(ctx context.Context, chunk *transform.Tx) (ApplyResult, error)
	Commit(ctx context.Context, last *transform.Tx) error
	Rollback(ctx context.Context)
}

// ApplyResult counts what an Apply did.
type ApplyResult struct {
	Applied int // events written
	Skipped int // events already applied (stale or repeated)
	// Conflicts counts writes of shared fields that lost to a later
	// write (last writer wins, field by field).
	Conflicts int
}
