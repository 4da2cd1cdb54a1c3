package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
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
	msg := nats.NewMsg(subject)
	msg.Data = b
	if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("publish dead letter %s: %w", id, err)
	}
	return nil
}
