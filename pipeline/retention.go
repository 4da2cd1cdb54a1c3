package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The rule of retention: a message of DUPLEX is removed only once every
// flow that reads its source applied it (the flow's durable consumer's ack
// floor is at or past it). Of the applied messages, those older than
// MaxAge are removed, and the oldest ones while the stream holds more than
// MaxBytes. JetStream's own policies cannot say this (limits retention
// drops unapplied messages, interest retention drops applied ones at
// once), so DUPLEX has no age limit and discards new messages at its
// ceiling (EnsureStreams), and Retention removes what is eligible.

// Near its ceiling (the stream's max bytes), the stream is "full" at
// fullPercent: publishing waits for room (Retention.WaitForRoom). Applied
// messages are removed, whatever MaxAge and MaxBytes say, down to
// trimPercent, so that only unapplied changes can fill it.
const (
	fullPercent = 90
	trimPercent = 80
	// maxTrimPerPass bounds the messages one pass reads to remove them by
	// size; the next pass goes on.
	maxTrimPerPass = 10_000
)

// RetentionConfig says what Retention may remove from DUPLEX.
type RetentionConfig struct {
	// Readers maps each source to the flows (the names of their durable
	// consumers on DUPLEX) that read it. A source none of whose messages
	// every reader applied, because a reader's consumer does not exist
	// (yet), or because it has no reader, is not purged at all.
	Readers map[string][]string
	// MaxAge: applied messages stored longer ago than this are removed
	// (0: kept whatever their age).
	MaxAge time.Duration
	// MaxBytes: while the stream holds more than this many bytes, the
	// oldest applied messages are removed (0: no bound but the ceiling).
	MaxBytes int64
	// Interval between passes (default 2s).
	Interval time.Duration
	// LargeGrace: objects of DUPLEX_LARGE are removed once stored this
	// long before the first message their source keeps (default
	// LargeObjectGrace; negative: no grace, for tests).
	LargeGrace time.Duration
	Logger     *slog.Logger
}

// RetentionCounts is what Retention last saw of DUPLEX.
type RetentionCounts struct {
	// Bytes and Msgs the stream holds, FirstSeq its first sequence.
	Bytes, Msgs, FirstSeq uint64
	// Ceiling is the stream's max bytes (0: none).
	Ceiling int64
	// Full: the stream holds at least 90% of its ceiling; publishing waits.
	Full bool
	// Blocked maps each source that cannot be purged to the reason.
	Blocked map[string]string
	// Purges counts purge requests made.
	Purges int64
	// LastPass is when the last pass ended without error.
	LastPass time.Time
}

func (c RetentionCounts) Clone() RetentionCounts {
	c.Blocked = maps.Clone(c.Blocked)
	return c
}

// Retention removes from DUPLEX the messages every reading flow applied,
// bounded by age and size (see the rule above). One runs per duplex
// instance (Run); passes of several instances are safe together, since
// each only removes what every flow applied.
//
// Replay moves a flow's consumer backwards: do it under Hold, so that no
// pass read the old ack floor before and purges after; the next pass sees
// the new floor.
type Retention struct {
	js    jetstream.JetStream
	cfg   RetentionConfig
	log   *slog.Logger
	mu    sync.Mutex // held by a pass and by Hold
	full  atomic.Bool
	stats Stats[RetentionCounts]
	// passes counts passes (under mu), to sweep DUPLEX_LARGE every
	// largeSweepEvery of them.
	passes int
}

const largeSweepEvery = 30

// NewRetention returns a Retention of DUPLEX; Run runs it.
func NewRetention(js jetstream.JetStream, cfg RetentionConfig) *Retention {
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.LargeGrace == 0:
		cfg.LargeGrace = LargeObjectGrace
	case cfg.LargeGrace < 0:
		cfg.LargeGrace = 0
	}
	return &Retention{js: js, cfg: cfg, log: cfg.Logger.With(slog.String("stream", StreamName))}
}

// Stats returns what the last pass saw.
func (r *Retention) Stats() RetentionCounts { return r.stats.Snapshot() }

// Full says whether the stream is full of unapplied changes: publishing
// waits until it is not.
func (r *Retention) Full() bool { return r.full.Load() }

// WaitForRoom returns once the stream is not full, or ctx's error.
func (r *Retention) WaitForRoom(ctx context.Context) error {
	for r.full.Load() {
		if !sleep(ctx, 250*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}

// Hold stops passes until release is called (a replay re-points a
// consumer meanwhile).
func (r *Retention) Hold() (release func()) {
	r.mu.Lock()
	return r.mu.Unlock
}

// Run makes a pass every Interval until ctx ends. A failed pass is logged
// and the next one tries again.
func (r *Retention) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	var lastErr string
	for {
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			if err.Error() != lastErr {
				r.log.Warn("retention pass", slog.Any("error", err))
			}
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Pass removes once what is eligible and updates Full.
func (r *Retention) Pass(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.js.Stream(ctx, StreamName)
	if err != nil {
		return fmt.Errorf("retention: stream %s: %w", StreamName, err)
	}
	info := s.CachedInfo()
	floors, blocked, err := r.floors(ctx, s)
	if err != nil {
		return err
	}
	r.report(blocked)
	purges := int64(0)
	if r.cfg.MaxAge > 0 {
		cutoff := time.Now().Add(-r.cfg.MaxAge)
		for _, src := range slices.Sorted(maps.Keys(floors)) {
			upTo, err := r.firstKept(ctx, s, info.State.FirstSeq, src, floors[src], cutoff)
			if err != nil {
				return err
			}
			n, err := r.purge(ctx, s, src, info.State.FirstSeq, upTo)
			if err != nil {
				return err
			}
			purges += n
		}
	}
	if purges > 0 {
		if info, err = s.Info(ctx); err != nil {
			return fmt.Errorf("retention: stream %s: %w", StreamName, err)
		}
	}
	ceiling := info.Config.MaxBytes
	target := r.cfg.MaxBytes
	if ceiling > 0 && (target <= 0 || target > ceiling*trimPercent/100) {
		target = ceiling * trimPercent / 100
	}
	if target > 0 && int64(info.State.Bytes) > target {
		n, err := r.trim(ctx, s, info.State.FirstSeq, floors, int64(info.State.Bytes)-target)
		if err != nil {
			return err
		}
		purges += n
		if n > 0 {
			if info, err = s.Info(ctx); err != nil {
				return fmt.Errorf("retention: stream %s: %w", StreamName, err)
			}
		}
	}
	// Objects of large changes go with the messages that referred to them:
	// checked after messages were removed, and about once a minute (the
	// grace passes).
	if purges > 0 || r.passes%largeSweepEvery == 0 {
		if _, err := r.sweepLarge(ctx, s, info.State.FirstSeq); err != nil {
			return err
		}
	}
	r.passes++
	full := ceiling > 0 && int64(info.State.Bytes) >= ceiling*fullPercent/100
	if was := r.full.Swap(full); was != full {
		if full {
			r.log.Warn("stream full of unapplied changes: publishing waits until the flows apply them (the sources' slots keep their WAL meanwhile)",
				slog.Uint64("bytes", info.State.Bytes), slog.Int64("max_store_bytes", ceiling))
		} else {
			r.log.Info("stream has room again: publishing goes on", slog.Uint64("bytes", info.State.Bytes), slog.Int64("max_store_bytes", ceiling))
		}
	}
	r.stats.update(func(c *RetentionCounts) {
		c.Bytes, c.Msgs, c.FirstSeq, c.Ceiling, c.Full = info.State.Bytes, info.State.Msgs, info.State.FirstSeq, ceiling, full
		c.Blocked = blocked
		c.Purges += purges
		c.LastPass = time.Now()
	})
	return nil
}

// floors returns, for each source every reader of which has a consumer,
// the lowest ack floor (stream sequence) of its readers; the other sources
// are blocked, with the reason.
func (r *Retention) floors(ctx context.Context, s jetstream.Stream) (map[string]uint64, map[string]string, error) {
	floors, blocked := map[string]uint64{}, map[string]string{}
sources:
	for src, flows := range r.cfg.Readers {
		if len(flows) == 0 {
			blocked[src] = "no flow reads it"
			continue
		}
		floor := ^uint64(0)
		for _, flow := range flows {
			c, err := s.Consumer(ctx, flow)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				blocked[src] = "consumer " + flow + " does not exist"
				continue sources
			}
			if err != nil {
				return nil, nil, fmt.Errorf("retention: consumer %s: %w", flow, err)
			}
			ci := c.CachedInfo()
			if ci.Config.FilterSubject != SourceFilter(src) {
				blocked[src] = fmt.Sprintf("consumer %s reads %q, not %q", flow, ci.Config.FilterSubject, SourceFilter(src))
				continue sources
			}
			floor = min(floor, ci.AckFloor.Stream)
		}
		floors[src] = floor
	}
	return floors, blocked, nil
}

// report logs a source's purging becoming blocked or free.
func (r *Retention) report(blocked map[string]string) {
	was := r.stats.Snapshot().Blocked
	for src, why := range blocked {
		if was[src] != why {
			r.log.Info("retention: source not purged", slog.String("source", src), slog.String("reason", why))
		}
	}
	for src := range was {
		if _, ok := blocked[src]; !ok {
			r.log.Info("retention: source purged again", slog.String("source", src))
		}
	}
}

// next returns the first message of src at or after seq (nil: none).
func next(ctx context.Context, s jetstream.Stream, src string, seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(SourceFilter(src)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("retention: read %s from %d: %w", SourceFilter(src), seq, err)
	}
	return m, nil
}

// firstKept returns the lowest sequence from which the messages of src are
// kept: every message of src below it is applied (at or below floor) and
// was stored at or before cutoff. Stream times grow with sequences, so a
// binary search over sequences finds it.
func (r *Retention) firstKept(ctx context.Context, s jetstream.Stream, first uint64, src string, floor uint64, cutoff time.Time) (uint64, error) {
	lo, hi := max(first, 1), floor+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := next(ctx, s, src, mid)
		if err != nil {
			return 0, err
		}
		if m == nil || m.Sequence > floor || m.Time.After(cutoff) {
			hi = mid
		} else {
			lo = m.Sequence + 1
		}
	}
	return lo, nil
}

// purge removes the messages of src below upTo; it returns 1 when it asked
// JetStream to, 0 when none was there.
func (r *Retention) purge(ctx context.Context, s jetstream.Stream, src string, first, upTo uint64) (int64, error) {
	m, err := next(ctx, s, src, max(first, 1))
	if err != nil || m == nil || m.Sequence >= upTo {
		return 0, err
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(SourceFilter(src)), jetstream.WithPurgeSequence(upTo)); err != nil {
		return 0, fmt.Errorf("retention: purge %s below %d: %w", SourceFilter(src), upTo, err)
	}
	r.log.Debug("retention: purged", slog.String("source", src), slog.Uint64("below_seq", upTo))
	return 1, nil
}

// trim removes the oldest applied messages, across sources, until about
// excess bytes were freed (or maxTrimPerPass messages were read).
func (r *Retention) trim(ctx context.Context, s jetstream.Stream, first uint64, floors map[string]uint64, excess int64) (int64, error) {
	type cursor struct {
		m *jetstream.RawStreamMsg
	}
	cur := map[string]*cursor{}
	for src, floor := range floors {
		m, err := next(ctx, s, src, max(first, 1))
		if err != nil {
			return 0, err
		}
		if m != nil && m.Sequence <= floor {
			cur[src] = &cursor{m: m}
		}
	}
	freed, read := int64(0), 0
	upTo := map[string]uint64{}
	for freed < excess && read < maxTrimPerPass && len(cur) > 0 {
		src := ""
		for s, c := range cur {
			if src == "" || c.m.Sequence < cur[src].m.Sequence {
				src = s
			}
		}
		c := cur[src]
		freed += storedSize(c.m)
		read++
		upTo[src] = c.m.Sequence + 1
		m, err := next(ctx, s, src, c.m.Sequence+1)
		if err != nil {
			return 0, err
		}
		if m == nil || m.Sequence > floors[src] {
			delete(cur, src)
			continue
		}
		c.m = m
	}
	purges := int64(0)
	for _, src := range slices.Sorted(maps.Keys(upTo)) {
		n, err := r.purge(ctx, s, src, first, upTo[src])
		if err != nil {
			return purges, err
		}
		purges += n
	}
	return purges, nil
}

// storedSize is about what a message takes in the stream's accounting
// (JetStream's file store: a 22-byte record header and an 8-byte hash
// besides subject, headers and data), in bytes.
func storedSize(m *jetstream.RawStreamMsg) int64 {
	n := int64(30 + len(m.Subject) + len(m.Data))
	for k, vs := range m.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}
