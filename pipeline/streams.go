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

// StreamConfig sets retention of the streams.
type StreamConfig struct {
	// Sources are the system names that publish (crm, erp).
	Sources []string
	// MaxAge and MaxBytes bound retention of DUPLEX (0 = unlimited).
	MaxAge   time.Duration
	MaxBytes int64
	// Duplicates is the deduplication window (default 2m).
	Duplicates time.Duration
	// Replicas for a NATS cluster (default 1).
	Replicas int
	// DLQMaxAge bounds retention of dead letters (0 = unlimited).
	DLQMaxAge time.Duration
}

// Validate checks the configuration.
func (c *StreamConfig) Validate() error {
	if len(c.Sources) == 0 {
		return errors.New("stream: no sources")
	}
	for _, s := range c.Sources {
		if s == "" || s == "dlq" || strings.ContainsAny(s, ".*> ") {
			return fmt.Errorf("stream: %q cannot be a source name (no dots, spaces or wildcards; dlq is reserved)", s)
		}
	}
	return nil
}

// EnsureStreams creates or updates DUPLEX and DUPLEX_DLQ.
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
	maxBytes := c.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "duplex canonical transactions, one message per source transaction or chunk",
		Subjects:    subjects,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.MaxAge,
		MaxBytes:    maxBytes,
		Duplicates:  c.Duplicates,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DLQStream,
		Description: "duplex dead letters: events that failed permanently, with the reason",
		Subjects:    []string{"duplex.dlq.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.DLQMaxAge,
		Duplicates:  c.Duplicates,
		Replicas:    c.Replicas,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", DLQStream, err)
	}
	return nil
}
