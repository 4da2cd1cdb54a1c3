package e2e

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/config"
)

// TestSlot_AdvancesWhileMappedTablesAreIdle: 50,000 writes to a table
// duplex does not publish still let the slot's confirmed position advance
// past them, so WAL is not retained for nothing.
func TestSlot_AdvancesWhileMappedTablesAreIdle(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	f.exec("crm", `CREATE TABLE IF NOT EXISTS audit_log (id bigserial PRIMARY KEY, note text)`)
	crm := f.conn("crm")
	ctx := context.Background()
	for i := 0; i < 500; i++ {
		if _, err := crm.Exec(ctx, `INSERT INTO audit_log (note) SELECT repeat('x', 200) FROM generate_series(1, 100)`); err != nil {
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

// TestSlot_RetainedWALIsReportedAndWarned: duplex reads how much WAL each
// slot retains and how far it is behind, and warns when a slot retains
// more than wal_warn_bytes.
func TestSlot_RetainedWALIsReportedAndWarned(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.tweak = func(c *config.Config) { c.Systems["crm"].WALWarnBytes = 1 }
	var logs syncBuffer
	f.logTo = &logs
	f.inProcessLevel(slog.LevelInfo)
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'wal', 'EUR')`)
	waitFor(t, 30*time.Second, func() (bool, string) {
		l, ok := f.app.Slots()["crm"]
		return ok && l.Error == "" && l.RetainedBytes > 0 && l.CurrentLSN != "", fmt.Sprintf("slot reading: %+v", l)
	})
	waitFor(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "retains more WAL than wal_warn_bytes"), "no warning logged"
	})
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "retains more WAL") && strings.Contains(line, "source=erp") {
			t.Errorf("the ERP slot, under the default threshold, was warned about: %s", line)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
