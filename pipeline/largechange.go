package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Messages within the server's limits.
//
// A chunk whose encoded transaction is larger than one message (the
// server's max payload, less room for headers) is published as several
// messages. Events are packed in order, greedily, so the same chunk always
// splits the same way: a transaction captured again after a crash gets the
// same message ids and JetStream deduplicates it.
//
//   - A chunk of a live transaction becomes consecutive chunk numbers (the
//     producer renumbers a transaction's chunks anyway); Last is only on
//     the final one. A flow reassembles them like any other chunks.
//   - A snapshot or backfill chunk stands alone and keeps its number; its
//     messages are parts (Tx.Part 0, 1, ...), each standing alone too, with
//     the message id <source>:<LSN>:<chunk>.<part> after the first.
//
// An event too large for a message by itself travels through the object
// store bucket DUPLEX_LARGE: its Data is stored as JSON in an object named
// <source>:<commit LSN>:c<capture chunk>:e<event index in the chunk>[:redo]
// (a capture again finds it there with the same content and reuses it,
// nothing is duplicated; it never needs to purge, which its identity may
// not) and the event carries a DataRef instead. A flow reads the object back before applying.
// Objects are kept as long as the stream keeps messages (the bucket's max
// age is the stream's max_age, unlimited when it is), so a replay still
// finds them. An event larger than max_change_bytes (encoded) is
// dead-lettered at capture with table, key, size and limit, and the slot
// moves on.

// LargeBucket is the object store bucket of events too large for a message.
const LargeBucket = "DUPLEX_LARGE"

// DefaultMaxChangeBytes is the default largest event (encoded) duplex carries.
const DefaultMaxChangeBytes = 64 << 20

// fetchMaxBytes bounds a flow's fetch; a message is never larger, or no
// flow could fetch it, whatever the server's max payload.
const fetchMaxBytes = 8 << 20

// headerRoom is kept free of the server's max payload for the headers of
// a message (Nats-Msg-Id).
const headerRoom = 4 << 10

// EnsureLargeChanges creates or updates the object store bucket of events
// too large for one message. maxAge is the DUPLEX stream's max age (0:
// objects are kept as long as the stream is unbounded).
func EnsureLargeChanges(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) error {
	if replicas <= 0 {
		replicas = 1
	}
	_, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: LargeBucket,
		Description: "duplex: data of events too large for one message, referenced from DUPLEX",
		TTL:         maxAge, Storage: jetstream.FileStorage, Replicas: replicas})
	if err != nil {
		return fmt.Errorf("ensure object store %s: %w", LargeBucket, err)
	}
	return nil
}

// largeStore opens the bucket (and its stream, to read objects) once per
// holder.
type largeStore struct {
	mu     sync.Mutex
	obs    jetstream.ObjectStore
	stream jetstream.Stream
}

// reader returns the bucket and its stream, opened at the first call.
func (l *largeStore) reader(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, jetstream.Stream, error) {
	obs, err := l.get(ctx, js)
	if err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream == nil {
		if l.stream, err = js.Stream(ctx, "OBJ_"+LargeBucket); err != nil {
			return nil, nil, fmt.Errorf("object store %s: %w", LargeBucket, err)
		}
	}
	return obs, l.stream, nil
}

func (l *largeStore) get(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.obs != nil {
		return l.obs, nil
	}
	obs, err := js.ObjectStore(ctx, LargeBucket)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", LargeBucket, err)
	}
	l.obs = obs
	return obs, nil
}

// PublishRefused is a publish that can never succeed as it is (the message
// is larger than the server or the stream accepts): the events it carried
// are dead-lettered instead of the capture session restarting forever.
type PublishRefused struct {
	MsgID string
	Size  int
	Err   error
}

func (e *PublishRefused) Error() string {
	return fmt.Sprintf("publish %s (%d bytes) refused: %s", e.MsgID, e.Size, e.Err)
}

func (e *PublishRefused) Unwrap() error { return e.Err }

// Permanent implements the classification of KindOf.
func (e *PublishRefused) Permanent() bool { return true }

// permanentPublish says whether a publish error is about the message
// itself against the server's max payload, so that publishing it again can
// never succeed (the producer splits by the limit the server announces, so
// this happens only if the limit shrank under it, on a reconnect to another
// server). Everything else is transient: the session restarts, visibly
// (duplex_source reconnects, last error), and the slot re-sends. That
// includes a stream limit such as max_msg_size or a full store: an
// operator's setting that can be lifted, after which everything arrives.
func permanentPublish(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload)
}

// messageLimit is the largest encoded transaction the producer puts in one
// message: the server's max payload (as it announces it now), at most what
// a flow fetches at once, less room for headers.
func (p *producer) messageLimit() int {
	limit := p.cfg.MaxMessageBytes
	if nc := p.js.Conn(); nc != nil {
		if mp := int(nc.MaxPayload()) - headerRoom; mp > 0 && (limit <= 0 || mp < limit) {
			limit = mp
		}
	}
	if limit <= 0 || limit > fetchMaxBytes-headerRoom {
		limit = fetchMaxBytes - headerRoom
	}
	return limit
}

// outMsg is one message to publish.
type outMsg struct {
	tx   *transform.Tx
	data []byte
}

// fit encodes tx in as many messages as it needs. from[i] is the index in
// c.Changes of the change event i comes from. Live chunks are numbered
// from first; a snapshot chunk's messages are its parts. It dead-letters
// events above max_change_bytes and stores those too large for a message
// in the object store. Without events left it returns nothing.
func (p *producer) fit(ctx context.Context, c *capture.Chunk, tx *transform.Tx, from []int, first int) ([]outMsg, error) {
	limit := p.messageLimit()
	number := func(t *transform.Tx, i int, final bool) {
		if t.Snapshot {
			t.Chunk, t.Part, t.Last = c.Index, i, c.Last
		} else {
			t.Chunk, t.Last = first+i, c.Last && final
		}
	}
	number(tx, 0, true)
	data, err := encodeTx(tx)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", tx.MsgID(), err)
	}
	if len(data) <= limit {
		return []outMsg{{tx: tx, data: data}}, nil
	}
	// The envelope with the widest numbers it can get.
	env := *tx
	env.Events, env.Chunk, env.Part, env.Last = nil, 1<<31, 1<<31, true
	envData, err := json.Marshal(&env)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", tx.MsgID(), err)
	}
	room := limit - len(envData)
	var parts [][]transform.Event
	var cur []transform.Event
	used := 0
	for i := range tx.Events {
		ev := tx.Events[i]
		b, err := json.Marshal(&ev)
		if err != nil {
			return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
		}
		if len(b)+1 > room {
			ch := &c.Changes[from[i]]
			if len(b) > p.maxChange() {
				if err := p.deadLetterTooLarge(ctx, c, &ev, ch, len(b)); err != nil {
					return nil, err
				}
				continue
			}
			if err := p.storeLarge(ctx, c, tx.Redo, i, &ev); err != nil {
				return nil, err
			}
			if b, err = json.Marshal(&ev); err != nil {
				return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
			}
			if len(b)+1 > room {
				if err := p.deadLetterTooLarge(ctx, c, &ev, ch, len(b)); err != nil {
					return nil, err
				}
				continue
			}
		}
		if len(cur) > 0 && used+len(b)+1 > room {
			parts, cur, used = append(parts, cur), nil, 0
		}
		cur = append(cur, ev)
		used += len(b) + 1
	}
	if len(cur) > 0 {
		parts = append(parts, cur)
	}
	out := make([]outMsg, 0, len(parts))
	for i, evs := range parts {
		t := *tx
		t.Events = evs
		number(&t, i, i == len(parts)-1)
		data, err := encodeTx(&t)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", t.MsgID(), err)
		}
		out = append(out, outMsg{tx: &t, data: data})
	}
	return out, nil
}

func (p *producer) maxChange() int {
	if p.cfg.MaxChangeBytes > 0 {
		return p.cfg.MaxChangeBytes
	}
	return DefaultMaxChangeBytes
}

// LargeObjectName is the object holding the Data of event i of a capture
// chunk: <source>:<commit LSN>:c<chunk>:e<i>, with :redo for a redo.
func LargeObjectName(source string, lsn capture.LSN, chunk, i int, redo bool) string {
	name := fmt.Sprintf("%s:%s:c%d:e%d", source, lsn, chunk, i)
	if redo {
		name += ":redo"
	}
	return name
}

// storeLarge puts the event's Data in the object store and replaces it
// with a reference.
func (p *producer) storeLarge(ctx context.Context, c *capture.Chunk, redo bool, i int, ev *transform.Event) error {
	obs, err := p.large.get(ctx, p.js)
	if err != nil {
		return err
	}
	data, err := json.Marshal(ev.Data)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	name := LargeObjectName(p.src.System(), c.Tx.CommitLSN, c.Index, i, redo)
	h := sha256.New()
	h.Write(data)
	info, err := obs.GetInfo(ctx, name)
	switch {
	case err == nil && !info.Deleted && info.Size == uint64(len(data)) && info.Digest == jetstream.GetObjectDigestValue(h):
		// Stored by an earlier capture of the same transaction: putting
		// it again would leave the old chunks for a purge the capture's
		// identity may not make.
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("store large event %s as %s: %w", ev.ID, name, err)
	default:
		if _, err := obs.PutBytes(ctx, name, data); err != nil {
			return fmt.Errorf("store large event %s (%d bytes) as %s: %w", ev.ID, len(data), name, err)
		}
	}
	ev.Data = nil
	ev.DataRef = &transform.DataRef{Bucket: LargeBucket, Object: name, Size: int64(len(data)), Digest: jetstream.GetObjectDigestValue(h)}
	return nil
}

// ResolveData reads back the Data of an event stored in the object store;
// it does nothing for an event that carries its Data.
func ResolveData(ctx context.Context, js jetstream.JetStream, ev *transform.Event) error {
	return resolveData(ctx, js, nil, ev)
}

func resolveData(ctx context.Context, js jetstream.JetStream, l *largeStore, ev *transform.Event) error {
	if ev.DataRef == nil || ev.Data != nil {
		return nil
	}
	var obs jetstream.ObjectStore
	var stream jetstream.Stream
	var err error
	if l != nil {
		obs, stream, err = l.reader(ctx, js)
	} else if obs, err = js.ObjectStore(ctx, ev.DataRef.Bucket); err == nil {
		stream, err = js.Stream(ctx, "OBJ_"+ev.DataRef.Bucket)
	}
	if err != nil {
		return fmt.Errorf("event %s: %w", ev.ID, err)
	}
	b, err := readObject(ctx, obs, stream, ev.DataRef.Bucket, ev.DataRef.Object)
	if err != nil {
		return fmt.Errorf("event %s: read %s from %s: %w", ev.ID, ev.DataRef.Object, ev.DataRef.Bucket, err)
	}
	if want := ev.DataRef.Digest; want != "" {
		h := sha256.New()
		h.Write(b)
		if got := jetstream.GetObjectDigestValue(h); got != want {
			return fmt.Errorf("event %s: %s in %s is not the object the event was published with (digest %s, want %s): %w",
				ev.ID, ev.DataRef.Object, ev.DataRef.Bucket, truncate(got, 20), truncate(want, 20), jetstream.ErrDigestMismatch)
		}
	}
	var data map[string]any
	if err := json.Unmarshal(b, &data); err != nil {
		return fmt.Errorf("event %s: decode %s: %w", ev.ID, ev.DataRef.Object, err)
	}
	ev.Data = data
	return nil
}

// readObject reads an object of an object store bucket by getting its
// meta and then its chunks one by one from the bucket's stream (direct
// gets where the stream allows them), not through a consumer as
// ObjectStore.Get does: a flow's identity may not create consumers
// (FlowPermissions). It checks the size and digest the meta records. A
// missing or deleted object, or a chunk gone, is jetstream.ErrObjectNotFound;
// data that does not match its meta is jetstream.ErrDigestMismatch.
func readObject(ctx context.Context, obs jetstream.ObjectStore, stream jetstream.Stream, bucket, name string) ([]byte, error) {
	info, err := obs.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	subject := "$O." + bucket + ".C." + info.NUID
	out := make([]byte, 0, info.Size)
	h := sha256.New()
	seq := uint64(1)
	for n := uint32(0); n < info.Chunks; n++ {
		m, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("chunk %d of %d is gone: %w", n+1, info.Chunks, jetstream.ErrObjectNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("chunk %d of %d: %w", n+1, info.Chunks, err)
		}
		out = append(out, m.Data...)
		h.Write(m.Data)
		seq = m.Sequence + 1
	}
	if uint64(len(out)) != info.Size || jetstream.GetObjectDigestValue(h) != info.Digest {
		return nil, fmt.Errorf("%d bytes whose digest does not match the %d its meta records: %w", len(out), info.Size, jetstream.ErrDigestMismatch)
	}
	return out, nil
}

// resolve reads back the Data of the events of tx stored in the object
// store, and opens their sealed personal fields (ApplierConfig.PII). An
// object that is gone (expired with the stream's max age), or a value that
// does not open, is dead-lettered and its event left out; any other
// failure is returned.
func (a *Applier) resolve(ctx context.Context, tx *transform.Tx) error {
	for i := 0; i < len(tx.Events); i++ {
		ev := &tx.Events[i]
		var err error
		if a.cfg.Verify != nil && ev.DataRef != nil && ev.Data == nil && ev.DataRef.Digest == "" {
			// A signed message vouches for the object only through its
			// digest.
			err = fmt.Errorf("event %s: %s in %s: the event names no digest of the object: %w", ev.ID, ev.DataRef.Object, ev.DataRef.Bucket, jetstream.ErrDigestMismatch)
		} else {
			err = resolveData(ctx, a.js, &a.large, ev)
		}
		if err == nil && a.cfg.PII != nil {
			// A personal field the flow cannot open (a key id it lacks,
			// a value that does not authenticate) is never applied as
			// ciphertext: its event is dead-lettered, as it came.
			if err := a.cfg.PII.Open(ev); err != nil {
				if err := a.deadLetter(ctx, tx, i, err, 1); err != nil {
					return err
				}
				tx.Events = append(tx.Events[:i:i], tx.Events[i+1:]...)
				i--
				continue
			}
		}
		if err == nil {
			continue
		}
		// Gone, or damaged: dead-lettered, naming the object, rather than
		// retried forever.
		if !errors.Is(err, jetstream.ErrObjectNotFound) && !errors.Is(err, jetstream.ErrDigestMismatch) {
			return fmt.Errorf("flow %s: %w", a.cfg.Flow, err)
		}
		if err := a.deadLetter(ctx, tx, i, err, 1); err != nil {
			return err
		}
		tx.Events = append(tx.Events[:i:i], tx.Events[i+1:]...)
		i--
	}
	return nil
}

// eventRef is what a dead letter of a refused message names of an event.
type eventRef struct {
	ID, Entity, Key string
	Pos             transform.Position
}

func summarize(tx *transform.Tx) []eventRef {
	out := make([]eventRef, len(tx.Events))
	for i, ev := range tx.Events {
		out[i] = eventRef{ID: ev.ID, Entity: ev.Entity, Key: ev.Key, Pos: ev.Pos}
	}
	return out
}

func (p *producer) refused(ctx context.Context, tx *transform.Tx, cause *PublishRefused) error {
	return p.refusedRefs(ctx, summarize(tx), cause)
}

// refusedRefs dead-letters, at capture, the events of a message the server
// refused for good; the slot moves on past them.
func (p *producer) refusedRefs(ctx context.Context, refs []eventRef, cause *PublishRefused) error {
	system := p.src.System()
	p.log.Error("message refused; its events are dead-lettered at capture", slog.String("msg_id", cause.MsgID),
		slog.Int("bytes", cause.Size), slog.Int("events", len(refs)), slog.Any("error", cause.Err))
	for i, r := range refs {
		dl := &DeadLetter{Flow: "capture-" + system, Stage: "capture", Source: system, Entity: r.Entity, Key: r.Key,
			Position: r.Pos, Error: cause.Error(), FailedAt: time.Now().UTC()}
		p.cfg.Stats.update(func(s *SourceCounts) { s.DeadLetters++ })
		if err := publishDeadLetter(ctx, p.js, DLQSubject("capture-"+system), fmt.Sprintf("dlq:capture:%s:e%d", cause.MsgID, i), dl); err != nil {
			return err
		}
	}
	return nil
}

// deadLetterTooLarge dead-letters, at capture, an event above
// max_change_bytes. The row itself stays in the source: the dead letter
// names table, key, size and limit.
func (p *producer) deadLetterTooLarge(ctx context.Context, c *capture.Chunk, ev *transform.Event, ch *capture.Change, size int) error {
	system := p.src.System()
	limit := p.maxChange()
	if size <= limit {
		limit = p.messageLimit() // cannot happen unless Versions alone exceed a message
	}
	cause := fmt.Sprintf("change to %s key %s is %d bytes encoded, above the limit of %d bytes (max_change_bytes)", ch.QualifiedTable(), ev.Key, size, limit)
	dl := &DeadLetter{Flow: "capture-" + system, Stage: "capture", Source: system, Entity: ev.Entity, Key: ev.Key,
		Position: ev.Pos, Error: cause, FailedAt: time.Now().UTC()}
	p.log.Error("change dead-lettered at capture: too large", slog.String("table", ch.QualifiedTable()), slog.String("key", ev.Key),
		slog.Int("bytes", size), slog.Int("limit", limit), slog.String("lsn", c.Tx.CommitLSN.String()))
	p.cfg.Stats.update(func(s *SourceCounts) { s.DeadLetters++ })
	id := fmt.Sprintf("dlq:capture:%s:%s:c%d:%s:size", system, c.Tx.CommitLSN, c.Index, ev.ID)
	return publishDeadLetter(ctx, p.js, DLQSubject("capture-"+system), id, dl)
}
