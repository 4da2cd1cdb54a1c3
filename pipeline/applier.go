package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// ApplierConfig configures a flow.
type ApplierConfig struct {
	// Flow names the flow and its durable consumer ("to-erp").
	Flow string
	// Source is the system whose subjects the flow consumes.
	Source string
	Sink   Sink
	// Batch is the most messages fetched at once (default 256).
	Batch int
	// MaxWaitAttempts bounds retries of an event whose reference has not
	// arrived (default 8), after which it is dead-lettered.
	MaxWaitAttempts int
	// MaxWait bounds how long an event may wait for something that is
	// expected within moments and retried quickly (an ApplyError of kind
	// Waiting with RetryAfter: a shared field waiting for the capture of
	// the target to record a local write), after which it is
	// dead-lettered with the reason (default 5m).
	MaxWait time.Duration
	// AckWait of the consumer (default 30s).
	AckWait time.Duration
	// LargeTxChunks is the number of chunks from which a source
	// transaction is applied part by part as it arrives, inside one target
	// transaction, instead of being held whole (default 8, about 4,000
	// changes); it needs a sink that implements PartSink.
	LargeTxChunks int
	// Manage, when set, is the JetStream context that creates, rewinds
	// and deletes the flow's durable consumer (the operator's); the
	// applier's own only reads and fetches from it, so the flow's identity
	// needs no right to create consumers (a create request sets the
	// consumer's whole configuration: a push consumer would make
	// JetStream publish the stream's messages to any subject). Default:
	// the applier's own.
	Manage jetstream.JetStream
	// Verify, when set, checks every message's signature before it is
	// decoded (sign.go): a message without a valid signature of the
	// source's key is dead-lettered and applies nothing. duplex run
	// always sets it.
	Verify *Verifier
	// Mapping and Target, when set, make the flow re-check every event
	// against the mapping before the sink sees it
	// (transform.Mapping.CheckIncoming); an event that breaks it is
	// dead-lettered with the reason. MaxClockSkew bounds how far in the
	// future a shared field's version may be (default 1m).
	Mapping      *transform.Mapping
	Target       string
	MaxClockSkew time.Duration
	// PII opens the sealed personal fields of events before they are
	// applied, and seals them again in dead letters; an event it cannot
	// open is dead-lettered with the reason. Nil: an event carrying a
	// sealed value is applied as it is, and fails to convert.
	PII    FieldCipher
	Logger *slog.Logger
	Stats  *FlowStats
	// OnApplied, when set, is called after each committed batch.
	OnApplied func(txs []*transform.Tx, committed time.Time)
	// OnBatch, when set, is called after each committed batch with its
	// size and how long the apply took (metrics).
	OnBatch func(txs []*transform.Tx, events int, took time.Duration, committed time.Time)
}

// Validate checks the configuration.
func (c *ApplierConfig) Validate() error {
	if c.Flow == "" || c.Source == "" || c.Sink == nil {
		return errors.New("flow: name, source and sink are required")
	}
	return nil
}

// FlowStats describes a flow; safe for concurrent use.
type FlowStats = Stats[FlowCounts]

// FlowCounts is a snapshot of FlowStats.
type FlowCounts struct {
	State        string
	Applied      int64
	Skipped      int64
	Conflicts    int64
	DeadLetters  int64
	Batches      int64
	LastPosition transform.Position
	LastApplied  time.Time
	LastError    string
	StreamSeq    uint64
	// WaitingSince is when the event the flow waits for (State
	// "waiting") started to wait; LastError says what it waits for.
	WaitingSince time.Time
	// Errors counts failed apply attempts by kind (transient, waiting,
	// permanent).
	Errors map[string]int64
	// Refused counts messages and events refused as not produced by the
	// source's capture, by reason: "unsigned", "unknown key", "bad
	// signature", "source" (a message naming another source), "mapping"
	// (an event that breaks the mapping). Each is also a dead letter.
	Refused map[string]int64
}

// Clone returns a copy that shares no map with c.
func (c FlowCounts) Clone() FlowCounts {
	m := make(map[string]int64, len(c.Errors))
	maps.Copy(m, c.Errors)
	c.Errors = m
	c.Refused = maps.Clone(c.Refused)
	return c
}

// Applier runs one flow from the stream into a sink.
type Applier struct {
	js  jetstream.JetStream
	cfg ApplierConfig
	log *slog.Logger
	// Of a large transaction being applied in parts: events dead-lettered
	// (left out when its chunks come again) and waits per event.
	excluded map[string]bool
	waits    map[string]int
	// waitSince is when each event of a large transaction that waits
	// quickly (ApplyError.RetryAfter) first waited.
	waitSince map[string]time.Time
	large     largeStore
	// nextDelivery is the consumer sequence the next delivery must carry
	// (0: not known), set when a session finds its consumer.
	nextDelivery uint64
	// The order to apply in (reorder.go): what is applied, and since when
	// (orderSince) the flow waits for which transaction (orderWait).
	chain       chain
	orderWait   capture.LSN
	orderSince  time.Time
	orderWarned time.Time
	orderKept   time.Time
	orderFull   bool
}

// NewApplier returns an Applier.
func NewApplier(js jetstream.JetStream, cfg ApplierConfig) (*Applier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 256
	}
	if cfg.MaxWaitAttempts <= 0 {
		cfg.MaxWaitAttempts = 8
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 5 * time.Minute
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.LargeTxChunks <= 0 {
		cfg.LargeTxChunks = 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Stats == nil {
		cfg.Stats = &FlowStats{}
	}
	return &Applier{js: js, cfg: cfg, log: cfg.Logger.With(slog.String("flow", cfg.Flow)),
		excluded: map[string]bool{}, waits: map[string]int{}, waitSince: map[string]time.Time{}}, nil
}

// Stats returns the flow's statistics.
func (a *Applier) Stats() *FlowStats { return a.cfg.Stats }

// Run applies the flow until ctx ends, restarting with backoff after any
// failure of NATS. The batch in hand when ctx ends is finished first.
func (a *Applier) Run(ctx context.Context) error {
	bo := newBackoff()
	for {
		started := time.Now()
		a.cfg.Stats.update(func(s *FlowCounts) { s.State = "running" })
		err := a.session(ctx)
		if ctx.Err() != nil {
			a.cfg.Stats.update(func(s *FlowCounts) { s.State = "stopped" })
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		a.cfg.Stats.update(func(s *FlowCounts) { s.State = "retrying"; s.LastError = err.Error() })
		a.log.Warn("flow session ended; restarting", slog.Any("error", err), slog.Duration("retry_in", wait))
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

func (a *Applier) session(ctx context.Context) error {
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		return err
	}
	if err := a.readApplied(ctx); err != nil {
		return err
	}
	a.orderFull = false
	pull, err := a.openPuller(cons)
	if err != nil {
		return err
	}
	defer pull.close()
	asm := &assembler{}
	parts, _ := a.cfg.Sink.(PartSink)
	var large *largeTx
	defer func() {
		if large != nil {
			large.sess.Rollback(ctx)
		}
	}()
	for ctx.Err() == nil {
		if a.orderFull {
			// Too much waits for a transaction stored after its
			// successors: fetch nothing more until it comes (or MaxWait).
			if !sleep(ctx, time.Second) {
				return nil
			}
			if err := a.applyReady(ctx, asm); err != nil {
				return err
			}
			continue
		}
		msgs, err := a.fetch(ctx, pull)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, m := range msgs {
			if a.cfg.Verify != nil {
				// Before anything of the body is read: a message the
				// source's capture did not sign applies nothing.
				if err := a.cfg.Verify.Verify(m.Subject(), m.Headers(), m.Data()); err != nil {
					var se *SignatureError
					if !errors.As(err, &se) {
						// The source's recorded keys could not be read:
						// not the message's fault; the session ends
						// and the next one fetches it again.
						return fmt.Errorf("flow %s: %w", a.cfg.Flow, err)
					}
					if err := a.refuseMsg(ctx, m, se.Reason, err); err != nil {
						return err
					}
					asm.skip(m)
					continue
				}
			}
			var tx transform.Tx
			if err := decodeTx(m.Data(), &tx); err != nil {
				if err := a.deadLetterRaw(ctx, m, err); err != nil {
					return err
				}
				asm.skip(m)
				continue
			}
			if late, err := a.lateAfterGap(ctx, &tx); err != nil {
				return err
			} else if late {
				asm.skip(m)
				continue
			}
			if tx.Source != a.cfg.Source {
				if err := a.refuseMsg(ctx, m, "source", fmt.Errorf("message names source %q, but flow %s carries %s's changes only", truncate(tx.Source, 32), a.cfg.Flow, a.cfg.Source)); err != nil {
					return err
				}
				asm.skip(m)
				continue
			}
			if err := a.resolve(ctx, &tx); err != nil {
				return err
			}
			if err := a.enforce(ctx, &tx); err != nil {
				return err
			}
			if large != nil && large.owns(&tx) {
				large.addPart(m, &tx)
				continue
			}
			asm.add(m, &tx)
			if parts != nil && large == nil && asm.tailChunks() >= a.cfg.LargeTxChunks {
				// Apply what came before, then stream the rest of this
				// transaction into one target transaction.
				if err := a.applyReady(ctx, asm); err != nil {
					return err
				}
				// Only when nothing before it waits for a transaction
				// stored after it (reorder.go): it is then held whole.
				if len(asm.queue) == 1 && a.chain.follows(asm.queue[0].tx, a.chain.applied) {
					if large, err = a.beginLarge(ctx, parts, asm); err != nil {
						return err
					}
				}
			}
		}
		if large != nil {
			done, err := a.applyParts(ctx, large)
			if err != nil {
				return err
			}
			if !done && time.Since(large.lastChunk) >= a.cfg.MaxWait {
				// Its last chunk did not come (incomplete.go).
				if err := a.abandonLarge(ctx, large); err != nil {
					return err
				}
				large = nil
				continue
			}
			if !done {
				large.keepAlive(a.js, a.cfg.AckWait)
				continue
			}
			if err := a.ack(ctx, large.lastMsg); err != nil {
				return err
			}
			large = nil
		}
		if err := a.applyReady(ctx, asm); err != nil {
			return err
		}
	}
	return nil
}

// applyReady applies the transactions of the assembler's queue that may be
// applied now (assembler.take), acknowledges what they came in, and
// checks whether the flow waits for a transaction stored after its
// successors (checkOrder).
func (a *Applier) applyReady(ctx context.Context, asm *assembler) error {
	for {
		ready, ack := asm.take(&a.chain)
		if len(ready) > 0 {
			if err := a.applyAll(ctx, ready, asm.held); err != nil {
				return err
			}
		}
		if ack != nil {
			if err := a.ack(ctx, ack); err != nil {
				return err
			}
		}
		dropped, err := a.checkIncomplete(ctx, asm)
		if err != nil {
			return err
		}
		if dropped {
			continue
		}
		gaveUp, full, err := a.checkOrder(ctx, asm)
		if err != nil {
			return err
		}
		a.orderFull = full
		if !gaveUp {
			return nil
		}
	}
}

// applyAll applies ready transactions, retrying and dead-lettering by the
// kind of failure, until they are all applied or dead-lettered.
func (a *Applier) applyAll(ctx context.Context, ready []*readyTx, held []jetstream.Msg) error {
	txs := make([]*transform.Tx, len(ready))
	for i, r := range ready {
		txs[i] = r.tx
	}
	return a.apply(ctx, txs, held)
}

func (a *Applier) apply(ctx context.Context, txs []*transform.Tx, held []jetstream.Msg) error {
	bo := newBackoff()
	waits := map[string]int{}
	since := map[string]time.Time{} // first wait of each event that waits quickly
	var waitStart, lastWarn, lastKeep time.Time
	for {
		if len(txs) == 0 {
			return nil
		}
		started := time.Now()
		res, err := a.cfg.Sink.Apply(context.WithoutCancel(ctx), txs)
		if err == nil {
			a.recordApplied(txs, res, time.Since(started))
			a.log.Debug("applied", slog.Int("txs", len(txs)), slog.Int("events", res.Applied), slog.Int("skipped", res.Skipped), slog.Duration("took", time.Since(started)))
			return nil
		}
		var ae *ApplyError
		errors.As(err, &ae)
		kind := KindOf(err)
		if kind != Transient && eventCount(txs) == 0 {
			// Nothing left to blame: the failure is not the data's.
			kind = Transient
		}
		a.countError(kind)
		switch kind {
		case Permanent:
			switch {
			case ae != nil && ae.Tx >= 0 && ae.Tx < len(txs) && ae.Event >= 0 && ae.Event < len(txs[ae.Tx].Events):
				if err := a.deadLetter(ctx, txs[ae.Tx], ae.Event, err, 1); err != nil {
					return err
				}
				txs = withoutEvent(txs, ae.Tx, ae.Event)
			case ae != nil && ae.Tx >= 0 && ae.Tx < len(txs):
				if err := a.deadLetterTx(ctx, txs[ae.Tx], err); err != nil {
					return err
				}
				txs = withoutEvents(txs, ae.Tx)
			case len(txs) > 1:
				// The culprit is unknown: apply one transaction at a time.
				for i := range txs {
					if err := a.apply(ctx, txs[i:i+1], held); err != nil {
						return err
					}
				}
				return nil
			default:
				if err := a.deadLetterTx(ctx, txs[0], err); err != nil {
					return err
				}
				txs = withoutEvents(txs, 0)
			}
		case Waiting:
			id := "?"
			if ae != nil && ae.Tx >= 0 && ae.Tx < len(txs) && ae.Event >= 0 && ae.Event < len(txs[ae.Tx].Events) {
				id = txs[ae.Tx].Events[ae.Event].ID
			}
			waits[id]++
			if ae != nil && ae.RetryAfter > 0 {
				// Expected within moments: retried quickly, bounded by
				// time (MaxWait) rather than by attempts.
				if since[id].IsZero() {
					since[id] = time.Now()
				}
				waited := time.Since(since[id])
				if waited >= a.cfg.MaxWait && id != "?" {
					gaveUp := fmt.Errorf("gave up after waiting %s (max_wait %s): %w", waited.Round(time.Millisecond), a.cfg.MaxWait, err)
					if err := a.deadLetter(ctx, txs[ae.Tx], ae.Event, gaveUp, waits[id]); err != nil {
						return err
					}
					txs = withoutEvent(txs, ae.Tx, ae.Event)
					continue
				}
				a.cfg.Stats.update(func(s *FlowCounts) { s.State = "waiting"; s.WaitingSince = since[id]; s.LastError = err.Error() })
				if waited > 10*time.Second && time.Since(lastWarn) > 10*time.Second {
					lastWarn = time.Now()
					a.log.Warn("apply keeps waiting", slog.String("event", id), slog.Duration("for", waited), slog.Duration("max_wait", a.cfg.MaxWait), slog.Any("error", err))
				}
				if time.Since(lastKeep) > a.cfg.AckWait/4 {
					// Keep the held messages from being redelivered
					// while they wait.
					lastKeep = time.Now()
					for _, m := range held {
						_ = m.InProgress()
					}
				}
				if !sleep(ctx, ae.RetryAfter) {
					return ctx.Err()
				}
				continue
			}
			if waits[id] >= a.cfg.MaxWaitAttempts && id != "?" {
				if err := a.deadLetter(ctx, txs[ae.Tx], ae.Event, err, waits[id]); err != nil {
					return err
				}
				txs = withoutEvent(txs, ae.Tx, ae.Event)
				continue
			}
			a.log.Info("waiting for a referenced row", slog.String("event", id), slog.Int("attempt", waits[id]), slog.Any("error", err))
			if !a.pause(ctx, bo, held, err) {
				return ctx.Err()
			}
		default:
			if ae != nil && ae.RetryAfter > 0 {
				if waitStart.IsZero() {
					waitStart = time.Now()
				}
				if time.Since(waitStart) > 10*time.Second && time.Since(lastWarn) > 10*time.Second {
					lastWarn = time.Now()
					a.log.Warn("apply keeps waiting", slog.Duration("for", time.Since(waitStart)), slog.Any("error", err))
					a.cfg.Stats.update(func(s *FlowCounts) { s.State = "waiting"; s.LastError = err.Error() })
				}
				if !sleep(ctx, ae.RetryAfter) {
					return ctx.Err()
				}
				continue
			}
			a.log.Warn("apply failed; retrying", slog.Any("error", err))
			if !a.pause(ctx, bo, held, err) {
				return ctx.Err()
			}
		}
	}
}

func (a *Applier) recordApplied(txs []*transform.Tx, res ApplyResult, took time.Duration) {
	now := time.Now()
	a.noteApplied(txs)
	last := txs[len(txs)-1]
	a.cfg.Stats.update(func(s *FlowCounts) {
		s.Applied += int64(res.Applied)
		s.Skipped += int64(res.Skipped)
		s.Conflicts += int64(res.Conflicts)
		s.Batches++
		s.LastPosition = transform.Position{LSN: last.CommitLSN, CommitTime: last.CommitTime, Xid: last.Xid}
		s.LastApplied = now
		s.State = "running"
		s.LastError = ""
		s.WaitingSince = time.Time{}
	})
	if a.cfg.OnApplied != nil {
		a.cfg.OnApplied(txs, now)
	}
	if a.cfg.OnBatch != nil {
		a.cfg.OnBatch(txs, res.Applied, took, now)
	}
}
