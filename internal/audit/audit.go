package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream is the audit stream's name.
const Stream = "DUPLEX_AUDIT"

// SubjectPrefix starts every audit subject; a source cannot be named
// "audit" (pipeline.StreamConfig.Validate), so it overlaps no stream of
// duplex's.
const SubjectPrefix = "duplex.audit."

// Subject is the subject of a command's records: "dlq retry" is
// duplex.audit.dlq-retry.
func Subject(command string) string {
	return SubjectPrefix + strings.Join(strings.Fields(command), "-")
}

// Outcomes of a Record.
const (
	OK     = "ok"
	Failed = "failed"
)

// Record is one operator action.
type Record struct {
	// Seq is the record's DUPLEX_AUDIT sequence (set by List).
	Seq uint64 `json:"seq,omitempty"`
	// Time is when the command ended (UTC).
	Time time.Time `json:"time"`
	// User and Host are the OS user that ran the command and the
	// machine's host name.
	User string `json:"user"`
	Host string `json:"host"`
	// Command is the duplex command: replay, dlq retry, dlq drop,
	// backfill, resync.
	Command string `json:"command"`
	// Args are the command's arguments, secrets replaced (RedactArgs).
	Args []string `json:"args"`
	// Outcome is OK or Failed.
	Outcome string `json:"outcome"`
	// Detail says what the command did, or why it failed (at most
	// MaxDetail bytes, secrets replaced).
	Detail string `json:"detail,omitempty"`
}

// MaxDetail bounds Record.Detail in bytes.
const MaxDetail = 1000

// ensure returns DUPLEX_AUDIT, creating it if absent: a file-backed
// stream that keeps its records with no age or size limit and refuses
// deleting or purging them. replicas is the number of copies on a
// cluster (0: 1). An existing stream is left as it is, so that limits an
// operator set on it (a retention period of their own) stay.
func ensure(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	if replicas <= 0 {
		replicas = 1
	}
	s, err := js.Stream(ctx, Stream)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s: %w", Stream, err)
	}
	s, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "duplex audit: operator actions (replay, dlq retry, dlq drop, backfill, resync), who, when, arguments, outcome",
		Subjects:    []string{SubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    replicas,
		DenyDelete:  true,
		DenyPurge:   true,
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return js.Stream(ctx, Stream) // created meanwhile by another command
	}
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", Stream, err)
	}
	return s, nil
}

// Ready creates DUPLEX_AUDIT if needed: a command calls it before it
// acts, so that an action whose record could not be kept is not run.
func Ready(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := ensure(ctx, js, replicas)
	return err
}

// Append stores r in DUPLEX_AUDIT (created if needed) and returns its
// sequence, once JetStream acknowledged it.
func Append(ctx context.Context, js jetstream.JetStream, replicas int, r Record) (uint64, error) {
	if _, err := ensure(ctx, js, replicas); err != nil {
		return 0, err
	}
	r.Seq = 0
	if len(r.Detail) > MaxDetail {
		r.Detail = r.Detail[:MaxDetail] + "…"
	}
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("audit record: %w", err)
	}
	ack, err := js.Publish(ctx, Subject(r.Command), b)
	if err != nil {
		return 0, fmt.Errorf("append to %s: %w", Stream, err)
	}
	return ack.Sequence, nil
}

// List returns the last limit records (all with limit 0), oldest first.
// No stream yet means no records.
func List(ctx context.Context, js jetstream.JetStream, limit int) ([]Record, error) {
	s, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", Stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", Stream, err)
	}
	st := info.State
	if st.Msgs == 0 {
		return nil, nil
	}
	start := st.FirstSeq
	if limit > 0 && st.LastSeq-st.FirstSeq+1 > uint64(limit) {
		start = st.LastSeq - uint64(limit) + 1
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", Stream, err)
	}
	var out []Record
	for last := start - 1; last < st.LastSeq; {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", Stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			var r Record
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				r = Record{Outcome: "?", Detail: "undecodable record: " + err.Error()}
			}
			if md, err := m.Metadata(); err == nil {
				r.Seq, last = md.Sequence.Stream, md.Sequence.Stream
			}
			out = append(out, r)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("read %s: %w", Stream, err)
		}
		if got == 0 {
			break
		}
	}
	return out, nil
}
