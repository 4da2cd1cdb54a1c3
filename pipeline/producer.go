package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

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
type SourceStats = Stats[SourceCounts]

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
	// Stopped is set when a session failed with a permanent error
	// (LastError): the capture of this source stopped for good.
	Stopped bool
	// Held maps each held entity to the reason.
	Held map[string]string
}

func (c SourceCounts) clone() SourceCounts {
	m := make(map[string]int64, len(c.ByEntityOp))
	maps.Copy(m, c.ByEntityOp)
	c.ByEntityOp = m
	c.Held = maps.Clone(c.Held)
	return c
}

// RunCapture runs a source into the stream until ctx ends, starting a new
// session with backoff whenever one fails. A session that fails with a
// permanent error (KindOf; for example a slot that is not the one duplex
// created) stops this source's capture for good: RunCapture logs the
// error, records it in the stats (LastError, Stopped) and returns nil,
// while the other sources and flows go on.
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
		if KindOf(err) == Permanent {
			cfg.Stats.update(func(s *SourceCounts) { s.Stopped = true; s.LastError = err.Error() })
			log.Error("capture stopped: the error is permanent, so it is not retried", slog.Any("error", err))
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		cfg.Stats.update(func(s *SourceCounts) { s.Reconnects++; s.LastError = err.Error() })
		log.Warn("capture session ended; restarting", slog.Any("error", err), slog.Duration("retry_in", wait))
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// producer is one capture session's publisher.
// The producer is the handler every source hands its chunks to.
var _ capture.Handler = (*producer)(nil)

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
	go func() {
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
		p.cfg.Stats.update(func(s *SourceCounts) { s.InFlight = len(p.pending) })
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
		p.cfg.Stats.update(func(s *SourceCounts) {
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
		data, err := json.Marshal(tx)
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

// Drain implements capture.Handler: nil once every chunk handed on before
// it was acknowledged by JetStream; the publish failure that ended the
// session, or the context's error, otherwise.
func (p *producer) Drain(ctx context.Context) error {
	d := pending{drained: make(chan struct{})}
	select {
	case p.pending <- d:
	case <-ctx.Done():
		return fmt.Errorf("drain %s: %w", p.src.System(), ctx.Err())
	case <-p.failed:
		return p.err
	}
	select {
	case <-d.drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain %s: %w", p.src.System(), ctx.Err())
	case <-p.failed:
		return p.err
	}
}
