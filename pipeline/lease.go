// Leases: one process at a time runs a flow or a capture.

package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucket is the JetStream key-value bucket of leases. Its TTL (the
// stream's max age) is the lease TTL: a lease not renewed within it
// expires and another instance may acquire it.
const LeaseBucket = "DUPLEX_LEASES"

// ErrLeaseLost is the cause of a lease holder's context being cancelled
// when its lease could not be renewed in time: the holder must stop
// acknowledging what it fetched and stop applying.
var ErrLeaseLost = errors.New("lease lost")

// ErrLeaseYielded is the cause of a lease holder's context being
// cancelled when the process gave the lease up (Yield) so that another
// instance can gather every unit of the configuration.
var ErrLeaseYielded = errors.New("lease yielded to another instance")

// FlowLeaseKey is the lease key of a flow's durable consumer.
func FlowLeaseKey(flow string) string { return "flow." + flow }

// CaptureLeaseKey is the lease key of a source's capture (its slot).
func CaptureLeaseKey(source string) string { return "capture." + source }

// Instance identifies one duplex process in a lease: no secrets, only
// where it runs and since when.
type Instance struct {
	// ID is host:pid:random, unique to the process.
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	// Role is what the process does with the lease: "run" or "replay".
	Role string `json:"role"`
}

// NewInstance returns the identity of this process in role.
func NewInstance(role string) Instance {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	pid := os.Getpid()
	return Instance{ID: fmt.Sprintf("%s:%d:%s", host, pid, hex.EncodeToString(b[:])), Host: host, PID: pid, Started: time.Now().UTC(), Role: role}
}

// LeaseHolder is the value stored under a lease key.
type LeaseHolder struct {
	Instance
	// Acquired is when the holder acquired the lease.
	Acquired time.Time `json:"acquired"`
}

func (h LeaseHolder) String() string {
	if h.ID == "" {
		return "nobody"
	}
	return fmt.Sprintf("%s (%s, since %s)", h.ID, h.Role, h.Acquired.Format(time.RFC3339))
}

// EnsureLeases creates or updates the lease bucket with a TTL (the lease
// TTL) and the stream's replicas, and returns it.
func EnsureLeases(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, Description: "duplex: which instance runs each flow and capture",
		History: 1, TTL: ttl, Storage: jetstream.FileStorage, Replicas: max(replicas, 1)})
	if err != nil {
		return nil, fmt.Errorf("lease bucket %s: %w", LeaseBucket, err)
	}
	return kv, nil
}

// ReadLease returns the holder of a lease key; ok is false when nobody
// holds it (or the bucket does not exist).
func ReadLease(ctx context.Context, js jetstream.JetStream, key string) (LeaseHolder, bool, error) {
	kv, err := js.KeyValue(ctx, LeaseBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return LeaseHolder{}, false, nil
	}
	if err != nil {
		return LeaseHolder{}, false, fmt.Errorf("lease bucket %s: %w", LeaseBucket, err)
	}
	return readHolder(ctx, kv, key)
}

func readHolder(ctx context.Context, kv jetstream.KeyValue, key string) (LeaseHolder, bool, error) {
	_, h, ok, err := readEntry(ctx, kv, key)
	return h, ok, err
}

// readEntry returns a lease key's entry and its holder; ok is false when
// nobody holds it.
func readEntry(ctx context.Context, kv jetstream.KeyValue, key string) (jetstream.KeyValueEntry, LeaseHolder, bool, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, LeaseHolder{}, false, nil
	}
	if err != nil {
		return nil, LeaseHolder{}, false, fmt.Errorf("read lease %s: %w", key, err)
	}
	var h LeaseHolder
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return nil, LeaseHolder{}, false, fmt.Errorf("read lease %s: %w", key, err)
	}
	return e, h, true, nil
}

// ReadHolders returns the holder of each of keys that somebody holds.
func ReadHolders(ctx context.Context, kv jetstream.KeyValue, keys []string) (map[string]LeaseHolder, error) {
	out := map[string]LeaseHolder{}
	for _, k := range keys {
		h, ok, err := readHolder(ctx, kv, k)
		if err != nil {
			return nil, err
		}
		if ok {
			out[k] = h
		}
	}
	return out, nil
}

// LeaseHeldError says who holds a lease another process wanted.
type LeaseHeldError struct {
	Key    string
	Holder LeaseHolder
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("lease %s is held by %s", e.Key, e.Holder)
}

// Lease is one key of the lease bucket as seen by one process.
//
// Timing, with T the bucket's TTL: the holder renews every T/4; when no
// renewal sent within the last T/2 succeeded, it cancels its work (cause
// ErrLeaseLost) and waits for it to stop, while the key still has at
// least T/2 to live on the server (it expires T after the last successful
// write, which the server stored after it was sent). A standby polls
// every T/10 and acquires the key once it is gone. So a holder that lost
// its lease stops before another can start, and a standby takes over
// within about T (plus one poll) of the holder's death, at once after a
// clean stop (the holder deletes the key).
type Lease struct {
	kv   jetstream.KeyValue
	key  string
	self Instance
	ttl  time.Duration
	log  *slog.Logger

	mu     sync.Mutex
	held   bool
	rev    uint64
	holder LeaseHolder // the last holder seen (self while held)
	known  bool        // holder was read
	sent   time.Time   // when the acquiring write was sent

	// yield asks Hold to give the lease up (Yield); buffered, one.
	yield chan struct{}
}

// NewLease returns the lease key of kv for self; ttl must be the bucket's.
func NewLease(kv jetstream.KeyValue, key string, self Instance, ttl time.Duration, log *slog.Logger) *Lease {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lease{kv: kv, key: key, self: self, ttl: ttl, log: log.With(slog.String("lease", key)), yield: make(chan struct{}, 1)}
}

// Key is the lease key.
func (l *Lease) Key() string { return l.key }

// State says whether this process holds the lease, and who holds it as
// last seen (ok false: nobody, or not read yet).
func (l *Lease) State() (held bool, holder LeaseHolder, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held, l.holder, l.known
}

// Acquire tries once to acquire the lease; false (and the holder in
// State) when another process holds it.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	h := LeaseHolder{Instance: l.self, Acquired: time.Now().UTC()}
	val, err := json.Marshal(h)
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", l.key, err)
	}
	sent := time.Now()
	rev, err := l.kv.Create(ctx, l.key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, cur, ok, rerr := readEntry(ctx, l.kv, l.key)
		if rerr == nil && ok && cur.ID == l.self.ID {
			// This process's own entry, left by a lease it lost (a
			// renewal not answered within half the TTL: its work has
			// stopped) and that has not expired yet. Nobody else can
			// have acquired the key since, so it is taken back at the
			// revision read, before another instance could acquire it
			// at expiry: a slow NATS round trip does not scatter the
			// units of one instance over two (the soak saw that).
			sent = time.Now()
			if rev, err = l.kv.Update(ctx, l.key, val, e.Revision()); err == nil {
				l.mu.Lock()
				l.held, l.rev, l.holder, l.known, l.sent = true, rev, h, true, sent
				l.mu.Unlock()
				l.log.Info("lease taken back before it expired")
				return true, nil
			}
		}
		l.mu.Lock()
		if rerr == nil {
			l.holder, l.known = cur, ok
		}
		l.mu.Unlock()
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", l.key, err)
	}
	l.mu.Lock()
	l.held, l.rev, l.holder, l.known, l.sent = true, rev, h, true, sent
	l.mu.Unlock()
	return true, nil
}

// Run waits as a standby until it acquires the lease, then runs work
// while it holds it (Hold), and waits again if the lease was lost. It
// returns when ctx ends (nil), or with work's error if work failed while
// the lease was held.
func (l *Lease) Run(ctx context.Context, work func(context.Context) error) error {
	poll := l.ttl / 10
	standby := time.Time{}
	for ctx.Err() == nil {
		ok, err := l.Acquire(ctx)
		if err != nil && ctx.Err() == nil && time.Since(standby) > l.ttl {
			standby = time.Now()
			l.log.Warn("lease not acquired; retrying", slog.Any("error", err))
		}
		if !ok {
			if standby.IsZero() {
				standby = time.Now()
				_, h, _ := l.State()
				l.log.Info("standby: another instance holds the lease", slog.String("holder", h.String()))
			}
			if !sleep(ctx, poll) {
				return nil
			}
			continue
		}
		standby = time.Time{}
		l.log.Info("lease acquired")
		err = l.Hold(ctx, work)
		if errors.Is(err, ErrLeaseLost) {
			l.log.Warn("lease lost: stopped; standing by")
			continue
		}
		if errors.Is(err, ErrLeaseYielded) {
			// The instance it was yielded to acquires it within one of
			// its polls; this one stays out of the way for a TTL, so
			// that the two do not race for it. Should that instance die
			// meanwhile, this one acquires the lease after that TTL.
			l.log.Info("lease yielded to the instance that holds the other units; standing by", slog.Duration("hold_off", l.ttl))
			if !sleep(ctx, l.ttl) {
				return nil
			}
			continue
		}
		return err
	}
	return nil
}

// Hold runs work while it renews the acquired lease. When the lease is
// lost, work's context is cancelled with cause ErrLeaseLost and Hold
// returns ErrLeaseLost once work returned. When ctx ends or work returns,
// the lease is released (deleted at the revision held, so that nothing
// acquired since is touched) and work's error returned.
func (l *Lease) Hold(ctx context.Context, work func(context.Context) error) error {
	l.mu.Lock()
	if !l.held {
		l.mu.Unlock()
		return fmt.Errorf("hold lease %s: not acquired", l.key)
	}
	rev, val, lastOK := l.rev, l.holder, l.sent
	l.mu.Unlock()
	select { // a Yield meant for an earlier hold
	case <-l.yield:
	default:
	}
	body, err := json.Marshal(val)
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.key, err)
	}
	// lastOK is when the last successful write was sent: the server
	// stored it later, so the key lives at least until lastOK + T.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- work(wctx) }()
	renew := time.NewTicker(l.ttl / 4)
	defer renew.Stop()
	fence := time.NewTimer(time.Until(lastOK.Add(l.ttl / 2)))
	defer fence.Stop()
	lost := func(why string, err error) error {
		cancel(ErrLeaseLost)
		stopping := time.Now()
		werr := <-done
		l.mu.Lock()
		l.held = false
		l.mu.Unlock()
		l.log.Warn("lease lost; work stopped", slog.String("why", why), slog.Any("error", err), slog.Duration("stopped_in", time.Since(stopping)))
		if werr != nil && !errors.Is(werr, ErrLeaseLost) && !errors.Is(werr, context.Canceled) {
			return fmt.Errorf("%w: %w", ErrLeaseLost, werr)
		}
		return ErrLeaseLost
	}
	for {
		select {
		case err := <-done:
			l.release(context.WithoutCancel(ctx), rev)
			return err
		case <-ctx.Done():
			cancel(context.Cause(ctx))
			err := <-done
			l.release(context.WithoutCancel(ctx), rev)
			return err
		case <-fence.C:
			return lost("not renewed within half the TTL", nil)
		case <-l.yield:
			cancel(ErrLeaseYielded)
			werr := <-done
			l.release(context.WithoutCancel(ctx), rev)
			if werr != nil && !errors.Is(werr, ErrLeaseYielded) && !errors.Is(werr, context.Canceled) {
				return fmt.Errorf("%w: %w", ErrLeaseYielded, werr)
			}
			return ErrLeaseYielded
		case <-renew.C:
			sent := time.Now()
			rctx, rcancel := context.WithDeadline(ctx, lastOK.Add(l.ttl/2))
			next, err := l.kv.Update(rctx, l.key, body, rev)
			rcancel()
			switch {
			case err == nil:
				rev, lastOK = next, sent
				fence.Reset(time.Until(lastOK.Add(l.ttl / 2)))
				l.mu.Lock()
				l.rev = rev
				l.mu.Unlock()
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
				// Expired (or taken): someone else may hold it now.
				return lost("renewal refused", err)
			case ctx.Err() != nil:
			default:
				l.log.Warn("lease renewal failed", slog.Any("error", err), slog.Duration("fence_in", time.Until(lastOK.Add(l.ttl/2))))
			}
		}
	}
}

// Yield gives the lease up if this process holds it: its work is
// cancelled (cause ErrLeaseYielded), the key released, and Run stands by
// for a TTL before it tries to acquire it again. A no-op when not held.
func (l *Lease) Yield() {
	if held, _, _ := l.State(); !held {
		return
	}
	select {
	case l.yield <- struct{}{}:
	default:
	}
}

// release deletes the key if it is still at the revision held.
func (l *Lease) release(ctx context.Context, rev uint64) {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev)); err != nil {
		l.log.Info("lease not released; it expires by itself", slog.Any("error", err))
		return
	}
	l.mu.Lock()
	l.known = false
	l.holder = LeaseHolder{}
	l.mu.Unlock()
}

// FlowStandby marks a flow's statistics as standing by (another instance
// holds its lease).
func FlowStandby(s *FlowStats) { s.update(func(c *FlowCounts) { c.State = "standby" }) }
