package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
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

// Hold is an entity whose source table stopped fitting the mapping: its
// changes from Since on are held back (not published, not lost) until the
// mapping or the table is fixed and duplex restarted.
type Hold struct {
	Entity string
	Since  capture.LSN
	Reason string
	At     time.Time
	// Fixed says the table fits the mapping again (set by Holds.Held).
	Fixed bool
}

// Holds keeps the holds of one source durably.
type Holds interface {
	// Held returns the holds, each with Fixed computed against the
	// table as it is now, and the source's current position.
	Held(ctx context.Context) ([]Hold, capture.LSN, error)
	Hold(ctx context.Context, h Hold) error
	Release(ctx context.Context, entity string) error
}

// ProducerConfig configures the capture side of a source.
type ProducerConfig struct {
	Mapping *transform.Mapping
	// MaxInFlight bounds unacknowledged asynchronous publishes (default 256).
	MaxInFlight int
	Logger      *slog.Logger
	Stats       *SourceStats
	// Versions, when set, records the versions of local writes to shared
	// fields before they are published.
	Versions interface {
		Record(ctx context.Context, events []transform.Event) error
		// Lookup sets the recorded versions of the shared fields of
		// copied rows (snapshot, backfill).
		Lookup(ctx context.Context, events []transform.Event) error
	}
	// Holds, when set, keeps entities held because their source table no
	// longer fits the mapping; without it such a change is dead-lettered.
	Holds Holds
}

// SourceStats counts what a producer did; safe for concurrent use.
type SourceStats struct {
	mu sync.Mutex
	SourceCounts
}

// SourceCounts is a snapshot of SourceStats.
type SourceCounts struct {
	Transactions int64
	Events       int64
	ByEntityOp   map[string]int64 // "entity/op"
	DeadLetters  int64
	LastEvent    time.Time
	InFlight     int
	Reconnects   int64
	LastError    string
	// Held maps each held entity to the reason.
	Held map[string]string
}

func (s *SourceStats) update(f func(s *SourceStats)) {
	if s == nil {
		return
	}
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

// Snapshot returns a copy.
func (s *SourceStats) Snapshot() SourceCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.SourceCounts
	c.ByEntityOp = make(map[string]int64, len(s.ByEntityOp))
	for k, v := range s.ByEntityOp {
		c.ByEntityOp[k] = v
	}
	if s.Held != nil {
		c.Held = make(map[string]string, len(s.Held))
		for k, v := range s.Held {
			c.Held[k] = v
		}
	}
	return c
}

// RunCapture runs a source into the stream until ctx ends, starting a new
// session with backoff whenever one fails.
func RunCapture(ctx context.Context, js jetstream.JetStream, src Source, cfg ProducerConfig) error {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With(slog.String("source", src.System()))
	bo := newBackoff()
	for {
		started := time.Now()
		p := newProducer(js, src, cfg, log)
		err := p.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		cfg.Stats.update(func(s *SourceStats) { s.Reconnects++; s.LastError = err.Error() })
		log.Warn("capture session ended; restarting", slog.Any("error", err), slog.Duration("retry_in", wait))
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

func newBackoff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	bo.RandomizationFactor = 0.3
	bo.Reset()
	return bo
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// producer is one capture session's publisher.
type producer struct {
	js      jetstream.JetStream
	src     Source
	cfg     ProducerConfig
	log     *slog.Logger
	subject string

	pending chan pending
	failed  chan struct{}
	// The chunks of a transaction that carry events are numbered anew
	// from 0 (a chunk whose changes all normalize to nothing is not
	// published), so a flow sees every index up to the last one.
	curLSN capture.LSN
	curIdx int
	once   sync.Once
	err    error

	// held are the entities whose changes are held back; redo those read
	// again (leniently, marked Redo) after their fix, until the position
	// redoUntil is durable.
	held      map[string]Hold
	redo      map[string]Hold
	redoUntil capture.LSN
	released  atomic.Bool
}

// pending is a published chunk awaiting its JetStream acknowledgement, or
// a drain marker.
type pending struct {
	fut     jetstream.PubAckFuture
	msgID   string
	last    bool
	endLSN  capture.LSN
	drained chan struct{}
}

func newProducer(js jetstream.JetStream, src Source, cfg ProducerConfig, log *slog.Logger) *producer {
	return &producer{js: js, src: src, cfg: cfg, log: log, subject: Subject(src.System()),
		pending: make(chan pending, cfg.MaxInFlight), failed: make(chan struct{})}
}

func (p *producer) fail(err error) {
	p.once.Do(func() { p.err = err; close(p.failed) })
}

// loadHolds reads the holds at the start of a session: a hold whose table
// fits the mapping again is read again leniently; one that does not keeps
// the source from advancing past it.
func (p *producer) loadHolds(ctx context.Context) error {
	p.held, p.redo = map[string]Hold{}, map[string]Hold{}
	if p.cfg.Holds == nil {
		return nil
	}
	holds, now, err := p.cfg.Holds.Held(ctx)
	if err != nil {
		return fmt.Errorf("read held entities: %w", err)
	}
	var retain capture.LSN
	for _, h := range holds {
		if h.Fixed {
			p.redo[h.Entity] = h
			p.redoUntil = now
			p.log.Info("held entity fits the mapping again: its held changes are read again and applied", slog.String("entity", h.Entity),
				slog.String("since", h.Since.String()), slog.String("until", now.String()))
			continue
		}
		p.held[h.Entity] = h
		if retain == 0 || h.Since < retain {
			retain = h.Since
		}
		p.log.Error("entity held: its changes are not published until the mapping or the table is fixed and duplex restarted",
			slog.String("entity", h.Entity), slog.String("since", h.Since.String()), slog.String("reason", h.Reason))
	}
	if r, ok := p.src.(Retainer); ok {
		r.Retain(retain)
	}
	p.cfg.Stats.update(func(s *SourceStats) {
		s.Held = map[string]string{}
		for e, h := range p.held {
			s.Held[e] = h.Reason
		}
	})
	return nil
}

// hold starts holding an entity whose table no longer fits the mapping.
func (p *producer) hold(ctx context.Context, c *capture.Chunk, se *transform.SchemaError) error {
	h := Hold{Entity: se.Entity, Since: c.Tx.CommitLSN, Reason: se.Error(), At: time.Now().UTC()}
	if err := p.cfg.Holds.Hold(ctx, h); err != nil {
		return fmt.Errorf("hold entity %s: %w", se.Entity, err)
	}
	if r, ok := p.src.(Retainer); ok {
		min := h.Since
		for _, o := range p.held {
			if o.Since < min {
				min = o.Since
			}
		}
		r.Retain(min)
	}
	p.held[se.Entity] = h
	p.log.Error("entity held: its changes are not published until the mapping or the table is fixed and duplex restarted; other entities go on",
		slog.String("entity", se.Entity), slog.String("since", h.Since.String()), slog.String("reason", h.Reason))
	p.cfg.Stats.update(func(s *SourceStats) {
		if s.Held == nil {
			s.Held = map[string]string{}
		}
		s.Held[se.Entity] = h.Reason
	})
	return nil
}

// normalize turns one change into events, holding back the changes of held
// entities and reading again leniently those of fixed ones.
func (p *producer) normalize(ctx context.Context, c *capture.Chunk, index int, ch *capture.Change) ([]transform.Event, error) {
	system := p.src.System()
	if len(p.held) > 0 || len(p.redo) > 0 {
		if e := p.cfg.Mapping.Source(system, ch.QualifiedTable()); e != nil {
			if h, ok := p.held[e.Name]; ok && c.Tx.CommitLSN >= h.Since && !c.Tx.Snapshot {
				return nil, nil
			}
			if h, ok := p.redo[e.Name]; ok && c.Tx.CommitLSN >= h.Since && !c.Tx.Snapshot {
				return p.cfg.Mapping.NormalizeHeld(system, &c.Tx, index, ch)
			}
		}
	}
	evs, err := p.cfg.Mapping.Normalize(system, &c.Tx, index, ch)
	var se *transform.SchemaError
	if errors.As(err, &se) && p.cfg.Holds != nil && !c.Tx.Snapshot {
		if err := p.hold(ctx, c, se); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return evs, err
}

func (p *producer) inRedo(tx *capture.TxInfo) bool {
	if len(p.redo) == 0 || tx.Snapshot || tx.CommitLSN > p.redoUntil {
		return false
	}
	for _, h := range p.redo {
		if tx.CommitLSN >= h.Since {
			return true
		}
	}
	return false
}

// releaseHolds forgets the holds that were read again once everything up
// to redoUntil is durable.
func (p *producer) releaseHolds(ctx context.Context, durable capture.LSN) {
	if len(p.redo) == 0 || durable < p.redoUntil || p.released.Load() {
		return
	}
	for e := range p.redo {
		if err := p.cfg.Holds.Release(ctx, e); err != nil {
			p.log.Warn("release held entity", slog.String("entity", e), slog.Any("error", err))
			return
		}
		p.log.Info("held entity caught up", slog.String("entity", e))
	}
	p.released.Store(true)
}

func (p *producer) run(ctx context.Context) error {
	if err := p.loadHolds(ctx); err != nil {
		return err
	}
	// The tracker outlives the session's context so that Drain can wait
	// for the last acknowledgements after ctx ended.
	tctx, stopTrack := context.WithCancel(context.WithoutCancel(ctx))
	defer stopTrack()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.track(tctx)
	}()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-p.failed:
			cancel()
		case <-sctx.Done():
		}
	}()
	err := p.src.Stream(sctx, p)
	select {
	case <-p.failed:
		err = p.err
	default:
	}
	cancel()
	stopTrack()
	wg.Wait()
	return err
}

// track waits for acknowledgements in publish order and confirms the end
// LSN of each transaction whose every chunk is stored.
func (p *producer) track(ctx context.Context) {
	for {
		var e pending
		select {
		case <-ctx.Done():
			return
		case e = <-p.pending:
		}
		if e.drained != nil {
			close(e.drained)
			continue
		}
		if e.fut != nil {
			select {
			case <-ctx.Done():
				return
			case <-e.fut.Ok():
			case err := <-e.fut.Err():
				p.fail(fmt.Errorf("publish %s: %w", e.msgID, err))
				return
			}
		}
		p.cfg.Stats.update(func(s *SourceStats) { s.InFlight = len(p.pending) })
		if e.last {
			p.src.Confirm(e.endLSN)
			p.releaseHolds(ctx, e.endLSN)
		}
	}
}

// Chunk implements capture.Handler.
func (p *producer) Chunk(ctx context.Context, c *capture.Chunk) error {
	select {
	case <-p.failed:
		return p.err
	default:
	}
	system := p.src.System()
	if c.Tx.CommitLSN != p.curLSN || c.Index == 0 {
		p.curLSN, p.curIdx = c.Tx.CommitLSN, 0
	}
	tx := &transform.Tx{Version: transform.SchemaVersion, Source: system, CommitLSN: c.Tx.CommitLSN, EndLSN: c.Tx.EndLSN,
		CommitTime: c.Tx.CommitTime, Xid: c.Tx.Xid, Last: c.Last, Snapshot: c.Tx.Snapshot, Events: make([]transform.Event, 0, len(c.Changes))}
	for i := range c.Changes {
		ch := &c.Changes[i]
		evs, err := p.normalize(ctx, c, c.First+i, ch)
		if err != nil {
			if err := p.deadLetter(ctx, c, c.First+i, ch, err); err != nil {
				return err
			}
			continue
		}
		tx.Events = append(tx.Events, evs...)
		p.cfg.Stats.update(func(s *SourceStats) {
			if s.ByEntityOp == nil {
				s.ByEntityOp = map[string]int64{}
			}
			for _, e := range evs {
				s.ByEntityOp[e.Entity+"/"+string(e.Op)]++
			}
			s.Events += int64(len(evs))
			s.LastEvent = time.Now()
			if c.Last {
				s.Transactions++
			}
		})
	}
	if p.cfg.Versions != nil && !c.Tx.Applied && !c.Tx.Snapshot && len(tx.Events) > 0 {
		if err := p.cfg.Versions.Record(ctx, tx.Events); err != nil {
			return err
		}
	}
	if p.cfg.Versions != nil && c.Tx.Snapshot && len(tx.Events) > 0 {
		if err := p.cfg.Versions.Lookup(ctx, tx.Events); err != nil {
			return err
		}
	}
	// Every chunk of a transaction read again for a fixed entity is
	// published anew (its own message ids), whatever it carries, so the
	// flow sees whole transactions.
	tx.Redo = p.inRedo(&c.Tx)
	e := pending{last: c.Last, endLSN: c.Tx.EndLSN}
	// Publish a chunk with events, and the last chunk of a transaction of
	// which something was published; a transaction that produced no event
	// (duplex's own applies, unmapped changes) puts nothing on the bus.
	if c.Tx.Snapshot {
		// Snapshot chunks stand alone and keep the snapshot's numbering.
		if len(tx.Events) == 0 {
			goto queue
		}
		tx.Chunk = c.Index
		e.msgID = tx.MsgID()
	} else if len(tx.Events) > 0 || (c.Last && p.curIdx > 0) {
		tx.Chunk = p.curIdx
		p.curIdx++
		e.msgID = tx.MsgID()
	}
	if e.msgID != "" {
		data, err := encodeTx(tx)
		if err != nil {
			return fmt.Errorf("encode %s: %w", e.msgID, err)
		}
		msg := nats.NewMsg(p.subject)
		msg.Data = data
		fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.msgID), jetstream.WithStallWait(30*time.Second))
		if err != nil {
			return fmt.Errorf("publish %s: %w", e.msgID, err)
		}
		e.fut = fut
	}
queue:
	if c.Last {
		p.curIdx = 0
	}
	select {
	case p.pending <- e:
		return nil
	case <-p.failed:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Drain implements capture.Handler.
func (p *producer) Drain(ctx context.Context) {
	d := pending{drained: make(chan struct{})}
	select {
	case p.pending <- d:
	case <-ctx.Done():
		return
	case <-p.failed:
		return
	}
	select {
	case <-d.drained:
	case <-ctx.Done():
	case <-p.failed:
	}
}

func (p *producer) deadLetter(ctx context.Context, c *capture.Chunk, index int, ch *capture.Change, cause error) error {
	system := p.src.System()
	dl := &DeadLetter{Flow: "capture-" + system, Stage: "capture", Source: system, Error: cause.Error(), FailedAt: time.Now().UTC(), Change: ch,
		Position: transform.Position{LSN: c.Tx.CommitLSN, CommitTime: c.Tx.CommitTime, Xid: c.Tx.Xid, Index: index}}
	var fe *transform.FieldError
	if errors.As(cause, &fe) {
		dl.Entity, dl.Key = fe.Entity, fe.Key
	} else if e := p.cfg.Mapping.Source(system, ch.QualifiedTable()); e != nil {
		dl.Entity = e.Name
	}
	p.log.Error("change dead-lettered at capture", slog.String("table", ch.QualifiedTable()), slog.String("lsn", c.Tx.CommitLSN.String()), slog.Any("error", cause))
	p.cfg.Stats.update(func(s *SourceStats) { s.DeadLetters++ })
	id := fmt.Sprintf("dlq:capture:%s:%s:%d", system, c.Tx.CommitLSN, index)
	return publishDeadLetter(ctx, p.js, DLQSubject("capture-"+system), id, dl)
}
