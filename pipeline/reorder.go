package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Applying in the order the capture published.
//
// JetStream stores messages in the order it accepts them. A capture
// publishes asynchronously, many messages in flight; when one publish fails
// (in a NATS cluster: "no response from stream" while the stream's leader
// changes) and later ones are stored, the capture session ends and the
// next one publishes the failed transaction again, after its successors.
// The sink skips a transaction whose commit LSN is not above the applied
// position (that is how redeliveries and duplicates are made harmless), so
// the late one would be skipped: lost, silently. Each streamed message
// therefore carries the commit LSN of the transaction published before it
// in the same session (transform.Tx.PrevLSN), and a flow applies a
// transaction only once that one is applied: the successors wait in the
// assembler's queue, unacknowledged, until the late transaction comes, and
// are applied after it (assembler.take).
//
// The wait is visible (flow state "waiting", the reason in LastError, so
// /readyz fails after wait_alert_after) and bounded: after MaxWait the flow
// stops waiting, dead-letters a record naming the missing position and
// the transaction that follows it (run `duplex resync`), and goes on; if
// the missing transaction comes later after all, its events are
// dead-lettered instead of being skipped. The queue of waiting messages is
// bounded too (maxReorderBytes): past it the flow stops fetching and waits.

// maxReorderBytes bounds what a flow holds in memory while it waits for a
// transaction that JetStream stored after its successors. A failed publish
// is followed by at most the capture's in-flight messages (256 by default).
const maxReorderBytes = 256 << 20

// chain is what a flow knows of the order to apply in.
type chain struct {
	// applied is the commit LSN of the last transaction applied (read from
	// the sink at the start of a session, then kept up to date).
	applied capture.LSN
	// known is false when the sink cannot tell its position: PrevLSN is
	// then not checked.
	known bool
	// gaveUp holds the positions the flow stopped waiting for (MaxWait).
	gaveUp map[capture.LSN]bool
}

// follows reports whether tx may be applied once the transactions up to
// the commit LSN hi are: a snapshot chunk, a transaction first in its
// capture session (PrevLSN 0), or one whose predecessor is applied.
func (c *chain) follows(tx *transform.Tx, hi capture.LSN) bool {
	return !c.known || tx.Snapshot || tx.PrevLSN == 0 || tx.PrevLSN <= hi || c.gaveUp[tx.PrevLSN]
}

// PositionSink is implemented by sinks that can tell how far a flow has
// applied: the commit LSN of the last source transaction recorded as
// applied in the target (0 when none). The Applier reads it at the start
// of each session to apply transactions in the order their capture
// published them (transform.Tx.PrevLSN).
type PositionSink interface {
	AppliedLSN(ctx context.Context) (capture.LSN, error)
}

// readApplied sets the chain's applied position from the sink.
func (a *Applier) readApplied(ctx context.Context) error {
	ps, ok := a.cfg.Sink.(PositionSink)
	if !ok {
		a.chain.known = false
		return nil
	}
	lsn, err := ps.AppliedLSN(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("flow %s: read the applied position: %w", a.cfg.Flow, err)
	}
	a.chain.applied, a.chain.known = lsn, true
	return nil
}

// noteApplied moves the chain's applied position past txs, applied.
func (a *Applier) noteApplied(txs []*transform.Tx) {
	for _, t := range txs {
		a.chain.applied = max(a.chain.applied, t.CommitLSN)
	}
}

// waitingHead returns the first transaction left in the queue that is
// complete but waits for its predecessor, if any.
func (asm *assembler) waitingHead(c *chain) *readyTx {
	for _, r := range asm.queue {
		if r.complete() && !c.follows(r.tx, c.applied) {
			return r
		}
	}
	return nil
}

// heldBytes is the size of the messages the assembler holds.
func (asm *assembler) heldBytes() int {
	n := 0
	for _, m := range asm.held {
		n += msgBytes(m)
	}
	return n
}

// checkOrder runs after each take: it shows a flow waiting for a
// transaction stored after its successors, keeps the waiting messages
// from being redelivered, gives up after MaxWait (a dead letter naming
// the gap) and reports whether the flow must stop fetching for now (its
// queue is full).
func (a *Applier) checkOrder(ctx context.Context, asm *assembler) (gaveUp, full bool, err error) {
	r := asm.waitingHead(&a.chain)
	if r == nil {
		if !a.orderSince.IsZero() {
			a.log.Info("the transaction waited for came; its successors are applied", slog.String("prev_lsn", a.orderWait.String()))
			a.orderSince, a.orderWait = time.Time{}, 0
		}
		return false, false, nil
	}
	if r.tx.PrevLSN != a.orderWait || a.orderSince.IsZero() {
		a.orderWait, a.orderSince = r.tx.PrevLSN, time.Now()
	}
	waited := time.Since(a.orderSince)
	reason := fmt.Errorf("flow %s: transaction %s (stream sequence %d) follows %s, which has not come: JetStream stored it later or not at all; waiting for it (%s of max_wait %s)",
		a.cfg.Flow, r.tx.CommitLSN, r.first, r.tx.PrevLSN, waited.Round(time.Second), a.cfg.MaxWait)
	if waited >= a.cfg.MaxWait {
		if err := a.deadLetterGap(ctx, r); err != nil {
			return false, false, err
		}
		if a.chain.gaveUp == nil {
			a.chain.gaveUp = map[capture.LSN]bool{}
		}
		a.chain.gaveUp[r.tx.PrevLSN] = true
		a.orderSince, a.orderWait = time.Time{}, 0
		return true, false, nil
	}
	since := a.orderSince
	a.cfg.Stats.update(func(s *FlowCounts) { s.State = "waiting"; s.WaitingSince = since; s.LastError = reason.Error() })
	if waited > 5*time.Second && time.Since(a.orderWarned) > 10*time.Second {
		a.orderWarned = time.Now()
		a.log.Warn("waiting for a transaction stored after its successors", slog.String("lsn", r.tx.CommitLSN.String()),
			slog.String("prev_lsn", r.tx.PrevLSN.String()), slog.Duration("for", waited), slog.Duration("max_wait", a.cfg.MaxWait))
	}
	if time.Since(a.orderKept) > a.cfg.AckWait/4 {
		a.orderKept = time.Now()
		for _, m := range asm.held {
			_ = m.InProgress()
		}
	}
	return false, asm.heldBytes() > maxReorderBytes, nil
}

// deadLetterGap records that the flow stopped waiting for the transaction
// before r: what it carried may be missing from the target.
func (a *Applier) deadLetterGap(ctx context.Context, r *readyTx) error {
	cause := fmt.Sprintf("transaction %s of %s follows transaction %s, which did not come within max_wait (%s): its changes may be missing from the target; run duplex resync --flow %s, then duplex verify",
		r.tx.CommitLSN, r.tx.Source, r.tx.PrevLSN, a.cfg.MaxWait, a.cfg.Flow)
	a.log.Error("gave up waiting for a transaction; applying its successors", slog.String("prev_lsn", r.tx.PrevLSN.String()),
		slog.String("lsn", r.tx.CommitLSN.String()), slog.Duration("max_wait", a.cfg.MaxWait))
	a.cfg.Stats.update(func(s *FlowCounts) { s.DeadLetters++ })
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: r.tx.Source, Error: cause, FailedAt: time.Now().UTC(), StreamSeq: r.first,
		Position: transform.Position{LSN: r.tx.CommitLSN, CommitTime: r.tx.CommitTime, Xid: r.tx.Xid}}
	return publishDeadLetter(ctx, a.js, DLQSubject(a.cfg.Flow), fmt.Sprintf("dlq:%s:gap:%s", a.cfg.Flow, r.tx.PrevLSN), dl)
}

// lateAfterGap dead-letters the events of a transaction that came after
// the flow gave up waiting for it and applied its successors: the sink
// would skip it as already applied. It reports whether tx was one.
func (a *Applier) lateAfterGap(ctx context.Context, tx *transform.Tx) (bool, error) {
	if tx.Snapshot || !a.chain.gaveUp[tx.CommitLSN] {
		return false, nil
	}
	cause := fmt.Errorf("transaction %s came after its successors were applied (the flow gave up waiting for it after max_wait); retry with duplex dlq retry after checking the rows", tx.CommitLSN)
	if err := a.deadLetterTx(ctx, tx, cause); err != nil {
		return true, err
	}
	if tx.Last {
		delete(a.chain.gaveUp, tx.CommitLSN)
	}
	return true, nil
}
