package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// DeadLetter is an event (or a captured change that could not become one)
// that failed permanently, with the reason.
type DeadLetter struct {
	Flow     string             `json:"flow"`
	Stage    string             `json:"stage"` // "capture" or "apply"
	Source   string             `json:"source"`
	Entity   string             `json:"entity,omitempty"`
	Key      string             `json:"key,omitempty"`
	Position transform.Position `json:"position"`
	Error    string             `json:"error"`
	Attempts int                `json:"attempts,omitempty"`
	FailedAt time.Time          `json:"failed_at"`
	// Event is the original canonical event (stage apply).
	Event *transform.Event `json:"event,omitempty"`
	// Change is the captured row change that could not be normalized
	// (stage capture).
	Change *capture.Change `json:"change,omitempty"`
	// StreamSeq is the DUPLEX sequence of the message that carried it.
	StreamSeq uint64 `json:"stream_seq,omitempty"`
}

// publishDeadLetter stores a dead letter durably (synchronous publish) so
// that the message carrying it may be acknowledged afterwards.
func publishDeadLetter(ctx context.Context, js jetstream.JetStream, subject, id string, dl *DeadLetter) error {
	b, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encode dead letter %s: %w", id, err)
	}
	if nc := js.Conn(); nc != nil && int64(len(b)) > nc.MaxPayload()-headerRoom && (dl.Change != nil || dl.Event != nil && dl.Event.Data != nil) {
		// The row is too large to keep in a dead letter: name it only
		// (entity, key, position); it stays in the source.
		slim := *dl
		slim.Change = nil
		if dl.Event != nil {
			ev := *dl.Event
			ev.Data = nil
			slim.Event = &ev
		}
		slim.Error += fmt.Sprintf(" (the change, %d bytes as a dead letter, is not kept)", len(b))
		if b, err = json.Marshal(&slim); err != nil {
			return fmt.Errorf("encode dead letter %s: %w", id, err)
		}
	}
	msg := nats.NewMsg(subject)
	msg.Data = b
	if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("publish dead letter %s: %w", id, err)
	}
	return nil
}

// StoredDeadLetter is a dead letter as kept in DUPLEX_DLQ.
type StoredDeadLetter struct {
	Seq    uint64    `json:"seq"`
	Stored time.Time `json:"stored"`
	DeadLetter
}

// ListDeadLetters returns the dead letters of a flow ("" for all), oldest
// first, at most limit of the newest (0: all).
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, flow string, limit int) ([]StoredDeadLetter, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	subject := "duplex.dlq.>"
	if flow != "" {
		subject = DLQSubject(flow)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	if n == 0 {
		return nil, nil
	}
	var out []StoredDeadLetter
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	for uint64(len(out)) < n {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("dead letters: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			sd := StoredDeadLetter{}
			if md != nil {
				sd.Seq, sd.Stored = md.Sequence.Stream, md.Timestamp
			}
			if err := json.Unmarshal(m.Data(), &sd.DeadLetter); err != nil {
				sd.Error = "undecodable dead letter: " + err.Error()
			}
			out = append(out, sd)
		}
		if got == 0 {
			break
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// GetDeadLetter reads one dead letter by its DUPLEX_DLQ sequence.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (*StoredDeadLetter, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	sd := &StoredDeadLetter{Seq: raw.Sequence, Stored: raw.Time}
	if err := json.Unmarshal(raw.Data, &sd.DeadLetter); err != nil {
		return nil, fmt.Errorf("dead letter %d: decode: %w", seq, err)
	}
	return sd, nil
}

// DropDeadLetter removes a dead letter.
func DropDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) error {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("dead letter %d: delete: %w", seq, err)
	}
	return nil
}

// CountDeadLetters returns the number of dead letters per flow.
func CountDeadLetters(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("duplex.dlq.>"))
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	out := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		out[strings.TrimPrefix(subj, "duplex.dlq.")] = n
	}
	return out, nil
}

// NewerChanges reads the source's stream after a dead letter's message and
// returns, for the dead letter's entity and key, whether a newer event
// deleted the row and which fields newer events wrote. A retried dead
// letter must not overwrite them: a newer event already applied wins.
func NewerChanges(ctx context.Context, js jetstream.JetStream, dl *DeadLetter) (deleted bool, fields map[string]bool, err error) {
	fields = map[string]bool{}
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		return false, nil, fmt.Errorf("stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, nil, fmt.Errorf("stream: %w", err)
	}
	start := dl.StreamSeq + 1
	if dl.StreamSeq == 0 {
		start = info.State.FirstSeq
	}
	if start > info.State.LastSeq {
		return false, fields, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{Subject(dl.Source)},
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start})
	if err != nil {
		return false, nil, fmt.Errorf("stream: %w", err)
	}
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second), jetstream.FetchMaxBytes(8<<20))
		if err != nil {
			return false, nil, fmt.Errorf("stream: %w", err)
		}
		got, last := 0, uint64(0)
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			if md != nil {
				last = md.Sequence.Stream
			}
			var tx transform.Tx
			if decodeTx(m.Data(), &tx) != nil {
				continue
			}
			for _, ev := range tx.Events {
				if ev.DataRef != nil && ev.Entity == dl.Entity && ev.Key == dl.Key {
					if err := ResolveData(ctx, js, &ev); err != nil {
						return false, nil, fmt.Errorf("stream: %w", err)
					}
				}
				if ev.Entity != dl.Entity || ev.Pos.Less(dl.Position) || ev.Pos == dl.Position {
					continue
				}
				switch {
				case ev.Op == transform.OpTruncate:
					deleted = true
				case ev.Key != dl.Key:
				case ev.Op == transform.OpDelete:
					deleted = true
				default:
					deleted = false // re-created later
					for f := range ev.Data {
						// A field the newer change left unchanged is no
						// newer write of it.
						if !slices.Contains(ev.Unchanged, f) {
							fields[f] = true
						}
					}
				}
			}
		}
		if got == 0 || last >= info.State.LastSeq {
			return deleted, fields, nil
		}
	}
}

// RecentDeadLetters returns the newest n dead letters of every flow,
// newest first, reading only the end of the stream.
func RecentDeadLetters(ctx context.Context, js jetstream.JetStream, n int) ([]StoredDeadLetter, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	var out []StoredDeadLetter
	for seq := info.State.LastSeq; seq >= info.State.FirstSeq && seq > 0 && len(out) < n; seq-- {
		sd, err := GetDeadLetter(ctx, js, seq)
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // dropped
			}
			return out, err
		}
		out = append(out, *sd)
	}
	return out, nil
}

func (a *Applier) deadLetter(ctx context.Context, tx *transform.Tx, ei int, cause error, attempts int) error {
	ev := tx.Events[ei]
	if ev.DataRef != nil {
		ev.Data = nil // it stays in the object store: a dead letter must fit a message
	}
	if a.cfg.PII != nil && ev.Data != nil {
		// Personal fields stay sealed in a dead letter (the flow opened
		// them to apply); Seal leaves the applied event's map alone.
		if err := a.cfg.PII.Seal(&ev); err != nil {
			ev.Data = nil
			cause = fmt.Errorf("%w (the change is not kept: %s)", cause, err.Error())
		}
	}
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: ev.Source, Entity: ev.Entity, Key: ev.Key, Position: ev.Pos,
		Error: cause.Error(), Attempts: attempts, FailedAt: time.Now().UTC(), Event: &ev}
	a.log.Error("event dead-lettered", slog.String("event", ev.ID), slog.String("entity", ev.Entity), slog.String("key", ev.Key), slog.Any("error", cause))
	a.cfg.Stats.update(func(s *FlowCounts) { s.DeadLetters++ })
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

func (p *producer) deadLetter(ctx context.Context, c *capture.Chunk, index int, ch *capture.Change, cause error) error {
	system := p.src.System()
	dl := &DeadLetter{Flow: "capture-" + system, Stage: "capture", Source: system, Error: cause.Error(), FailedAt: time.Now().UTC(), Change: mappedOnly(p.cfg.Mapping, system, ch),
		Position: transform.Position{LSN: c.Tx.CommitLSN, CommitTime: c.Tx.CommitTime, Xid: c.Tx.Xid, Index: index}}
	var fe *transform.FieldError
	var oe *transform.OwnershipError
	if errors.As(cause, &fe) {
		dl.Entity, dl.Key = fe.Entity, fe.Key
	} else if errors.As(cause, &oe) {
		dl.Entity, dl.Key = oe.Entity, oe.Key
	} else if e := p.cfg.Mapping.Source(system, ch.QualifiedTable()); e != nil {
		dl.Entity = e.Name
	}
	p.log.Error("change dead-lettered at capture", slog.String("table", ch.QualifiedTable()), slog.String("lsn", c.Tx.CommitLSN.String()), slog.Any("error", cause))
	p.cfg.Stats.update(func(s *SourceCounts) { s.DeadLetters++ })
	id := fmt.Sprintf("dlq:capture:%s:%s:%d", system, c.Tx.CommitLSN, index)
	return publishDeadLetter(ctx, p.js, DLQSubject("capture-"+system), id, dl)
}
