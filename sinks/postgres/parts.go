// Large transactions: one source transaction applied chunk by chunk in
// one target transaction (pipeline.PartSink).

package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// BeginParts implements pipeline.PartSink: one source transaction too large
// to hold whole is applied chunk by chunk inside one target transaction,
// committed with its last chunk, so the target still sees it atomically.
func (s *Sink) BeginParts(ctx context.Context) (pipeline.PartSession, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.conn = nil
		if err := s.connect(ctx); err != nil {
			return nil, classify(err, -1, -1)
		}
	}
	tx, applied, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	return &partSession{s: s, tx: tx, applied: applied.LSN, seen: applied.LSN}, nil
}

type partSession struct {
	s             *Sink
	tx            pgx.Tx
	applied, seen transform.LSN
	last          *transform.Tx
}

// Part writes one chunk. A chunk of a transaction already applied is
// skipped.
func (p *partSession) Part(ctx context.Context, chunk *transform.Tx) (pipeline.ApplyResult, error) {
	// A savepoint per part: a set-based statement failing on some row is
	// undone alone and the part written again row by row, to name the
	// event (the whole transaction is still abandoned afterwards).
	if _, err := p.tx.Exec(ctx, "SAVEPOINT duplex_part"); err != nil {
		p.fail(ctx)
		return pipeline.ApplyResult{}, classify(fmt.Errorf("sink %s: savepoint: %w", p.s.cfg.System, err), -1, -1)
	}
	var res pipeline.ApplyResult
	seen := p.applied // chunks of one transaction share its LSN
	last, err := p.s.write(ctx, p.tx, []*transform.Tx{chunk}, p.applied, &seen, &res)
	if uniqueFailure(err) && len(chunk.Events) > 1 {
		// Folded, the chunk's rows collide on a unique index that the
		// source's order of writes did not: write it again change by
		// change, in source order (mode.go).
		if _, rerr := p.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_part"); rerr == nil {
			p.s.mode = inOrder
			res, seen = pipeline.ApplyResult{}, p.applied
			last, err = p.s.write(ctx, p.tx, []*transform.Tx{chunk}, p.applied, &seen, &res)
			p.s.mode = set
		}
	}
	if unattributed(err) && !isCardinalityViolation(err) {
		if _, rerr := p.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT duplex_part"); rerr == nil {
			p.s.isolate = true
			res, seen = pipeline.ApplyResult{}, p.applied
			last, err = p.s.write(ctx, p.tx, []*transform.Tx{chunk}, p.applied, &seen, &res)
			p.s.isolate = false
		}
	}
	if err != nil {
		p.fail(ctx)
		return res, err
	}
	if _, err := p.tx.Exec(ctx, "RELEASE SAVEPOINT duplex_part"); err != nil {
		p.fail(ctx)
		return res, classify(fmt.Errorf("sink %s: release savepoint: %w", p.s.cfg.System, err), -1, -1)
	}
	if last != nil {
		p.last = last
	}
	return res, nil
}

// Commit records the position of the transaction and commits.
func (p *partSession) Commit(ctx context.Context, last *transform.Tx) error {
	if last.CommitLSN <= p.applied {
		return p.tx.Commit(ctx)
	}
	if err := p.s.finish(ctx, p.tx, last); err != nil {
		p.fail(ctx)
		return err
	}
	return nil
}

// Rollback abandons the transaction.
func (p *partSession) Rollback(ctx context.Context) { p.fail(ctx) }

func (p *partSession) fail(ctx context.Context) {
	_ = p.tx.Rollback(context.WithoutCancel(ctx))
	p.s.afterFailure(context.WithoutCancel(ctx))
}
