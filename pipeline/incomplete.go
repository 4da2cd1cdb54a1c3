package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Transactions whose last chunk never comes.
//
// A capture publishes a source transaction's chunks one after another and
// sends the whole transaction again from its first chunk after a crash
// (JetStream drops the chunks it already holds), so a transaction's chunks
// keep coming until its last. One whose last chunk stops coming (a chunk
// published by something else than the capture, or a capture stopped for
// good in the middle) would keep the flow waiting for ever: nothing after
// it may be applied before it. So once no chunk of an incomplete
// transaction came for MaxWait, the flow gives it up: the events of the
// chunks that came are dead-lettered (held whole) or rolled back and named
// in one dead letter (applied in parts), the transaction counts as a gap
// (reorder.go: its successors follow it, and chunks of it that come later
// are dead-lettered rather than applied half), and the flow goes on.

// checkIncomplete gives up the transactions of the assembler's queue
// whose last chunk has not come within MaxWait of their latest chunk. It
// reports whether it gave one up.
func (a *Applier) checkIncomplete(ctx context.Context, asm *assembler) (bool, error) {
	dropped := false
	rest := asm.queue[:0:0]
	for _, r := range asm.queue {
		if r.tx.Snapshot || r.complete() || time.Since(r.lastAt) < a.cfg.MaxWait {
			rest = append(rest, r)
			continue
		}
		dropped = true
		cause := a.incompleteCause(r.tx, len(r.chunks))
		for i := 0; i <= maxChunk(r.chunks); i++ {
			if c := r.chunks[i]; c != nil {
				if err := a.deadLetterTx(ctx, c, cause); err != nil {
					return false, err
				}
			}
		}
		if err := a.giveUpIncomplete(ctx, r.tx, r.first, cause); err != nil {
			return false, err
		}
	}
	asm.queue = rest
	return dropped, nil
}

// abandonLarge gives up a transaction applied in parts whose last chunk
// has not come within MaxWait: the target transaction is rolled back and
// its messages acknowledged.
func (a *Applier) abandonLarge(ctx context.Context, l *largeTx) error {
	l.sess.Rollback(ctx)
	tx := &transform.Tx{Source: l.source, CommitLSN: l.lsn}
	cause := a.incompleteCause(tx, l.next+len(l.early))
	cause = fmt.Errorf("%w; the chunks applied so far were rolled back", cause)
	if err := a.giveUpIncomplete(ctx, tx, seqOf(l.lastMsg), cause); err != nil {
		return err
	}
	return a.ack(ctx, l.lastMsg)
}

func (a *Applier) incompleteCause(tx *transform.Tx, chunks int) error {
	return fmt.Errorf("transaction %s of %s: %d chunk(s) came but not its last within max_wait (%s): it is not applied; chunks of it that come later are dead-lettered; check the capture of %s, then duplex verify",
		tx.CommitLSN, tx.Source, chunks, a.cfg.MaxWait, tx.Source)
}

// giveUpIncomplete records (a dead letter referring to it) that the flow
// gave up an incomplete transaction, and lets its successors follow it.
func (a *Applier) giveUpIncomplete(ctx context.Context, tx *transform.Tx, seq uint64, cause error) error {
	a.log.Error("gave up a transaction whose last chunk did not come", slog.String("lsn", tx.CommitLSN.String()), slog.Duration("max_wait", a.cfg.MaxWait))
	if a.chain.gaveUp == nil {
		a.chain.gaveUp = map[capture.LSN]bool{}
	}
	a.chain.gaveUp[tx.CommitLSN] = true
	a.cfg.Stats.update(func(s *FlowCounts) { s.DeadLetters++ })
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: tx.Source, Error: cause.Error(), FailedAt: time.Now().UTC(), StreamSeq: seq,
		Position: transform.Position{LSN: tx.CommitLSN, CommitTime: tx.CommitTime, Xid: tx.Xid}}
	return publishDeadLetter(ctx, a.js, DLQSubject(a.cfg.Flow), fmt.Sprintf("dlq:%s:incomplete:%s", a.cfg.Flow, tx.CommitLSN), dl)
}

func maxChunk(m map[int]*transform.Tx) int {
	n := -1
	for i := range m {
		n = max(n, i)
	}
	return n
}
