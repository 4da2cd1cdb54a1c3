package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	StreamName = "DUPLEX"
	DLQStream  = "DUPLEX_DLQ"
)

// Subject is the subject of a source's transactions.
func Subject(source string) string { return "duplex." + source + ".tx" }

// SourceFilter matches every subject of a source.
func SourceFilter(source string) string { return "duplex." + source + ".>" }

// DLQSubject is the subject of a flow's dead letters.
func DLQSubject(flow string) string { return "duplex.dlq." + flow }

// StreamConfig configures the streams. How long applied messages are kept
// (max_age, max_bytes) is not a stream setting: see Retention.
type StreamConfig struct {
	// Sources are the system names that publish (crm, erp).
	Sources []string
	// MaxStoreBytes is the hard ceiling of DUPLEX in bytes (0 = none:
	// JetStream's store or account limit is the ceiling). At the ceiling
	// JetStream refuses new messages (discard new) and never deletes any:
	// publishing waits until Retention removed applied messages.
	MaxStoreBytes int64
	// Duplicates is the deduplication window (default 2m).
	Duplicates time.Duration
	// Replicas for a NATS cluster (default 1).
	Replicas int
	// DLQMaxAge is how long dead letters are kept (0 = DefaultDLQMaxAge;
	// negative = forever).
	DLQMaxAge time.Duration
}

// DefaultDLQMaxAge is how long dead letters are kept by default: 30 days.
const DefaultDLQMaxAge = 30 * 24 * time.Hour

// Validate checks the configuration.
func (c *StreamConfig) Validate() error {
	if len(c.Sources) == 0 {
		return errors.New("stream: no sources")
	}
	for _, s := range c.Sources {
		if s == "" || s == "dlq" || s == "audit" || strings.ContainsAny(s, ".*> ") {
			return fmt.Errorf("stream: %q cannot be a source name (no dots, spaces or wildcards; dlq and audit are reserved: duplex.dlq.> and duplex.audit.> are the subjects of DUPLEX_DLQ and DUPLEX_AUDIT)", s)
		}
	}
	return nil
}

// EnsureStreams creates or updates DUPLEX and DUPLEX_DLQ.
//
// DUPLEX has no age limit and discards new messages at its ceiling, so
// JetStream never deletes a message on its own: only Retention does, and
// only what every flow reading it applied. A stream created by an older
// duplex (limits with max age, discard old) is updated in place; JetStream
// allows changing max age, max bytes and the discard policy.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	subjects := make([]string, len(c.Sources))
	for i, s := range c.Sources {
		subjects[i] = SourceFilter(s)
	}
	maxBytes := c.MaxStoreBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "duplex canonical transactions, one message per source transaction or chunk",
		Subjects:    subjects,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      0,
		MaxBytes:    maxBytes,
		Duplicates:  c.Duplicates,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardNew,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	dlqAge := c.DLQMaxAge
	switch {
	case dlqAge == 0:
		dlqAge = DefaultDLQMaxAge
	case dlqAge < 0:
		dlqAge = 0
	}
	dlqDup := c.Duplicates
	if dlqAge > 0 && dlqAge < dlqDup {
		dlqDup = dlqAge // JetStream refuses a window longer than max age
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DLQStream,
		Description: "duplex dead letters: events that failed permanently, with the reason",
		Subjects:    []string{"duplex.dlq.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      dlqAge,
		Duplicates:  dlqDup,
		Replicas:    c.Replicas,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", DLQStream, err)
	}
	return nil
}
