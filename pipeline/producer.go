package pipeline

import (
	"context"
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
	// fields: collected (Add) as they are read, written (Flush) at least
	// every versionsFlushEvery and before the slot is confirmed past them.
	// Used from two goroutines.
	Versions interface {
		// Add collects the versions the events carry and returns how
		// many are pending.
		Add(events []transform.Event) int
		// Flush writes what Add collected.
		Flush(ctx context.Context) error
		// Lookup sets the recorded versions of the shared fields of
		// copied rows (snapshot, backfill); snapshot names the exported
		// snapshot the rows were read in ("" when none).
		Lookup(ctx context.Context, snapshot string, events []transform.Event) error
	}
	// PII, when set, seals the personal fields (pii: true) of every event
	// before it is published (after the versions of shared fields were
	// recorded from their clear values).
	PII FieldCipher
	// Holds, when set, keeps entities held because their source table no
	// longer fits the mapping; without it such a change is dead-lettered.
	Holds Holds
	// MaxMessageBytes bounds the encoded size of one message (default and
	// upper bound: the server's max payload less 4 KiB for headers).
	MaxMessageBytes int
	// MaxChangeBytes is the largest single event (encoded) carried, through
	// the object store when it does not fit in a message (default 64 MiB);
	// a larger one is dead-lettered at capture.
	MaxChangeBytes int
	// Room, when set, is asked before each publish and returns once the
	// stream has room (Retention): a stream full of unapplied changes
	// makes publishing wait, and the slot keep its WAL, instead of
	// JetStream refusing messages.
	Room interface {
		WaitForRoom(ctx context.Context) error
	}
	// Signer, when set, signs every message published to DUPLEX with the
	// source's key (sign.go); flows that verify refuse unsigned ones.
	// duplex run always sets it.
	Signer *Signer
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
	// StreamFull counts capture sessions that ended because JetStream
	// refused a message for lack of room (stream or store full).
	StreamFull int64
	// Stopped is set when a session failed with a permanent error
	// (LastError): the capture of this source stopped for good.
	Stopped bool
	// Held maps each held entity to the reason.
	Held map[string]string
	// Unmapped counts changes of tables no entity maps ("schema.table"),
	// captured and not replicated (unmapped.go).
	Unmapped map[string]int64
	// OwnershipViolations counts local changes of this source to what
	// another system owns, by "entity/kind": kind "insert" (a row made,
	// or re-keyed, where the entity's key is owned elsewhere: refused and
	// dead-lettered) or "field" (a field another system owns edited).
	OwnershipViolations map[string]int64
}

// Clone returns a copy that shares no map with c.
func (c SourceCounts) Clone() SourceCounts {
	m := make(map[string]int64, len(c.ByEntityOp))
	maps.Copy(m, c.ByEntityOp)
	c.ByEntityOp = m
	c.Held = maps.Clone(c.Held)
	c.Unmapped = maps.Clone(c.Unmapped)
	c.OwnershipViolations = maps.Clone(c.OwnershipViolations)
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
		// A stream full of unapplied changes: no session is opened (the
		// slot keeps the WAL) until the flows applied enough.
		if cfg.Room != nil && cfg.Room.WaitForRoom(ctx) != nil {
			return nil
		}
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
		full := IsStreamFull(err)
		cfg.Stats.update(func(s *SourceCounts) {
			s.Reconnects++
			s.LastError = err.Error()
			if full {
				s.StreamFull++
			}
		})
		if full {
			log.Warn("stream full: JetStream refused a message for lack of room; the slot keeps the WAL and publishing starts again from it",
				slog.Any("error", err), slog.Duration("retry_in", wait))
		} else {
			log.Warn("capture session ended; restarting", slog.Any("error", err), slog.Duration("retry_in", wait))
		}
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
	// lastPub is the commit LSN of the last transaction this session put
	// on the bus, txPrev the one before the current transaction: each of
	// its messages carries it (transform.Tx.PrevLSN).
	lastPub capture.LSN
	txPrev  capture.LSN
	once    sync.Once
	err     error

	// held are the entities whose changes are held back; redo those read
	// again (leniently, marked Redo) after their fix, until the position
	// redoUntil is durable.
	held      map[string]Hold
	redo      map[string]Hold
	redoUntil capture.LSN
	released  atomic.Bool
	// redone is Holding.Redone; resent the entities of which a change
	// sent again was left out in this session (logged once).
	redone map[string]capture.LSN
	resent map[string]bool
	// heldEvents are the events the held changes of the current chunk
	// would make (read leniently), for the version recorder only.
	heldEvents []transform.Event

	// unmappedSeen are the unmapped tables logged in this session.
	unmappedSeen map[string]bool

	large largeStore
}

// pending is a published chunk awaiting its JetStream acknowledgement, or
// a drain marker.
type pending struct {
	fut   jetstream.PubAckFuture
	msgID string
	size  int
	refs  []eventRef // what it carries, to dead-letter if refused
	// hdr is the message's transaction without its events, published in
	// its place when the server refuses it for good (chunk numbering and
	// the PrevLSN chain stay whole; see publishStripped).
	hdr     *transform.Tx
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
				p.keepVersions(c, index, ch)
				return nil, nil
			}
			if h, ok := p.redo[e.Name]; ok && c.Tx.CommitLSN >= h.Since && !c.Tx.Snapshot {
				return p.cfg.Mapping.NormalizeHeld(system, &c.Tx, index, ch)
			}
		}
	}
	evs, err := p.cfg.Mapping.Normalize(system, &c.Tx, index, ch)
	if len(evs) == 0 && err == nil {
		// Nothing to publish: perhaps a table no entity maps.
		p.reportUnmapped(ch)
	}
	var se *transform.SchemaError
	if errors.As(err, &se) && p.cfg.Holds != nil && !c.Tx.Snapshot {
		if p.handledBefore(c, se) {
			return nil, nil
		}
		if err := p.hold(ctx, c, se); err != nil {
			return nil, err
		}
		p.keepVersions(c, index, ch)
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

// maxPendingVersions bounds the field versions the capture collects
// (VersionRecorder.Add) before it writes them itself rather than waiting
// for the tracker.
const maxPendingVersions = 10000

// versionsFlushEvery bounds how long the versions of local writes stay
// collected while the tracker has no transaction to confirm: while a
// message waits for room in the stream or for its acknowledgement, or a
// long transaction is read. The sink into the same database waits for
// them meanwhile, and the flows that make room in the stream may be the
// ones waiting. Recording a version before its transaction is published
// is safe (the write is committed); only confirming before it is not.
const versionsFlushEvery = 100 * time.Millisecond

// track waits for acknowledgements in publish order and confirms the end
// LSN of each transaction whose every chunk is stored.
func (p *producer) track(ctx context.Context) {
	var tick <-chan time.Time
	if p.cfg.Versions != nil {
		t := time.NewTicker(versionsFlushEvery)
		defer t.Stop()
		tick = t.C
	}
	flush := func() bool {
		if err := p.cfg.Versions.Flush(ctx); err != nil {
			p.fail(err)
			return false
		}
		return true
	}
	// The end LSN of the last transaction whose every chunk is stored,
	// not yet confirmed (0: none). Confirming is batched (confirmEvery).
	var toConfirm capture.LSN
	var confirmed time.Time
	confirm := func() bool {
		if toConfirm == 0 {
			return true
		}
		if p.cfg.Versions != nil {
			// The versions of the local writes of every transaction
			// handed on so far, this one's included, are recorded
			// before the slot may move past it.
			if !flush() {
				return false
			}
		}
		p.src.Confirm(toConfirm)
		p.releaseHolds(ctx, toConfirm)
		toConfirm, confirmed = 0, time.Now()
		return true
	}
	for {
		var e pending
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if !flush() || !confirm() {
				return
			}
			continue
		case e = <-p.pending:
		}
		if e.drained != nil {
			if !confirm() {
				return
			}
			close(e.drained)
			continue
		}
		if e.fut != nil {
			var err error
			failed := false
		ack:
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick:
					if !flush() {
						return
					}
				case <-e.fut.Ok():
					break ack
				case err = <-e.fut.Err():
					failed = true
					break ack
				}
			}
			if failed {
				if !permanentPublish(err) {
					p.fail(fmt.Errorf("publish %s: %w", e.msgID, err))
					return
				}
				// Publishing it again can never succeed: dead-letter what
				// it carried, visibly, and go on.
				if err := p.refusedRefs(ctx, e.refs, &PublishRefused{MsgID: e.msgID, Size: e.size, Err: err}); err != nil {
					p.fail(err)
					return
				}
				if err := p.publishStripped(ctx, e.hdr); err != nil {
					p.fail(err)
					return
				}
			}
		}
		p.cfg.Stats.update(func(s *SourceCounts) { s.InFlight = len(p.pending) })
		if e.last {
			toConfirm = e.endLSN
		}
		if toConfirm != 0 && (len(p.pending) == 0 || time.Since(confirmed) >= confirmEvery) {
			if !confirm() {
				return
			}
		}
	}
}

// confirmEvery is how often, at most, the tracker confirms while more
// acknowledged transactions wait behind the one it just took. Confirming
// records the pending field versions first: one statement against the
// source, which the tracker made once per transaction with local writes
// of shared fields, while the acknowledgements behind it waited and the
// capture, once MaxInFlight were unconfirmed, waited too. Batched, a
// flood of small transactions costs one statement per confirmEvery. The
// slot's position is reported to the server every StatusInterval anyway;
// nothing is confirmed before its versions are recorded.
const confirmEvery = 20 * time.Millisecond

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
		if !c.Tx.Snapshot {
			p.txPrev = p.lastPub
		}
	}
	tx := &transform.Tx{Version: transform.SchemaVersion, Source: system, CommitLSN: c.Tx.CommitLSN, EndLSN: c.Tx.EndLSN,
		CommitTime: c.Tx.CommitTime, Xid: c.Tx.Xid, Last: c.Last, Snapshot: c.Tx.Snapshot, Events: make([]transform.Event, 0, len(c.Changes))}
	if !c.Tx.Snapshot {
		tx.PrevLSN = p.txPrev
	}
	from := make([]int, 0, len(c.Changes)) // the change each event comes from
	p.heldEvents = p.heldEvents[:0]
	for i := range c.Changes {
		ch := &c.Changes[i]
		evs, err := p.normalize(ctx, c, c.First+i, ch)
		var oe *transform.OwnershipError
		if errors.As(err, &oe) && oe.Op == "insert" && i > 0 && p.rowMoved(&c.Changes[i-1], ch) {
			// A row moving between partitions arrives as a DELETE and an
			// INSERT of the same key: not a new row.
			moved := *ch
			moved.Op = capture.Update
			evs, err = p.normalize(ctx, c, c.First+i, &moved)
		}
		if errors.As(err, &oe) {
			p.countViolation(oe.Entity, "insert", 1)
		}
		if err != nil {
			if err := p.deadLetter(ctx, c, c.First+i, ch, err); err != nil {
				return err
			}
			continue
		}
		p.reportViolations(c, evs)
		tx.Events = append(tx.Events, evs...)
		for range evs {
			from = append(from, i)
		}
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
	if rec := p.versionsToRecord(tx.Events); p.cfg.Versions != nil && !c.Tx.Applied && !c.Tx.Snapshot && len(rec) > 0 {
		// Written by the tracker before it confirms this transaction
		// (or here, when many are pending).
		if p.cfg.Versions.Add(rec) >= maxPendingVersions {
			if err := p.cfg.Versions.Flush(ctx); err != nil {
				return err
			}
		}
	}
	if p.cfg.Versions != nil && c.Tx.Snapshot && len(tx.Events) > 0 {
		if err := p.cfg.Versions.Lookup(ctx, c.Tx.SnapshotName, tx.Events); err != nil {
			return err
		}
	}
	if p.cfg.PII != nil {
		for i := range tx.Events {
			if err := p.cfg.PII.Seal(&tx.Events[i]); err != nil {
				return fmt.Errorf("capture %s: %w", system, err)
			}
		}
	}
	// Every chunk of a transaction read again for a fixed entity is
	// published anew (its own message ids), whatever it carries, so the
	// flow sees whole transactions.
	tx.Redo = p.inRedo(&c.Tx)
	// Publish a chunk with events, and the last chunk of a transaction of
	// which something was published; a transaction that produced no event
	// (duplex's own applies, unmapped changes) puts nothing on the bus.
	// Snapshot chunks stand alone and keep the snapshot's numbering. A
	// chunk too large for one message is split (largechange.go).
	var msgs []outMsg
	if len(tx.Events) > 0 || (!c.Tx.Snapshot && c.Last && p.curIdx > 0) {
		var err error
		if msgs, err = p.fit(ctx, c, tx, from, p.curIdx); err != nil {
			return err
		}
		if len(msgs) == 0 && !c.Tx.Snapshot && c.Last && p.curIdx > 0 {
			// Every event was dead-lettered: the transaction still ends.
			tx.Events = nil
			if msgs, err = p.fit(ctx, c, tx, nil, p.curIdx); err != nil {
				return err
			}
		}
		if !c.Tx.Snapshot {
			p.curIdx += len(msgs)
			if len(msgs) > 0 {
				p.lastPub = c.Tx.CommitLSN
			}
		}
	}
	if c.Last {
		p.curIdx = 0
	}
	if len(msgs) == 0 {
		return p.queue(ctx, pending{last: c.Last, endLSN: c.Tx.EndLSN})
	}
	for i, m := range msgs {
		e := pending{msgID: m.tx.MsgID(), last: c.Last && i == len(msgs)-1, endLSN: c.Tx.EndLSN, size: len(m.data)}
		if p.cfg.Room != nil {
			if err := p.cfg.Room.WaitForRoom(ctx); err != nil {
				return fmt.Errorf("publish %s: wait for room: %w", e.msgID, err)
			}
		}
		msg := nats.NewMsg(p.subject)
		msg.Data = m.data
		if err := p.sign(msg, e.msgID); err != nil {
			return err
		}
		fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.msgID), jetstream.WithStallWait(30*time.Second))
		switch {
		case err != nil && permanentPublish(err):
			// Refused before it was sent: dead-letter what it carried and
			// publish the transaction without it.
			if err := p.refused(ctx, m.tx, &PublishRefused{MsgID: e.msgID, Size: len(m.data), Err: err}); err != nil {
				return err
			}
			if err := p.publishStripped(ctx, m.tx); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("publish %s: %w", e.msgID, err)
		default:
			e.fut, e.refs = fut, summarize(m.tx)
			if !m.tx.Snapshot {
				hdr := *m.tx
				hdr.Events = nil
				e.hdr = &hdr
			}
		}
		if err := p.queue(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// publishStripped publishes, in place of a message of a streamed
// transaction the server refused for good (its events were dead-lettered),
// the same message without events and with the same message id: the flow
// still sees every chunk of the transaction and the transaction itself,
// which its successor names as PrevLSN. Snapshot chunks (nil, or Snapshot)
// stand alone and are not replaced.
func (p *producer) publishStripped(ctx context.Context, tx *transform.Tx) error {
	if tx == nil || tx.Snapshot {
		return nil
	}
	hdr := *tx
	hdr.Events = nil
	data, err := encodeTx(&hdr)
	if err != nil {
		return fmt.Errorf("encode %s: %w", hdr.MsgID(), err)
	}
	msg := nats.NewMsg(p.subject)
	msg.Data = data
	if err := p.sign(msg, hdr.MsgID()); err != nil {
		return err
	}
	if _, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(hdr.MsgID())); err != nil {
		return fmt.Errorf("publish %s without its refused events: %w", hdr.MsgID(), err)
	}
	return nil
}

// sign signs msg, to be published with the message id msgID, when the
// producer has a Signer.
func (p *producer) sign(msg *nats.Msg, msgID string) error {
	if p.cfg.Signer == nil {
		return nil
	}
	return p.cfg.Signer.Sign(msg, msgID)
}

// queue hands a published message (or a marker) to the tracker.
func (p *producer) queue(ctx context.Context, e pending) error {
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

// rowMoved says whether ins, an INSERT the capture refused as a new row,
// directly follows a DELETE of the same entity and key in its
// transaction: an UPDATE of a partitioned table's partition key, which
// pgoutput sends as a DELETE from one partition and an INSERT into another.
func (p *producer) rowMoved(del, ins *capture.Change) bool {
	if del.Op != capture.Delete {
		return false
	}
	m, system := p.cfg.Mapping, p.src.System()
	e := m.Source(system, ins.QualifiedTable())
	if e == nil || m.Source(system, del.QualifiedTable()) != e {
		return false
	}
	kc := e.Tables[system].KeyColumn
	a, okA := del.Old[kc]
	b, okB := ins.New[kc]
	return okA && okB && a != nil && fmt.Sprint(a) == fmt.Sprint(b)
}

func (p *producer) countViolation(entity, kind string, n int64) {
	p.cfg.Stats.update(func(s *SourceCounts) {
		if s.OwnershipViolations == nil {
			s.OwnershipViolations = map[string]int64{}
		}
		s.OwnershipViolations[entity+"/"+kind] += n
	})
}

// reportViolations counts and logs the edits of fields another system
// owns that a chunk's events report (Event.Violated): one log line per
// entity and chunk, naming the fields, their owners and up to five keys.
func (p *producer) reportViolations(c *capture.Chunk, evs []transform.Event) {
	type seen struct {
		n      int64
		keys   []string
		fields map[string]string // field -> owner
	}
	var by map[string]*seen
	for _, ev := range evs {
		if len(ev.Violated) == 0 {
			continue
		}
		if by == nil {
			by = map[string]*seen{}
		}
		s := by[ev.Entity]
		if s == nil {
			s = &seen{fields: map[string]string{}}
			by[ev.Entity] = s
		}
		s.n++
		if len(s.keys) < 5 {
			s.keys = append(s.keys, ev.Key)
		}
		e := p.cfg.Mapping.Entity(ev.Entity)
		for _, f := range ev.Violated {
			s.fields[f] = e.Field(f).Owner
		}
	}
	for entity, s := range by {
		p.countViolation(entity, "field", s.n)
		action := "counted only: the systems stay different until the owner writes the field again (enforce: owner would write the owner's value back)"
		if p.cfg.Mapping.Entity(entity).Enforce == transform.EnforceOwner {
			action = "the owner's value is re-read and written back (enforce: owner)"
		}
		p.log.Warn("ownership violation: fields another system owns were edited here",
			slog.String("entity", entity), slog.Int64("rows", s.n), slog.Any("keys", s.keys), slog.Any("fields_and_owners", s.fields),
			slog.String("lsn", c.Tx.CommitLSN.String()), slog.String("action", action))
	}
}
