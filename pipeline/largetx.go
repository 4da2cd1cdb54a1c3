package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
	"github.com/nats-io/nats.go/jetstream"
)

// largeTx is a source transaction being applied part by part. Only the
// reply subjects of its messages are kept (to keep them from being
// redelivered while the target transaction is open) and the last message
// (to acknowledge them all at the commit), so memory does not grow with the
// transaction.
type largeTx struct {
	sess     PartSession
	source   string
	lsn      capture.LSN
	redo     bool
	next     int
	early    map[int]*transform.Tx // chunks that came before their turn
	replies  []string
	lastMsg  jetstream.Msg
	res      ApplyResult
	progress time.Time
	started  time.Time
	// lastChunk is when its last chunk so far came (incomplete.go).
	lastChunk time.Time
}

func (l *largeTx) owns(tx *transform.Tx) bool {
	return !tx.Snapshot && tx.Source == l.source && tx.CommitLSN == l.lsn && tx.Redo == l.redo
}

// keepAlive tells JetStream the held messages are still being worked on.
func (l *largeTx) keepAlive(js jetstream.JetStream, ackWait time.Duration) {
	if time.Since(l.progress) < ackWait/3 {
		return
	}
	l.progress = time.Now()
	nc := js.Conn()
	for _, r := range l.replies {
		_ = nc.Publish(r, []byte("+WPI"))
	}
}

// beginLarge turns the transaction at the tail of the assembler's queue
// (everything before it is applied) into a large transaction and applies
// the chunks that have come so far.
func (a *Applier) beginLarge(ctx context.Context, ps PartSink, asm *assembler) (*largeTx, error) {
	r := asm.queue[0]
	sess, err := ps.BeginParts(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("flow %s: begin large transaction %s: %w", a.cfg.Flow, r.tx.CommitLSN, err)
	}
	l := &largeTx{sess: sess, source: r.tx.Source, lsn: r.tx.CommitLSN, redo: r.tx.Redo, early: r.chunks, progress: time.Now(), started: time.Now(), lastChunk: r.lastAt}
	for _, m := range asm.held {
		l.replies = append(l.replies, m.Reply())
		l.lastMsg = m
	}
	asm.queue, asm.held = nil, nil
	a.log.Info("large transaction: applying it part by part in one target transaction",
		slog.String("lsn", l.lsn.String()), slog.Int("chunks_so_far", len(l.early)))
	if _, err := a.applyParts(ctx, l); err != nil {
		sess.Rollback(ctx)
		return nil, err
	}
	return l, nil
}

// addPart takes one more chunk of a large transaction; it is applied with
// the others of the same fetch by applyParts.
func (l *largeTx) addPart(m jetstream.Msg, tx *transform.Tx) {
	if tx.Chunk >= l.next {
		l.early[tx.Chunk] = tx
	}
	l.replies = append(l.replies, m.Reply())
	l.lastMsg = m
	l.lastChunk = time.Now()
}

// applyParts applies the chunks that are next in order and commits after
// the last. A failure ends the target transaction and the session: the
// flow's consumer is rewound and the transaction comes again from its
// first chunk, without the events dead-lettered meanwhile.
func (a *Applier) applyParts(ctx context.Context, l *largeTx) (bool, error) {
	for {
		// Up to 16 consecutive chunks at once (about 8,000 changes).
		var part *transform.Tx
		for n := 0; n < 16; n++ {
			c := l.early[l.next]
			if c == nil {
				break
			}
			delete(l.early, l.next)
			l.next++
			evs := slices.DeleteFunc(slices.Clone(c.Events), func(e transform.Event) bool { return a.excluded[e.ID] })
			if part == nil {
				p := *c
				p.Events = evs
				part = &p
			} else {
				part.Events = append(part.Events, evs...)
				part.Last = c.Last
			}
			if c.Last {
				break
			}
		}
		if part == nil {
			return false, nil
		}
		res, err := l.sess.Part(context.WithoutCancel(ctx), part)
		if err != nil {
			l.sess = nopSession{}
			return false, a.partFailed(ctx, part, err)
		}
		l.res.Applied += res.Applied
		l.res.Skipped += res.Skipped
		l.res.Conflicts += res.Conflicts
		l.keepAlive(a.js, a.cfg.AckWait)
		if !part.Last {
			continue
		}
		if err := l.sess.Commit(context.WithoutCancel(ctx), part); err != nil {
			l.sess = nopSession{}
			return false, a.partFailed(ctx, part, err)
		}
		a.recordApplied([]*transform.Tx{part}, l.res, time.Since(l.started))
		a.log.Info("large transaction applied", slog.String("lsn", l.lsn.String()), slog.Int("chunks", l.next),
			slog.Int("events", l.res.Applied), slog.Int("skipped", l.res.Skipped))
		clear(a.excluded)
		clear(a.waits)
		clear(a.waitSince)
		return true, nil
	}
}

// partFailed handles the failure of a part: an event to blame is
// dead-lettered (at once, or after MaxWaitAttempts when it waits for a
// reference) and left out from then on.
func (a *Applier) partFailed(ctx context.Context, part *transform.Tx, err error) error {
	var ae *ApplyError
	errors.As(err, &ae)
	kind := KindOf(err)
	a.countError(kind)
	blame := ae != nil && ae.Tx == 0 && ae.Event >= 0 && ae.Event < len(part.Events)
	// A wait for something expected within moments (RetryAfter: a shared
	// field waiting for the capture of the target) is bounded by time
	// (MaxWait), as in apply; a wait for a referenced row by attempts.
	quick := kind == Waiting && blame && ae.RetryAfter > 0
	if quick {
		id := part.Events[ae.Event].ID
		if a.waitSince[id].IsZero() {
			a.waitSince[id] = time.Now()
		}
		since := a.waitSince[id]
		if waited := time.Since(since); waited >= a.cfg.MaxWait {
			err = fmt.Errorf("gave up after waiting %s (max_wait %s): %w", waited.Round(time.Millisecond), a.cfg.MaxWait, err)
		} else {
			a.cfg.Stats.update(func(s *FlowCounts) { s.State = "waiting"; s.WaitingSince = since; s.LastError = err.Error() })
			a.waits[id]++
			return fmt.Errorf("flow %s: large transaction %s, chunk %d: %w", a.cfg.Flow, part.CommitLSN, part.Chunk, err)
		}
	}
	switch {
	case kind == Permanent && blame, quick, kind == Waiting && blame && ae.RetryAfter <= 0 && a.waits[part.Events[ae.Event].ID]+1 >= a.cfg.MaxWaitAttempts:
		ev := part.Events[ae.Event]
		if err := a.deadLetter(ctx, part, ae.Event, err, a.waits[ev.ID]+1); err != nil {
			return err
		}
		a.excluded[ev.ID] = true
	case kind == Permanent && ae != nil && ae.Tx == 0:
		if err := a.deadLetterTx(ctx, part, err); err != nil {
			return err
		}
		for _, e := range part.Events {
			a.excluded[e.ID] = true
		}
	case kind == Waiting && blame:
		a.waits[part.Events[ae.Event].ID]++
	}
	return fmt.Errorf("flow %s: large transaction %s, chunk %d: %w", a.cfg.Flow, part.CommitLSN, part.Chunk, err)
}

// nopSession stands for a part session that has already ended.
type nopSession struct{}

func (nopSession) Part(context.Context, *transform.Tx) (ApplyResult, error) {
	return ApplyResult{}, errors.New("part session ended")
}

func (nopSession) Commit(context.Context, *transform.Tx) error {
	return errors.New("part session ended")
}

func (nopSession) Rollback(context.Context) {}
