package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LargeObjectGrace is how much earlier than the first message its source
// still has in DUPLEX an object of DUPLEX_LARGE must have been stored to
// be removed. The producer stores an event's object just before it
// publishes the message that refers to it (after waiting for room in the
// stream), so an object stored that much before the source's first kept
// message belongs to a message already removed. Should a publish be held
// up for longer than this after its object was stored, the flow finds the
// object gone and dead-letters the event, naming it: never a silent loss.
const LargeObjectGrace = time.Hour

// sweepLarge removes the objects of DUPLEX_LARGE that only removed
// messages referred to: per source, those stored cfg.LargeGrace before
// the source's first message kept in DUPLEX (with no message kept, before
// now). It returns how many it removed. A missing bucket is no error.
func (r *Retention) sweepLarge(ctx context.Context, s jetstream.Stream, first uint64) (int64, error) {
	obs, err := r.js.ObjectStore(ctx, LargeBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("retention: object store %s: %w", LargeBucket, err)
	}
	objs, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("retention: list %s: %w", LargeBucket, err)
	}
	before := map[string]time.Time{} // source -> remove objects stored before
	removed := int64(0)
	for _, o := range objs {
		src, _, ok := strings.Cut(o.Name, ":")
		if !ok {
			continue // not one of duplex's names: leave it
		}
		cut, seen := before[src]
		if !seen {
			m, err := next(ctx, s, src, max(first, 1))
			if err != nil {
				return removed, err
			}
			cut = time.Now()
			if m != nil {
				cut = m.Time
			}
			cut = cut.Add(-r.cfg.LargeGrace)
			before[src] = cut
		}
		if o.ModTime.IsZero() || !o.ModTime.Before(cut) {
			continue
		}
		if err := obs.Delete(ctx, o.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return removed, fmt.Errorf("retention: remove %s from %s: %w", o.Name, LargeBucket, err)
		}
		removed++
		r.log.Debug("retention: large object removed", slog.String("object", o.Name))
	}
	return removed, nil
}
