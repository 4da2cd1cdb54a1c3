package pipeline

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Kind says how the pipeline treats a failed apply.
type Kind int

const (
	// Transient failures (connection lost, target down, serialization
	// failure) are retried without limit.
	Transient Kind = iota
	// Permanent failures (bad value, constraint violation) go to the dead
	// letters.
	Permanent
	// Waiting failures (a referenced row has not arrived yet; a shared
	// field's local write not yet recorded by its capture) are retried a
	// bounded number of times (MaxWaitAttempts), or, when the ApplyError
	// sets RetryAfter, quickly for a bounded time (MaxWait), then
	// dead-lettered.
	Waiting
)

func (k Kind) String() string {
	switch k {
	case Permanent:
		return "permanent"
	case Waiting:
		return "waiting"
	}
	return "transient"
}

// ApplyError is what a Sink returns when it could not apply a batch. Tx and
// Event locate the culprit in the batch when the sink knows it (-1 when not).
type ApplyError struct {
	Kind  Kind
	Tx    int
	Event int
	Err   error
	// RetryAfter, when set, is a short, expected wait (another component
	// is about to catch up): retry after it, quietly, instead of backing
	// off. On a Waiting error the wait is bounded by time (MaxWait).
	RetryAfter time.Duration
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("%s apply error: %v", e.Kind, e.Err)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// KindOf classifies an error: an *ApplyError's kind; an error with a
// Permanent() bool method that says true; otherwise Transient.
func KindOf(err error) Kind {
	var ae *ApplyError
	if errors.As(err, &ae) {
		return ae.Kind
	}
	var p interface{ Permanent() bool }
	if errors.As(err, &p) && p.Permanent() {
		return Permanent
	}
	return Transient
}

// IsStreamFull says whether err is JetStream refusing a message for lack
// of room: the stream at its max bytes with discard new ("maximum bytes
// exceeded") or the server's or account's store exhausted ("insufficient
// resources"). It passes once the flows applied enough and Retention
// removed it: transient, but worth showing.
func IsStreamFull(err error) bool {
	var ae *jetstream.APIError
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.ErrorCode {
	case 10023: // JSInsufficientResourcesErr
		return true
	case 10077: // JSStreamStoreFailedF, with the store's error
		return strings.Contains(ae.Description, "maximum bytes exceeded")
	}
	return false
}
