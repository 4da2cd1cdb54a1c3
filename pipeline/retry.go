package pipeline

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/duplex-cdc/duplex/transform"
	"github.com/nats-io/nats.go/jetstream"
)

func (a *Applier) countError(k Kind) {
	a.cfg.Stats.update(func(s *FlowCounts) {
		if s.Errors == nil {
			s.Errors = map[string]int64{}
		}
		s.Errors[k.String()]++
	})
}

// pause waits before a retry, keeping the held messages from being
// redelivered meanwhile.
func (a *Applier) pause(ctx context.Context, bo interface{ NextBackOff() time.Duration }, held []jetstream.Msg, err error) bool {
	a.cfg.Stats.update(func(s *FlowCounts) { s.State = "retrying"; s.LastError = err.Error() })
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
