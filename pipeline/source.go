package pipeline

import (
	"context"

	"github.com/duplex-cdc/duplex/capture"
)

// Source is what the pipeline needs of a capture source.
type Source interface {
	System() string
	// Stream runs one session, handing chunks to h, until ctx ends or the
	// session fails.
	Stream(ctx context.Context, h capture.Handler) error
	// Confirm tells the source that everything up to lsn is durable.
	Confirm(lsn capture.LSN)
}

// Retainer is implemented by sources that can keep their position from
// advancing to lsn or beyond (0: no limit), so that changes from lsn on
// are read again at the next session.
type Retainer interface {
	Retain(lsn capture.LSN)
}
