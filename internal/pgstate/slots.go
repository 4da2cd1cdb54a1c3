package pgstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
)

// SlotRecord is what duplex recorded of a replication slot it created, in
// the source database's duplex.slots.
type SlotRecord struct {
	Slot string
	// SystemIdentifier is the cluster's system_identifier
	// (pg_control_system()) when the slot was created: a cluster restored
	// from a dump, or another one, has another.
	SystemIdentifier string
	Database         string
	// DatabaseOID is the database's OID when the record was written: a
	// database restored from a dump (created anew) has another, and the
	// record it carries over describes a slot of the database it was
	// dumped from, not one of its own.
	DatabaseOID uint32
	// CreatedLSN is the slot's consistent point when duplex created it.
	CreatedLSN capture.LSN
	// ConfirmedLSN is the highest position duplex may have reported to
	// the server as flushed on this slot: it is recorded before it is
	// reported, so the slot's confirmed_flush_lsn is never above it
	// unless another client moved the slot or the slot was replaced.
	ConfirmedLSN capture.LSN
	CreatedAt    time.Time
	ConfirmedAt  time.Time
}

// RecordSlot records that duplex created slot at created (its consistent
// point) in the cluster and database q is connected to, replacing any
// earlier record of a slot of that name.
func RecordSlot(ctx context.Context, q Querier, slot string, created capture.LSN) error {
	_, err := q.Exec(ctx, `INSERT INTO duplex.slots (slot, system_identifier, database, database_oid, created_lsn, confirmed_lsn)
		SELECT $1, system_identifier::text, current_database(), (SELECT oid FROM pg_database WHERE datname = current_database()), $2::text::pg_lsn, $2::text::pg_lsn FROM pg_control_system()
		ON CONFLICT (slot) DO UPDATE SET system_identifier = EXCLUDED.system_identifier, database = EXCLUDED.database, database_oid = EXCLUDED.database_oid,
			created_lsn = EXCLUDED.created_lsn, confirmed_lsn = EXCLUDED.confirmed_lsn, created_at = now(), confirmed_at = now()`,
		slot, created.String())
	if err != nil {
		return fmt.Errorf("record slot %s: %w", slot, err)
	}
	return nil
}

// RecordSlotConfirmed raises the recorded confirmed position of slot to
// lsn (it never lowers it) and returns the server's WAL insert position
// just before this write's commit (pg_current_wal_insert_lsn), so that
// the caller can tell its own write from other WAL. A slot without a
// record gets one, with lsn as its creation point.
func RecordSlotConfirmed(ctx context.Context, q Querier, slot string, lsn capture.LSN) (capture.LSN, error) {
	var end string
	err := q.QueryRow(ctx, `INSERT INTO duplex.slots (slot, system_identifier, database, database_oid, created_lsn, confirmed_lsn)
		SELECT $1, system_identifier::text, current_database(), (SELECT oid FROM pg_database WHERE datname = current_database()), $2::text::pg_lsn, $2::text::pg_lsn FROM pg_control_system()
		ON CONFLICT (slot) DO UPDATE SET confirmed_lsn = greatest(duplex.slots.confirmed_lsn, EXCLUDED.confirmed_lsn), confirmed_at = now()
		RETURNING pg_current_wal_insert_lsn()::text`, slot, lsn.String()).Scan(&end)
	if err != nil {
		return 0, fmt.Errorf("record confirmed position %s of slot %s: %w", lsn, slot, err)
	}
	e, err := capture.ParseLSN(end)
	if err != nil {
		return 0, fmt.Errorf("record confirmed position %s of slot %s: %w", lsn, slot, err)
	}
	return e, nil
}

// ReadSlotRecord reads the record of slot; ok is false when there is none.
func ReadSlotRecord(ctx context.Context, q Querier, slot string) (rec SlotRecord, ok bool, err error) {
	var created, confirmed string
	err = q.QueryRow(ctx, `SELECT slot, system_identifier, database, database_oid, created_lsn::text, confirmed_lsn::text, created_at, confirmed_at
		FROM duplex.slots WHERE slot = $1`, slot).Scan(&rec.Slot, &rec.SystemIdentifier, &rec.Database, &rec.DatabaseOID, &created, &confirmed, &rec.CreatedAt, &rec.ConfirmedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotRecord{}, false, nil
	}
	if err != nil {
		return SlotRecord{}, false, fmt.Errorf("read record of slot %s: %w", slot, err)
	}
	if rec.CreatedLSN, err = capture.ParseLSN(created); err == nil {
		rec.ConfirmedLSN, err = capture.ParseLSN(confirmed)
	}
	if err != nil {
		return SlotRecord{}, false, fmt.Errorf("read record of slot %s: %w", slot, err)
	}
	return rec, true, nil
}

// ForgetSlot deletes the record of slot; it says whether there was one.
func ForgetSlot(ctx context.Context, q Querier, slot string) (bool, error) {
	tag, err := q.Exec(ctx, `DELETE FROM duplex.slots WHERE slot = $1`, slot)
	if err != nil {
		return false, fmt.Errorf("forget slot %s: %w", slot, err)
	}
	return tag.RowsAffected() > 0, nil
}

// DatabaseOID is the OID of the database q is connected to.
func DatabaseOID(ctx context.Context, q Querier) (uint32, error) {
	var oid uint32
	if err := q.QueryRow(ctx, `SELECT oid FROM pg_database WHERE datname = current_database()`).Scan(&oid); err != nil {
		return 0, fmt.Errorf("read database oid: %w", err)
	}
	return oid, nil
}

// SystemIdentifier is the system_identifier of the cluster q is connected
// to (pg_control_system()), as text.
func SystemIdentifier(ctx context.Context, q Querier) (string, error) {
	var id string
	if err := q.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&id); err != nil {
		return "", fmt.Errorf("read system identifier: %w", err)
	}
	return id, nil
}
