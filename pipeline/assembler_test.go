package pipeline

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// fakeMsg is a delivered message with a stream sequence.
type fakeMsg struct {
	jetstream.Msg
	seq uint64
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}}, nil
}

func chunk(lsn capture.LSN, idx int, last bool, events ...string) *transform.Tx {
	t := &transform.Tx{Source: "crm", CommitLSN: lsn, Chunk: idx, Last: last}
	for _, e := range events {
		t.Events = append(t.Events, transform.Event{ID: e})
	}
	return t
}

func ids(r *readyTx) string {
	s := ""
	for _, e := range r.tx.Events {
		s += e.ID
	}
	return fmt.Sprintf("%s:%s", r.tx.CommitLSN, s)
}

func TestAssembler_Take(t *testing.T) {
	type in struct {
		seq uint64
		tx  *transform.Tx
	}
	tests := []struct {
		name    string
		msgs    []in
		want    []string
		wantAck uint64 // 0: nothing to ack
		held    int
	}{
		{name: "whole transactions", msgs: []in{{1, chunk(10, 0, true, "a")}, {2, chunk(20, 0, true, "b", "c")}},
			want: []string{"0/A:a", "0/14:bc"}, wantAck: 2},
		{name: "chunks joined in order", msgs: []in{{1, chunk(10, 0, false, "a")}, {2, chunk(10, 1, false, "b")}, {3, chunk(10, 2, true, "c")}},
			want: []string{"0/A:abc"}, wantAck: 3},
		{name: "open transaction at the tail holds its messages", msgs: []in{{1, chunk(10, 0, true, "a")}, {2, chunk(20, 0, false, "b")}},
			want: []string{"0/A:a"}, wantAck: 1, held: 1},
		{name: "nothing complete", msgs: []in{{5, chunk(20, 0, false, "b")}}, want: nil, wantAck: 0, held: 1},
		{name: "a redelivered chunk replaces its twin", msgs: []in{{1, chunk(10, 0, false, "a")}, {2, chunk(10, 0, false, "a")}, {3, chunk(10, 1, true, "b")}},
			want: []string{"0/A:ab"}, wantAck: 3},
		{name: "a complete transaction behind an open one waits", msgs: []in{{1, chunk(10, 0, false, "a")}, {2, chunk(20, 0, true, "b")}},
			want: nil, wantAck: 0, held: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &assembler{}
			for _, m := range tt.msgs {
				a.add(&fakeMsg{seq: m.seq}, m.tx)
			}
			ready, ack := a.take(&chain{})
			var got []string
			for _, r := range ready {
				got = append(got, ids(r))
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("ready = %v, want %v", got, tt.want)
			}
			var ackSeq uint64
			if ack != nil {
				ackSeq = ack.(*fakeMsg).seq
			}
			if ackSeq != tt.wantAck {
				t.Errorf("ack seq = %d, want %d", ackSeq, tt.wantAck)
			}
			if len(a.held) != tt.held {
				t.Errorf("held = %d, want %d", len(a.held), tt.held)
			}
		})
	}
}

func TestAssembler_CompletesLater(t *testing.T) {
	a := &assembler{}
	a.add(&fakeMsg{seq: 1}, chunk(10, 0, false, "a"))
	if r, ack := a.take(&chain{}); len(r) != 0 || ack != nil {
		t.Fatalf("take = %d ready, ack %v; want none", len(r), ack)
	}
	a.add(&fakeMsg{seq: 2}, chunk(10, 1, true, "b"))
	r, ack := a.take(&chain{})
	if len(r) != 1 || ids(r[0]) != "0/A:ab" || ack.(*fakeMsg).seq != 2 {
		t.Fatalf("take = %v ack %v", r, ack)
	}
	if len(a.held) != 0 {
		t.Errorf("held = %d after completion", len(a.held))
	}
}

type permanentErr struct{}

func (permanentErr) Error() string   { return "bad" }
func (permanentErr) Permanent() bool { return true }

func TestKindOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Kind
	}{
		{name: "apply error", err: fmt.Errorf("wrapped: %w", &ApplyError{Kind: Waiting}), want: Waiting},
		{name: "permanent method", err: fmt.Errorf("x: %w", permanentErr{}), want: Permanent},
		{name: "unknown", err: errors.New("connection reset"), want: Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KindOf(tt.err); got != tt.want {
				t.Errorf("KindOf = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWithoutEvent(t *testing.T) {
	txs := []*transform.Tx{chunk(10, 0, true, "a", "b", "c")}
	out := withoutEvent(txs, 0, 1)
	if got := ids(&readyTx{tx: out[0]}); got != "0/A:ac" {
		t.Errorf("withoutEvent = %s", got)
	}
	if got := ids(&readyTx{tx: txs[0]}); got != "0/A:abc" {
		t.Errorf("the input was changed: %s", got)
	}
}
