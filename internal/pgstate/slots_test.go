package pgstate_test

import (
	"context"
	"testing"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// TestSlotRecord_ConfirmedOnlyRises: the recorded confirmed position of a
// slot never goes back; RecordSlot replaces the record; ForgetSlot drops it.
func TestSlotRecord_ConfirmedOnlyRises(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, newDB(t), "postgres", nil)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := pgstate.ReadSlotRecord(ctx, conn, "s"); ok || err != nil {
		t.Fatalf("record of an unknown slot: ok %v, %v", ok, err)
	}
	if err := pgstate.RecordSlot(ctx, conn, "s", 0x1000); err != nil {
		t.Fatal(err)
	}
	for _, lsn := range []uint64{0x3000, 0x2000} {
		if _, err := pgstate.RecordSlotConfirmed(ctx, conn, "s", capture.LSN(lsn)); err != nil {
			t.Fatal(err)
		}
	}
	rec, ok, err := pgstate.ReadSlotRecord(ctx, conn, "s")
	system, serr := pgstate.SystemIdentifier(ctx, conn)
	if err != nil || serr != nil || !ok || rec.CreatedLSN != 0x1000 || rec.ConfirmedLSN != 0x3000 || rec.SystemIdentifier != system || rec.SystemIdentifier == "" {
		t.Fatalf("record %+v (ok %v, %v, %v), want created 0/1000, confirmed 0/3000, system %s", rec, ok, err, serr, system)
	}
	if err := pgstate.RecordSlot(ctx, conn, "s", 0x500); err != nil {
		t.Fatal(err)
	}
	if rec, _, _ := pgstate.ReadSlotRecord(ctx, conn, "s"); rec.ConfirmedLSN != 0x500 || rec.CreatedLSN != 0x500 {
		t.Fatalf("RecordSlot did not replace the record: %+v", rec)
	}
	if gone, err := pgstate.ForgetSlot(ctx, conn, "s"); !gone || err != nil {
		t.Fatalf("ForgetSlot: %v, %v", gone, err)
	}
}
