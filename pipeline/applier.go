package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
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
	// LargeTxChunks is the number of chunks from which a source
	// transaction is applied part by part as it arrives, inside one target
	// transaction, instead of being held whole (default 8, about 4,000
	// changes); it needs a sink that implements PartSink.
	LargeTxChunks int
	Logger        *slog.Logger
	Stats         *FlowStats
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
	// Errors counts failed apply attempts by kind (transient, waiting,
	// permanent).
	Errors map[string]int64
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
	c := s.FlowCounts
	c.Errors = make(map[string]int64, len(s.Errors))
	for k, v := range s.Errors {
		c.Errors[k] = v
	}
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
		excluded: map[string]bool{}, waits: map[string]int{}}, nil
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

// ResetFlowFrom points a flow's durable consumer at stream sequence seq,
// or (seq 0) at the first message stored at or after since. The flow must
// not be running.
func ResetFlowFrom(ctx context.Context, js jetstream.JetStream, flow, source string, seq uint64, since time.Time) error {
	if seq > 0 || since.IsZero() {
		return ResetFlow(ctx, js, flow, source, max(seq, 1))
	}
	cfg := ApplierConfig{Flow: flow, Source: source, AckWait: 30 * time.Second}
	if err := js.DeleteConsumer(ctx, StreamName, flow); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("flow %s: delete consumer: %w", flow, err)
	}
	cc := consumerConfig(cfg, 0)
	cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	if _, err := js.CreateConsumer(ctx, StreamName, cc); err != nil {
		return fmt.Errorf("flow %s: create consumer at %s: %w", flow, since.Format(time.RFC3339), err)
	}
	return nil
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
	parts, _ := a.cfg.Sink.(PartSink)
	var large *largeTx
	defer func() {
		if large != nil {
			large.sess.Rollback(ctx)
		}
	}()
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
			if err := decodeTx(m.Data(), &tx); err != nil {
				if err := a.deadLetterRaw(ctx, m, err); err != nil {
					return err
				}
				asm.skip(m)
				continue
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
				if large, err = a.beginLarge(ctx, parts, asm); err != nil {
					return err
				}
			}
		}
		if large != nil {
			done, err := a.applyParts(ctx, large)
			if err != nil {
				return err
			}
			if !done {
				large.keepAlive(a.js, a.cfg.AckWait)
				continue
			}
			if err := a.ack(large.lastMsg); err != nil {
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

// applyReady applies the complete transactions at the head of the
// assembler's queue and acknowledges what they came in.
func (a *Applier) applyReady(ctx context.Context, asm *assembler) error {
	ready, ack := asm.take()
	if len(ready) > 0 {
		if err := a.applyAll(ctx, ready, asm.held); err != nil {
			return err
		}
	}
	if ack != nil {
		return a.ack(ack)
	}
	return nil
}

func (a *Applier) ack(m jetstream.Msg) error {
	if err := m.Ack(); err != nil {
		return fmt.Errorf("flow %s: ack: %w", a.cfg.Flow, err)
	}
	if md, _ := m.Metadata(); md != nil {
		a.cfg.Stats.update(func(s *FlowStats) { s.StreamSeq = md.Sequence.Stream })
	}
	return nil
}

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
	l := &largeTx{sess: sess, source: r.tx.Source, lsn: r.tx.CommitLSN, redo: r.tx.Redo, early: r.chunks, progress: time.Now(), started: time.Now()}
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
	switch {
	case kind == Permanent && blame, kind == Waiting && blame && a.waits[part.Events[ae.Event].ID]+1 >= a.cfg.MaxWaitAttempts:
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

// tailChunks is the number of chunks received of the last transaction in
// the queue when it is still incomplete (0 otherwise): chunks of a source
// transaction are contiguous in the stream, so only the last one can be.
func (a *assembler) tailChunks() int {
	if len(a.queue) == 0 {
		return 0
	}
	r := a.queue[len(a.queue)-1]
	if r.tx.Snapshot || r.complete() {
		return 0
	}
	return len(r.chunks)
}

func (a *assembler) add(m jetstream.Msg, tx *transform.Tx) {
	a.held = append(a.held, m)
	seq := seqOf(m)
	var r *readyTx
	for _, q := range a.queue {
		if q.tx.CommitLSN == tx.CommitLSN && q.tx.Source == tx.Source && q.tx.Snapshot == tx.Snapshot && q.tx.Redo == tx.Redo && (!tx.Snapshot || q.tx.Chunk == tx.Chunk) {
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

func (a *Applier) countError(k Kind) {
	a.cfg.Stats.update(func(s *FlowStats) {
		if s.Errors == nil {
			s.Errors = map[string]int64{}
		}
		s.Errors[k.String()]++
	})
}

func (a *Applier) recordApplied(txs []*transform.Tx, res ApplyResult, took time.Duration) {
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
	if a.cfg.OnBatch != nil {
		a.cfg.OnBatch(txs, res.Applied, took, now)
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
