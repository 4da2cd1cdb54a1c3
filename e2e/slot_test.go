package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestSlot_AdvancesWhileMappedTablesAreIdle: writes to tables duplex does
// not publish still let the slot's confirmed position advance, so WAL is not
// retained for nothing.
func TestSlot_AdvancesWhileMappedTablesAreIdle(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	f.exec("crm", `CREATE TABLE IF NOT EXISTS audit_log (id bigserial PRIMARY KEY, note text)`)
	crm := f.conn("crm")
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		if _, err := crm.Exec(ctx, `INSERT INTO audit_log (note) SELECT repeat('x', 1000) FROM generate_series(1, 50)`); err != nil {
			t.Fatal(err)
		}
	}
	var target string
	if err := crm.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		var ok bool
		var confirmed string
		if err := crm.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
			"duplex_crm_"+f.id, target).Scan(&ok, &confirmed); err != nil {
			return false, err.Error()
		}
		return ok, fmt.Sprintf("slot confirmed %s, WAL at %s", confirmed, target)
	})
}
