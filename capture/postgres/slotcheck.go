package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// A slot only starts where its client left it if it is the slot duplex
// created, in the cluster duplex created it in, with the WAL it needs.
// PostgreSQL does not say so when it is not: a slot dropped and created
// again (by an operator, a tool, a restore) starts at its new consistent
// point, and the changes committed in between never arrive. So duplex
// records the slot it creates (pgstate.SlotRecord) and, before every
// session, compares the slot with the record (checkSlot).
//
// The rule for a replaced slot rests on one property of PostgreSQL: a
// logical slot's confirmed_flush_lsn moves forward only when its client
// reports a flush position (a standby status update) or someone calls
// pg_replication_slot_advance; a slot created anew starts at the server's
// current WAL position, which is beyond every position the server had
// handed out before. duplex records a position in duplex.slots (a
// committed write) before it ever reports it flushed (recordConfirmed), so
// the recorded position is an upper bound of everything the server heard
// from duplex. Hence, for the slot duplex created:
//
//	slot confirmed_flush_lsn <= recorded confirmed position
//
// always holds, whatever crashed when: a duplex killed after recording a
// position but before reporting it leaves the slot below the record; a
// PostgreSQL crash can take the slot back to the position saved at its
// last checkpoint, also below. A slot above the record was therefore
// replaced, or moved by another client: in both cases changes were skipped.
// The rule never fires on a restart, and misses nothing that matters: a
// slot re-created with nothing committed in between is at most at the
// recorded position, and skipped nothing.

// Recording the confirmed position costs one small committed write on the
// source. The capture records when what it confirms moved past the record
// because changes became durable downstream (at most once a status
// interval), when it moved by recordStep, or, for a slot kept moving only
// by WAL duplex does not publish, at most every idleRecordEvery once that
// WAL exceeds ownWALSlack beyond duplex's own last write (so that the
// write does not cause the next one on an idle database).
const (
	recordStep      = 16 << 20 // bytes of WAL
	ownWALSlack     = 1 << 10  // bytes of WAL
	idleRecordEvery = 5 * time.Second
)

// SlotLostError is returned when the slot is not the one duplex created or
// can no longer give the changes duplex expects. It is permanent: no
// retry helps; `duplex resync` recovers (a backfill of the source's
// tables).
type SlotLostError struct {
	System string
	Slot   string
	// Reason is one of "dropped", "replaced", "wal lost" and "other
	// cluster".
	Reason string
	// Expected is the highest position duplex recorded having confirmed;
	// Found the slot's confirmed_flush_lsn (0 when the slot is missing).
	Expected, Found capture.LSN
	// ExpectedSystem and FoundSystem are the system identifiers of the
	// cluster the slot was created in and of the server now.
	ExpectedSystem, FoundSystem string
	// Flows are the flows that read this source, for the recovery hint.
	Flows []string
}

// Permanent says that retrying does not help.
func (e *SlotLostError) Permanent() bool { return true }

func (e *SlotLostError) Error() string {
	var what string
	switch e.Reason {
	case "other cluster":
		what = fmt.Sprintf("slot %s was created by duplex in the cluster with system identifier %s, but this server's is %s "+
			"(a restore from a dump, or another cluster): changes after %s were not captured", e.Slot, e.ExpectedSystem, e.FoundSystem, e.Expected)
	case "dropped":
		what = fmt.Sprintf("slot %s no longer exists: duplex last confirmed %s on it, and the changes after that are lost with it", e.Slot, e.Expected)
	case "wal lost":
		what = fmt.Sprintf("slot %s was invalidated (wal_status lost: the server removed WAL it still needed, see max_slot_wal_keep_size): "+
			"duplex last confirmed %s, the slot is at %s, and the changes after that can no longer be read", e.Slot, e.Expected, e.Found)
	default:
		what = fmt.Sprintf("slot %s was dropped and created again, or moved by another client: duplex last confirmed %s but the slot is at %s "+
			"(confirmed_flush_lsn), so the changes between were skipped", e.Slot, e.Expected, e.Found)
	}
	hint := "duplex resync --flow FLOW"
	if len(e.Flows) > 0 {
		var cmds []string
		for _, f := range e.Flows {
			cmds = append(cmds, "duplex resync --flow "+f)
		}
		hint = strings.Join(cmds, "; ")
	}
	return fmt.Sprintf("capture %s: %s; refusing to stream from it. To recover, run `%s`: it records the current slot and backfills the source's tables, after which duplex verify agrees", e.System, what, hint)
}

// slotState is what pg_replication_slots shows of a slot.
type slotState struct {
	exists    bool
	confirmed capture.LSN
	// walStatus is the slot's wal_status (PostgreSQL 13 and later):
	// reserved, extended, unreserved or lost. "lost" means the WAL the
	// slot needs was removed and the slot can no longer be used
	// (https://www.postgresql.org/docs/current/view-pg-replication-slots.html).
	walStatus string
}

// readSlotState reads the slot's row of pg_replication_slots.
func readSlotState(ctx context.Context, q pgstate.Querier, slot string) (slotState, error) {
	var st slotState
	var confirmed string
	err := q.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn::text, '0/0'), coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed, &st.walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read slot %s: %w", slot, err)
	}
	st.exists = true
	if st.confirmed, err = capture.ParseLSN(confirmed); err != nil {
		return st, fmt.Errorf("read slot %s: %w", slot, err)
	}
	return st, nil
}

// checkSlot compares the slot as the server shows it (st, in the cluster
// whose system identifier is system) with duplex's record of it; nil means
// it is the slot duplex created and has every change since duplex last
// confirmed. The rule is explained at the top of this file.
func checkSlot(rec pgstate.SlotRecord, system string, st slotState) *SlotLostError {
	e := &SlotLostError{Slot: rec.Slot, Expected: rec.ConfirmedLSN, Found: st.confirmed, ExpectedSystem: rec.SystemIdentifier, FoundSystem: system}
	switch {
	case rec.SystemIdentifier != system:
		e.Reason = "other cluster"
	case !st.exists:
		e.Reason = "dropped"
	case st.walStatus == "lost":
		e.Reason = "wal lost"
	case st.confirmed > rec.ConfirmedLSN:
		e.Reason = "replaced"
	default:
		return nil
	}
	return e
}

// recordConfirmed returns the position the session may report flushed,
// given that pos is safe to report: pos once it is recorded in
// duplex.slots (see the rule above), or the position recorded last.
func (ss *session) recordConfirmed(ctx context.Context, pos capture.LSN) (capture.LSN, error) {
	s := ss.src
	s.mu.Lock()
	rec, own, at := s.recorded, s.ownEnd, s.recordedAt
	s.mu.Unlock()
	if pos <= rec {
		return pos, nil
	}
	due := s.Durable() > rec || pos-rec >= recordStep || (pos > own+ownWALSlack && time.Since(at) >= idleRecordEvery)
	if !due {
		return rec, nil
	}
	q, err := ss.queryConn(ctx)
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	end, err := pgstate.RecordSlotConfirmed(rctx, q, s.cfg.Slot, pos)
	if err != nil {
		return 0, fmt.Errorf("capture %s: %w", s.cfg.System, err)
	}
	s.mu.Lock()
	s.recorded, s.ownEnd, s.recordedAt = pos, end, time.Now()
	s.mu.Unlock()
	return pos, nil
}

// SlotReset is what ResetSlot found and did.
type SlotReset struct {
	Slot string
	// Record is the record found, when Recorded.
	Record   pgstate.SlotRecord
	Recorded bool
	// System is this server's system identifier.
	System string
	// Problem is what the check at start reports of the slot, or nil when
	// the slot matched its record (or had none).
	Problem *SlotLostError
	// Existed, Confirmed and WALStatus describe the slot as found.
	Existed   bool
	Confirmed capture.LSN
	WALStatus string
	// Dropped says an invalidated slot was dropped; Created that the slot
	// was created (at Position).
	Dropped, Created bool
	// Position is the position recorded now: from here on the slot holds
	// every change.
	Position capture.LSN
}

// ResetSlot acknowledges that a slot's changes since duplex last confirmed
// are lost (see SlotLostError): it creates the slot when missing (dropping
// it first when invalidated, wal_status lost) and records the slot as it
// is now, so that the check at start passes again. The changes lost
// before are not recovered by this: the caller requests backfills.
func ResetSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotReset, error) {
	r := SlotReset{Slot: slot}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return r, fmt.Errorf("reset slot %s: %w", slot, err)
	}
	st, err := readSlotState(ctx, conn, slot)
	if err != nil {
		return r, fmt.Errorf("reset slot %s: %w", slot, err)
	}
	r.Existed, r.Confirmed, r.WALStatus = st.exists, st.confirmed, st.walStatus
	if r.System, err = pgstate.SystemIdentifier(ctx, conn); err != nil {
		return r, fmt.Errorf("reset slot %s: %w", slot, err)
	}
	if r.Record, r.Recorded, err = pgstate.ReadSlotRecord(ctx, conn, slot); err != nil {
		return r, fmt.Errorf("reset slot %s: %w", slot, err)
	}
	if r.Recorded {
		r.Problem = checkSlot(r.Record, r.System, st)
	}
	if st.exists && st.walStatus == "lost" {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return r, fmt.Errorf("reset slot %s: drop the invalidated slot: %w", slot, err)
		}
		r.Dropped, st = true, slotState{}
	}
	r.Position = st.confirmed
	if !st.exists {
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&lsn); err != nil {
			return r, fmt.Errorf("reset slot %s: create it: %w", slot, err)
		}
		if r.Position, err = capture.ParseLSN(lsn); err != nil {
			return r, fmt.Errorf("reset slot %s: create it: %w", slot, err)
		}
		r.Created = true
	}
	// A running duplex may have recorded, and reported, more than the slot
	// shows yet: keep the higher record of the same cluster, so that it is
	// not refused at its next start.
	if r.Recorded && r.Record.SystemIdentifier == r.System && r.Record.ConfirmedLSN > r.Position && !r.Created {
		r.Position = r.Record.ConfirmedLSN
	}
	if err := pgstate.RecordSlot(ctx, conn, slot, r.Position); err != nil {
		return r, fmt.Errorf("reset slot %s: %w", slot, err)
	}
	return r, nil
}
