package pipeline

import (
	"fmt"
	"testing"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

func after(tx *transform.Tx, prev capture.LSN) *transform.Tx { tx.PrevLSN = prev; return tx }

func snap(lsn capture.LSN, idx int, events ...string) *transform.Tx {
	t := chunk(lsn, idx, true, events...)
	t.Snapshot = true
	return t
}

// TestAssembler_TakeInPublishOrder: transactions stored by JetStream after
// their successors (a publish that failed while later ones were stored,
// then published again) are applied before them, and nothing after a
// waiting transaction is acknowledged or overtakes it.
func TestAssembler_TakeInPublishOrder(t *testing.T) {
	type in struct {
		seq uint64
		tx  *transform.Tx
	}
	tests := []struct {
		name    string
		applied capture.LSN
		msgs    []in
		want    []string
		wantAck uint64
		held    int
	}{
		{name: "in order", applied: 5, msgs: []in{{1, after(chunk(10, 0, true, "a"), 5)}, {2, after(chunk(20, 0, true, "b"), 10)}},
			want: []string{"0/A:a", "0/14:b"}, wantAck: 2},
		{name: "successors wait for the late one", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, after(chunk(30, 0, true, "c"), 20)}, {3, chunk(10, 0, true, "a")}},
			want: []string{"0/A:a", "0/14:b", "0/1E:c"}, wantAck: 3},
		{name: "the late one not come yet: nothing applied or acknowledged", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, after(chunk(30, 0, true, "c"), 20)}},
			want: nil, wantAck: 0, held: 2},
		{name: "a first-of-session transaction does not overtake a lower waiting one", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, chunk(40, 0, true, "d")}},
			want: nil, wantAck: 0, held: 2},
		{name: "a snapshot chunk behind a waiting one waits", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, snap(3, 0, "s")}},
			want: nil, wantAck: 0, held: 2},
		{name: "the late one passes a waiting snapshot chunk", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, snap(15, 0, "s")}, {3, chunk(10, 0, true, "a")}},
			want: []string{"0/A:a", "0/14:b", "0/F:s"}, wantAck: 3},
		{name: "a late chunk of a successor", applied: 5,
			msgs: []in{{1, after(chunk(20, 0, false, "b"), 10)}, {2, chunk(10, 0, true, "a")}, {3, after(chunk(20, 1, true, "c"), 10)}},
			want: []string{"0/A:a", "0/14:bc"}, wantAck: 3},
		{name: "duplicates of applied transactions pass", applied: 30,
			msgs: []in{{1, after(chunk(20, 0, true, "b"), 10)}, {2, after(chunk(30, 0, true, "c"), 20)}},
			want: []string{"0/14:b", "0/1E:c"}, wantAck: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &assembler{}
			for _, m := range tt.msgs {
				a.add(&fakeMsg{seq: m.seq}, m.tx)
			}
			c := &chain{applied: tt.applied, known: true}
			ready, ack := a.take(c)
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

// TestAssembler_GaveUp: once the flow gave up waiting for a position, its
// successors are taken.
func TestAssembler_GaveUp(t *testing.T) {
	a := &assembler{}
	a.add(&fakeMsg{seq: 1}, after(chunk(20, 0, true, "b"), 10))
	c := &chain{applied: 5, known: true}
	if r, _ := a.take(c); len(r) != 0 {
		t.Fatalf("took %d before giving up", len(r))
	}
	if a.waitingHead(c) == nil {
		t.Fatal("waitingHead = nil, want the transaction at 0/14")
	}
	c.gaveUp = map[capture.LSN]bool{10: true}
	if r, ack := a.take(c); len(r) != 1 || ack == nil {
		t.Fatalf("take after giving up = %d ready, ack %v", len(r), ack)
	}
}
