package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// ApplyResult counts what an Apply did.
type ApplyResult struct {
	Applied int // events written
	Skipped int // events already applied (stale or repeated)
	// Conflicts counts writes of shared fields that lost to a later
	// write (last writer wins, field by field).
	Conflicts int
}

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
	// AckWait of the consumer (default 30s).
	AckWait time.Duration
	Logger  *slog.Logger
	Stats   *FlowStats
	// OnApplied, when set, is called after each committed batch.
	OnApplied func(txs []*transform.Tx, committed time.Time)
}

// Validate checks the configuration.
func (c *ApplierConfig) Validate() error {
	if c.Flow == "" || c.Source == "" || c.Sink == nil {
		return errors.New("flow: name, source and sink are required")
	}
	return nil
}

// FlowStats describes a flow; safe for concurrent use.
type FlowStats struct {
	mu sync.Mutex
	FlowCounts
}

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
}

func (s *FlowStats) update(f func(s *FlowStats)) {
	if s == nil {
		return
	}
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

// Snapshot returns a copy.
func (s *FlowStats) Snapshot() FlowCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.FlowCounts
}

// Applier runs one flow from the stream into a sink.
type Applier struct {
	js  jetstream.JetStream
	cfg ApplierConfig
	log *slog.Logger
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
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Stats == nil {
		cfg.Stats = &FlowStats{}
	}
	return &Applier{js: js, cfg: cfg, log: cfg.Logger.With(slog.String("flow", cfg.Flow))}, nil
}

// Stats returns the flow's statistics.
func (a *Applier) Stats() *FlowStats { return a.cfg.Stats }

// Run applies the flow until ctx ends, restarting with backoff after any
// failure of NATS. The batch in hand when ctx ends is finished first.
func (a *Applier) Run(ctx context.Context) error {
	bo := newBackoff()
	for {
		started := time.Now()
		a.cfg.Stats.update(func(s *FlowStats) { s.State = "running" })
		err := a.session(ctx)
		if ctx.Err() != nil {
			a.cfg.Stats.update(func(s *FlowStats) { s.State = "stopped" })
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		a.cfg.Stats.update(func(s *FlowStats) { s.State = "retrying"; s.LastError = err.Error() })
		a.log.Warn("flow session ended; restarting", slog.Any("error", err), slog.Duration("retry_in", wait))
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// ConsumerConfig is the durable consumer of a flow, starting at seq (0 for
// the start of the stream).
func consumerConfig(cfg ApplierConfig, seq uint64) jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.Flow,
		Description:   "duplex flow " + cfg.Flow,
		FilterSubject: SourceFilter(cfg.Source),
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if seq > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = seq
	}
	return cc
}

// ensureConsumer returns the flow's consumer. A consumer left with
// delivered but unacknowledged messages (the previous process died) is
// rewound to its acknowledgement floor, so they come again at once instead
// of after AckWait.
func (a *Applier) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := a.js.Consumer(ctx, StreamName, a.cfg.Flow)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = a.js.CreateConsumer(ctx, StreamName, consumerConfig(a.cfg, 0))
		if err != nil {
			return nil, fmt.Errorf("flow %s: create consumer: %w", a.cfg.Flow, err)
		}
		return cons, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
	}
	info := cons.CachedInfo()
	if info.NumAckPending == 0 && info.Delivered.Stream == info.AckFloor.Stream {
		return cons, nil
	}
	return resetConsumer(ctx, a.js, a.cfg, info.AckFloor.Stream+1)
}

func resetConsumer(ctx context.Context, js jetstream.JetStream, cfg ApplierConfig, seq uint64) (jetstream.Consumer, error) {
	if err := js.DeleteConsumer(ctx, StreamName, cfg.Flow); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("flow %s: delete consumer: %w", cfg.Flow, err)
	}
	cons, err := js.CreateConsumer(ctx, StreamName, consumerConfig(cfg, seq))
	if err != nil {
		return nil, fmt.Errorf("flow %s: create consumer at %d: %w", cfg.Flow, seq, err)
	}
	return cons, nil
}

// ResetFlow points a flow's durable consumer at stream sequence seq (1 =
// the first retained message). The flow must not be running.
func ResetFlow(ctx context.Context, js jetstream.JetStream, flow, source string, seq uint64) error {
	_, err := resetConsumer(ctx, js, ApplierConfig{Flow: flow, Source: source, AckWait: 30 * time.Second}, seq)
	return err
}

func (a *Applier) session(ctx context.Context) error {
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		return err
	}
	asm := &assembler{}
	for ctx.Err() == nil {
		msgs, err := a.fetch(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, m := range msgs {
			var tx transform.Tx
			if err := json.Unmarshal(m.Data(), &tx); err != nil {
				if err := a.deadLetterRaw(ctx, m, err); err != nil {
					return err
				}
				asm.skip(m)
				continue
			}
			asm.add(m, &tx)
		}
		ready, ack := asm.take()
		if len(ready) > 0 {
			if err := a.applyAll(ctx, ready, asm.held); err != nil {
				return err
			}
		}
		if ack != nil {
			if err := ack.Ack(); err != nil {
				return fmt.Errorf("flow %s: ack: %w", a.cfg.Flow, err)
			}
			md, _ := ack.Metadata()
			if md != nil {
				a.cfg.Stats.update(func(s *FlowStats) { s.StreamSeq = md.Sequence.Stream })
			}
		}
	}
	return nil
}

// fetch returns what is available now, or waits up to a second for the
// first message.
func (a *Applier) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	collect := func(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
		if err != nil {
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		var out []jetstream.Msg
		for m := range b.Messages() {
			out = append(out, m)
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return out, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		return out, nil
	}
	// What is there now, at most Batch messages or 8 MiB: a backlog of
	// large messages must not flood the connection.
	msgs, err := collect(cons.Fetch(a.cfg.Batch, jetstream.FetchMaxBytes(8<<20), jetstream.FetchMaxWait(5*time.Millisecond)))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	msgs, err = collect(cons.Fetch(1, jetstream.FetchMaxWait(time.Second)))
	if err != nil || len(msgs) == 0 {
		return msgs, err
	}
	more, err := collect(cons.Fetch(a.cfg.Batch-1, jetstream.FetchMaxBytes(8<<20), jetstream.FetchMaxWait(5*time.Millisecond)))
	return append(msgs, more...), err
}

// readyTx is a complete source transaction and the messages it came in.
type readyTx struct {
	tx     *transform.Tx
	chunks map[int]*transform.Tx
	last   int // index of the last chunk, -1 until seen
	seqs   []uint64
	first  uint64
}

func (r *readyTx) complete() bool {
	if r.last < 0 {
		return false
	}
	for i := 0; i <= r.last; i++ {
		if r.chunks[i] == nil {
			return false
		}
	}
	return true
}

// assembler rebuilds whole transactions from chunk messages, in stream
// order, and says which message may be acknowledged (ack-all) once the
// ready ones are applied.
type assembler struct {
	queue []*readyTx
	held  []jetstream.Msg // delivered, not yet acknowledged
}

func seqOf(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

func (a *assembler) skip(m jetstream.Msg) { a.held = append(a.held, m) }

func (a *assembler) add(m jetstream.Msg, tx *transform.Tx) {
	a.held = append(a.held, m)
	seq := seqOf(m)
	var r *readyTx
	for _, q := range a.queue {
		if q.tx.CommitLSN == tx.CommitLSN && q.tx.Source == tx.Source && q.tx.Snapshot == tx.Snapshot && (!tx.Snapshot || q.tx.Chunk == tx.Chunk) {
			r = q
			break
		}
	}
	if r == nil {
		r = &readyTx{tx: tx, chunks: map[int]*transform.Tx{}, last: -1, first: seq}
		a.queue = append(a.queue, r)
	}
	idx := tx.Chunk
	if tx.Snapshot {
		idx = 0 // a snapshot chunk is a whole of its own
	}
	r.chunks[idx] = tx
	r.seqs = append(r.seqs, seq)
	if tx.Last {
		r.last = idx
	}
}

// take returns the complete transactions at the head of the queue and the
// message to acknowledge after they are applied.
func (a *assembler) take() ([]*readyTx, jetstream.Msg) {
	n := 0
	for n < len(a.queue) && a.queue[n].complete() {
		n++
	}
	ready := a.queue[:n]
	a.queue = append([]*readyTx(nil), a.queue[n:]...)
	for _, r := range ready {
		if len(r.chunks) > 1 {
			all := &transform.Tx{}
			*all = *r.chunks[r.last]
			all.Chunk = 0
			all.Events = nil
			for i := 0; i <= r.last; i++ {
				all.Events = append(all.Events, r.chunks[i].Events...)
			}
			r.tx = all
		} else {
			r.tx = r.chunks[r.last]
		}
	}
	limit := ^uint64(0)
	if len(a.queue) > 0 {
		limit = a.queue[0].first
	}
	var ack jetstream.Msg
	i := 0
	for i < len(a.held) && seqOf(a.held[i]) < limit {
		ack = a.held[i]
		i++
	}
	a.held = append([]jetstream.Msg(nil), a.held[i:]...)
	return ready, ack
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
	var waitStart, lastWarn time.Time
	for {
		if len(txs) == 0 {
			return nil
		}
		started := time.Now()
		res, err := a.cfg.Sink.Apply(context.WithoutCancel(ctx), txs)
		if err == nil {
			now := time.Now()
			last := txs[len(txs)-1]
			a.cfg.Stats.update(func(s *FlowStats) {
				s.Applied += int64(res.Applied)
				s.Skipped += int64(res.Skipped)
				s.Conflicts += int64(res.Conflicts)
				s.Batches++
				s.LastPosition = transform.Position{LSN: last.CommitLSN, CommitTime: last.CommitTime, Xid: last.Xid}
				s.LastApplied = now
				s.State = "running"
				s.LastError = ""
			})
			if a.cfg.OnApplied != nil {
				a.cfg.OnApplied(txs, now)
			}
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
					a.cfg.Stats.update(func(s *FlowStats) { s.State = "waiting"; s.LastError = err.Error() })
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

// pause waits before a retry, keeping the held messages from being
// redelivered meanwhile.
func (a *Applier) pause(ctx context.Context, bo interface{ NextBackOff() time.Duration }, held []jetstream.Msg, err error) bool {
	a.cfg.Stats.update(func(s *FlowStats) { s.State = "retrying"; s.LastError = err.Error() })
	for _, m := range held {
		_ = m.InProgress()
	}
	return sleep(ctx, bo.NextBackOff())
}

func eventCount(txs []*transform.Tx) int {
	n := 0
	for _, t := range txs {
		n += len(t.Events)
	}
	return n
}

func withoutEvent(txs []*transform.Tx, ti, ei int) []*transform.Tx {
	out := append([]*transform.Tx(nil), txs...)
	t := *out[ti]
	t.Events = append(append([]transform.Event(nil), t.Events[:ei]...), t.Events[ei+1:]...)
	out[ti] = &t
	return out
}

func withoutEvents(txs []*transform.Tx, ti int) []*transform.Tx {
	out := append([]*transform.Tx(nil), txs...)
	t := *out[ti]
	t.Events = nil
	out[ti] = &t
	return out
}

func (a *Applier) deadLetter(ctx context.Context, tx *transform.Tx, ei int, cause error, attempts int) error {
	ev := tx.Events[ei]
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: ev.Source, Entity: ev.Entity, Key: ev.Key, Position: ev.Pos,
		Error: cause.Error(), Attempts: attempts, FailedAt: time.Now().UTC(), Event: &ev}
	a.log.Error("event dead-lettered", slog.String("event", ev.ID), slog.String("entity", ev.Entity), slog.String("key", ev.Key), slog.Any("error", cause))
	a.cfg.Stats.update(func(s *FlowStats) { s.DeadLetters++ })
	return publishDeadLetter(ctx, a.js, DLQSubject(a.cfg.Flow), "dlq:"+a.cfg.Flow+":"+ev.ID, dl)
}

func (a *Applier) deadLetterTx(ctx context.Context, tx *transform.Tx, cause error) error {
	for i := range tx.Events {
		if err := a.deadLetter(ctx, tx, i, fmt.Errorf("transaction %s (xid %d) failed as a whole: %w", tx.CommitLSN, tx.Xid, cause), 1); err != nil {
			return err
		}
	}
	return nil
}

func (a *Applier) deadLetterRaw(ctx context.Context, m jetstream.Msg, cause error) error {
	seq := seqOf(m)
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: a.cfg.Source, Error: "undecodable message: " + cause.Error(), FailedAt: time.Now().UTC(), StreamSeq: seq}
	a.log.Error("undecodable message dead-lettered", slog.Uint64("stream_seq", seq), slog.Any("error", cause))
	return publishDeadLetter(ctx, a.js, DLQSubject(a.cfg.Flow), fmt.Sprintf("dlq:%s:seq:%d", a.cfg.Flow, seq), dl)
}
