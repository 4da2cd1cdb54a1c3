package pipeline

import (
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTx is a complete source transaction and the messages it came in.
type readyTx struct {
	tx     *transform.Tx
	chunks map[int]*transform.Tx
	last   int // index of the last chunk, -1 until seen
	seqs   []uint64
	first  uint64
	// lastAt is when its last message so far came (incomplete.go).
	lastAt time.Time
}

func (r *readyTx) complete() bool {
	if r.last < 0 {
		return false
	}
	for i := 0; i <= r.last; i++ {
		if r.chunks[i] == nil {
			return false
		}
	}
	return true
}

// assembler rebuilds whole transactions from chunk messages, in stream
// order, and says which message may be acknowledged (ack-all) once the
// ready ones are applied.
type assembler struct {
	queue []*readyTx
	held  []jetstream.Msg // delivered, not yet acknowledged
}

func (a *assembler) skip(m jetstream.Msg) { a.held = append(a.held, m) }

// tailChunks is the number of chunks received of the last transaction in
// the queue when it is still incomplete (0 otherwise): chunks of a source
// transaction are contiguous in the stream, so only the last one can be.
func (a *assembler) tailChunks() int {
	if len(a.queue) == 0 {
		return 0
	}
	r := a.queue[len(a.queue)-1]
	if r.tx.Snapshot || r.complete() {
		return 0
	}
	return len(r.chunks)
}

func (a *assembler) add(m jetstream.Msg, tx *transform.Tx) {
	a.held = append(a.held, m)
	seq := seqOf(m)
	var r *readyTx
	for _, q := range a.queue {
		if q.tx.CommitLSN == tx.CommitLSN && q.tx.Source == tx.Source && q.tx.Snapshot == tx.Snapshot && q.tx.Redo == tx.Redo && (!tx.Snapshot || q.tx.Chunk == tx.Chunk && q.tx.Part == tx.Part) {
			r = q
			break
		}
	}
	if r == nil {
		r = &readyTx{tx: tx, chunks: map[int]*transform.Tx{}, last: -1, first: seq}
		a.queue = append(a.queue, r)
	}
	idx := tx.Chunk
	if tx.Snapshot {
		idx = 0 // a snapshot chunk is a whole of its own
	}
	r.chunks[idx] = tx
	r.seqs = append(r.seqs, seq)
	r.lastAt = time.Now()
	if tx.Last {
		r.last = idx
	}
}

// take returns the transactions that may be applied now, in the order to
// apply them, and the message to acknowledge after they are applied.
//
// A transaction may be applied when it is complete and follows (see
// chain.follows) what was applied or is taken before it. Normally that is
// the head of the queue in stream order. When a publish failed while
// later ones were stored (a NATS cluster leader change), a transaction
// comes after its successors: those wait in the queue, unacknowledged,
// and the late one is taken first, then them. A streamed transaction is
// never taken ahead of an earlier waiting one with a lower commit LSN (it
// would make the sink skip that one as already applied), nor a snapshot
// chunk ahead of anything earlier waiting.
func (a *assembler) take(c *chain) ([]*readyTx, jetstream.Msg) {
	var ready []*readyTx
	taken := make([]bool, len(a.queue))
	hi := c.applied
	for progress := true; progress; {
		progress = false
		waiting := false
		bound := capture.LSN(^uint64(0)) // lowest commit LSN of an earlier streamed one left
		for i, r := range a.queue {
			if taken[i] {
				continue
			}
			ok := r.complete() && c.follows(r.tx, hi)
			if ok && r.tx.Snapshot {
				ok = !waiting
			} else if ok {
				ok = r.tx.CommitLSN < bound
			}
			if !ok {
				waiting = true
				if !r.tx.Snapshot {
					bound = min(bound, r.tx.CommitLSN)
				}
				continue
			}
			taken[i], progress = true, true
			ready = append(ready, r)
			hi = max(hi, r.tx.CommitLSN)
		}
	}
	rest := a.queue[:0:0]
	for i, r := range a.queue {
		if !taken[i] {
			rest = append(rest, r)
		}
	}
	a.queue = rest
	for _, r := range ready {
		if len(r.chunks) > 1 {
			all := &transform.Tx{}
			*all = *r.chunks[r.last]
			all.Chunk = 0
			all.Events = nil
			for i := 0; i <= r.last; i++ {
				all.Events = append(all.Events, r.chunks[i].Events...)
			}
			r.tx = all
		} else {
			r.tx = r.chunks[r.last]
		}
	}
	limit := ^uint64(0)
	if len(a.queue) > 0 {
		limit = a.queue[0].first
	}
	var ack jetstream.Msg
	i := 0
	for i < len(a.held) && seqOf(a.held[i]) < limit {
		ack = a.held[i]
		i++
	}
	a.held = append([]jetstream.Msg(nil), a.held[i:]...)
	return ready, ack
}
