package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/transform"
)

// RetryOutcome says what a retried dead letter did.
type RetryOutcome struct {
	Seq     uint64
	Applied bool
	// Fields written; Superseded lists the fields left out because a newer
	// event of the same key wrote them (or "row deleted").
	Fields     []string
	Superseded []string
}

func (o RetryOutcome) String() string {
	switch {
	case o.Applied && len(o.Superseded) > 0:
		return fmt.Sprintf("dead letter %d applied (%s); left to newer events: %s", o.Seq, strings.Join(o.Fields, ", "), strings.Join(o.Superseded, ", "))
	case o.Applied:
		return fmt.Sprintf("dead letter %d applied (%s)", o.Seq, strings.Join(o.Fields, ", "))
	default:
		return fmt.Sprintf("dead letter %d superseded by newer events (%s): nothing to apply; removed", o.Seq, strings.Join(o.Superseded, ", "))
	}
}

// PlanRetry decides what retrying the dead letter sd writes, in order with
// respect to newer events of the same entity and key on the stream (read
// with NewerChanges): a newer delete (or truncate) supersedes the whole
// event; of an upsert, the fields a newer event wrote are left to it and
// only the rest (with the key fields keyFields) is written. It returns the
// transaction to apply, marked Redo (it is older than what the target
// applied), or nil when nothing is left to write; the outcome lists the
// fields written and superseded, sorted.
//
// Errors: a dead letter that holds a captured change rather than an event
// (stage capture) cannot be retried; reading the stream can fail.
func PlanRetry(ctx context.Context, js jetstream.JetStream, sd *StoredDeadLetter, keyFields []string) (*transform.Tx, RetryOutcome, error) {
	out := RetryOutcome{Seq: sd.Seq}
	dl := &sd.DeadLetter
	if dl.Event == nil {
		return nil, out, fmt.Errorf("dead letter %d (%s, stage %s) holds a captured change, not an event: fix the row at the source (an update carries it again), then drop the dead letter", sd.Seq, dl.Flow, dl.Stage)
	}
	deleted, newer, err := NewerChanges(ctx, js, dl)
	if err != nil {
		return nil, out, fmt.Errorf("dead letter %d: read newer events: %w", sd.Seq, err)
	}
	if deleted {
		out.Superseded = []string{"row deleted by a newer event"}
		return nil, out, nil
	}
	ev := *dl.Event
	if err := ResolveData(ctx, js, &ev); err != nil {
		return nil, out, fmt.Errorf("dead letter %d: %w", sd.Seq, err)
	}
	ev.Redo = true
	if ev.Op == transform.OpUpsert {
		data := map[string]any{}
		for k, v := range ev.Data {
			switch {
			case slices.Contains(keyFields, k):
				data[k] = v
			case newer[k]:
				out.Superseded = append(out.Superseded, k)
			default:
				data[k] = v
				out.Fields = append(out.Fields, k)
			}
		}
		slices.Sort(out.Fields)
		slices.Sort(out.Superseded)
		if len(out.Fields) == 0 && len(out.Superseded) > 0 {
			return nil, out, nil
		}
		ev.Data = data
	} else {
		out.Fields = []string{string(ev.Op)}
	}
	tx := &transform.Tx{Version: transform.SchemaVersion, Source: ev.Source, CommitLSN: ev.Pos.LSN, CommitTime: ev.Pos.CommitTime, Xid: ev.Pos.Xid,
		Last: true, Redo: true, Events: []transform.Event{ev}}
	return tx, out, nil
}
