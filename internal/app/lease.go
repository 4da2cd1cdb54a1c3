package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
)

// leases are this instance's leases, one per flow (its durable consumer
// and replication origin) and one per source (its slot). A lease per
// unit, rather than one per instance, is what replay needs (it takes one
// flow's lease while the rest keeps running). Each unit runs where its
// lease is; when the units end up split between two running instances (a
// renewal answered too late under load, one lease expiring before the
// others), converge gathers them on one again, so that an operator sees
// one active instance and one standby.
type leases struct {
	kv       jetstream.KeyValue
	self     pipeline.Instance
	ttl      time.Duration
	flows    map[string]*pipeline.Lease
	captures map[string]*pipeline.Lease
}

func newLeases(ctx context.Context, js jetstream.JetStream, cfg *config.Config, log *slog.Logger) (*leases, error) {
	var kv jetstream.KeyValue
	err := untilPlaced(ctx, log, "the lease bucket", func(ctx context.Context) (err error) {
		kv, err = pipeline.EnsureLeases(ctx, js, cfg.HA.LeaseTTL, cfg.Stream.Replicas)
		return err
	})
	if err != nil {
		return nil, err
	}
	l := &leases{kv: kv, self: pipeline.NewInstance("run"), ttl: cfg.HA.LeaseTTL, flows: map[string]*pipeline.Lease{}, captures: map[string]*pipeline.Lease{}}
	log = log.With(slog.String("instance", l.self.ID))
	for _, f := range cfg.Flows {
		l.flows[f.Name] = pipeline.NewLease(kv, pipeline.FlowLeaseKey(f.Name), l.self, l.ttl, log.With(slog.String("flow", f.Name)))
	}
	for _, s := range cfg.Sources() {
		l.captures[s] = pipeline.NewLease(kv, pipeline.CaptureLeaseKey(s), l.self, l.ttl, log.With(slog.String("source", s)))
	}
	return l, nil
}

// Instance is this process's identity in the leases.
func (a *App) Instance() string { return a.leases.self.ID }

// LeaseState is who runs a flow or a capture.
type LeaseState struct {
	// Here is true when this instance holds the lease (it is active).
	Here bool
	// Holder is the holder's instance id as last seen ("" when nobody).
	Holder string
}

func stateOf(l *pipeline.Lease) LeaseState {
	if l == nil {
		return LeaseState{}
	}
	held, h, ok := l.State()
	s := LeaseState{Here: held}
	if ok {
		s.Holder = h.ID
	}
	return s
}

// FlowLease says who applies a flow.
func (a *App) FlowLease(flow string) LeaseState { return stateOf(a.leases.flows[flow]) }

// CaptureLease says who captures a source.
func (a *App) CaptureLease(source string) LeaseState { return stateOf(a.leases.captures[source]) }

// Role is "active" when this instance holds every lease, "standby" when
// it holds none, "partly active" otherwise.
func (a *App) Role() string {
	n, held := 0, 0
	for _, m := range []map[string]*pipeline.Lease{a.leases.flows, a.leases.captures} {
		for _, l := range m {
			n++
			if h, _, _ := l.State(); h {
				held++
			}
		}
	}
	switch held {
	case n:
		return "active"
	case 0:
		return "standby"
	}
	return "partly active"
}

// all returns every lease of this instance, keyed by lease key.
func (l *leases) all() map[string]*pipeline.Lease {
	out := map[string]*pipeline.Lease{}
	for _, m := range []map[string]*pipeline.Lease{l.flows, l.captures} {
		for _, ls := range m {
			out[ls.Key()] = ls
		}
	}
	return out
}

// keeper reads every unit's holder and returns the running instance that
// should hold them all: the one holding the most, then the one started
// first, then the lowest id (every instance computes the same). split is
// true when this instance holds some unit and another running instance
// holds another. Holders in role "replay" (a tool holding one flow for a
// moment) do not count.
func (l *leases) keeper(ctx context.Context) (keeper string, split bool, err error) {
	own := l.all()
	keys := make([]string, 0, len(own))
	for k := range own {
		keys = append(keys, k)
	}
	holders, err := pipeline.ReadHolders(ctx, l.kv, keys)
	if err != nil {
		return "", false, err
	}
	type tally struct {
		n       int
		started time.Time
	}
	count := map[string]*tally{}
	mine := false
	for k, h := range holders {
		if h.Role != "run" {
			continue
		}
		if h.ID == l.self.ID {
			if held, _, _ := own[k].State(); !held {
				continue // this instance's own expiring entry
			}
			mine = true
		}
		t := count[h.ID]
		if t == nil {
			t = &tally{started: h.Started}
			count[h.ID] = t
		}
		t.n++
	}
	if !mine || len(count) < 2 {
		return l.self.ID, false, nil
	}
	for id, t := range count {
		if keeper == "" {
			keeper = id
			continue
		}
		k := count[keeper]
		if t.n > k.n || t.n == k.n && (t.started.Before(k.started) || t.started.Equal(k.started) && id < keeper) {
			keeper = id
		}
	}
	return keeper, true, nil
}

// converge checks every TTL whether the units are split between this
// instance and another running one (keeper). When they have been split
// for two TTLs, and the other instance is the keeper, this one yields its
// leases (pipeline.Lease.Yield) and the keeper acquires them at its next
// poll. Two TTLs: when the active instance dies, its leases expire within
// about one TTL of each other and the standby acquires them one by one;
// that passing split must not be undone. A split that lasts is two live
// instances, and only the non-keeper yields, so they never trade units
// back and forth.
func (l *leases) converge(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(l.ttl)
	defer t.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keeper, split, err := l.keeper(ctx)
		if err != nil || !split || keeper == l.self.ID {
			since = time.Time{}
			continue
		}
		if since.IsZero() {
			since = time.Now()
			continue
		}
		if time.Since(since) < 2*l.ttl {
			continue
		}
		log.Warn("this instance and another hold the units of one configuration between them; yielding this one's to it",
			slog.String("instance", l.self.ID), slog.String("to", keeper), slog.Duration("split_for", time.Since(since).Round(time.Second)))
		for _, ls := range l.all() {
			ls.Yield()
		}
		since = time.Time{}
	}
}

// flowRunner runs one flow: it waits as a standby until it holds the
// flow's lease, then applies until the lease is lost or ctx ends.
type flowRunner struct {
	ap     *pipeline.Applier
	sink   *pgsink.Sink
	js     jetstream.JetStream
	flow   string
	source string
	stats  *pipeline.FlowStats
	lease  *pipeline.Lease
	// retention is held while the consumer moves back, so that no pass
	// that read the old ack floor purges what the replay is to read.
	retention *pipeline.Retention
	// replay takes requests to re-point the flow while it is active.
	replay chan replayRequest
	// done is closed when the runner stopped (or never started).
	done chan struct{}
}

type replayRequest struct {
	from ReplayFrom
	done chan error // buffered
}

// start runs the flow in g until ctx ends; false if g no longer takes
// goroutines (done is closed then).
func (r *flowRunner) start(ctx context.Context, g *group) bool {
	done := make(chan struct{})
	r.done = done
	ok := g.Go(func() error {
		defer close(done)
		return r.run(ctx)
	})
	if !ok {
		close(done)
	}
	return ok
}

func (r *flowRunner) run(ctx context.Context) error {
	pipeline.FlowStandby(r.stats)
	return r.lease.Run(ctx, r.active)
}

// active applies the flow while ctx (the lease's) lives. On the way out
// it closes the sink's session, which frees the replication origin for
// the next holder.
func (r *flowRunner) active(ctx context.Context) error {
	defer func() {
		r.sink.Close(context.WithoutCancel(ctx))
		pipeline.FlowStandby(r.stats)
	}()
	for {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.ap.Run(actx) }()
		select {
		case <-ctx.Done():
			err := <-done
			cancel()
			return err
		case req := <-r.replay:
			cancel()
			err := <-done
			if err == nil {
				release := r.retention.Hold()
				err = pipeline.ResetFlowFrom(ctx, r.js, r.flow, r.source, req.from.Seq, req.from.Time)
				release()
			}
			req.done <- err
			if ctx.Err() != nil {
				return nil
			}
		}
	}
}

// Replay re-applies a flow this instance runs from a point of the
// retained stream: the flow is stopped, its consumer re-pointed, and
// started again, all while this instance holds the flow's lease. Events
// the target already holds (at or below its recorded applied position)
// are skipped by the sink. A standby refuses, naming the active instance.
func (a *App) Replay(ctx context.Context, flow string, from ReplayFrom) error {
	a.runMu.Lock()
	r, running := a.runners[flow], a.run != nil
	a.runMu.Unlock()
	if r == nil || !running {
		return fmt.Errorf("replay: flow %s is not running here", flow)
	}
	if st := stateOf(r.lease); !st.Here {
		holder := st.Holder
		if holder == "" {
			holder = "no instance yet"
		}
		return fmt.Errorf("replay: this instance (%s) is a standby for flow %s; the active one is %s: ask it", a.leases.self.ID, flow, holder)
	}
	req := replayRequest{from: from, done: make(chan error, 1)}
	t := time.NewTimer(a.leases.ttl)
	defer t.Stop()
	select {
	case r.replay <- req:
	case <-r.done:
		return fmt.Errorf("replay: flow %s: duplex is stopping", flow)
	case <-ctx.Done():
		return fmt.Errorf("replay %s: %w", flow, ctx.Err())
	case <-t.C:
		return fmt.Errorf("replay: flow %s: no longer active here (stopping, or its lease was lost)", flow)
	}
	if err := <-req.done; err != nil {
		return fmt.Errorf("replay %s: %w", flow, err)
	}
	a.log.Info("flow replaying", slog.String("flow", flow), slog.Uint64("from_seq", from.Seq), slog.Time("since", from.Time))
	return nil
}

// holdFlowLease acquires a flow's lease for a tool (replay) or says who
// holds it.
func holdFlowLease(ctx context.Context, js jetstream.JetStream, cfg *config.Config, flow string, log *slog.Logger) (*pipeline.Lease, error) {
	kv, err := pipeline.EnsureLeases(ctx, js, cfg.HA.LeaseTTL, cfg.Stream.Replicas)
	if err != nil {
		return nil, err
	}
	l := pipeline.NewLease(kv, pipeline.FlowLeaseKey(flow), pipeline.NewInstance("replay"), cfg.HA.LeaseTTL, log)
	ok, err := l.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		_, h, _ := l.State()
		return nil, &pipeline.LeaseHeldError{Key: l.Key(), Holder: h}
	}
	return l, nil
}

// errLeaseHeld reports a replay refused because an instance runs the flow.
func errLeaseHeld(flow string, err error) error {
	var held *pipeline.LeaseHeldError
	if errors.As(err, &held) {
		return fmt.Errorf("replay %s: refused: duplex instance %s is applying this flow (lease %s); run replay where its status listener answers (--listen), or stop it first", flow, held.Holder, held.Key)
	}
	return fmt.Errorf("replay %s: %w", flow, err)
}
