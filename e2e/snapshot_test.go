package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/bench"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestSnapshot_ExistingRowsWithLiveWrites: a CRM that already holds rows
// when duplex first starts is copied to the ERP through an exported
// snapshot while live writes go on; the ERP ends equal to the CRM.
func TestSnapshot_ExistingRowsWithLiveWrites(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	n, err := bench.Bulk(context.Background(), f.env("CRM_DSN"), 30_000, 900)
	if err != nil {
		t.Fatal(err)
	}
	f.inProcess()
	l := startLoad(t, f.env("CRM_DSN"), 2, 3000, 0)
	l.waitRows(t, 3000, time.Minute)
	l.stop()
	rep := f.waitConverged(2 * time.Minute)
	t.Logf("%d rows existed before duplex started, %d changed during the snapshot:\n%s", n, l.rows.Load(), rep)
	crm := f.conn("crm")
	if got := queryInt(t, crm, `SELECT rows FROM duplex.snapshots WHERE slot = $1`, "duplex_crm_"+f.id); got < int64(n) {
		t.Errorf("snapshot recorded %d rows, want at least %d", got, n)
	}
}

// TestSnapshot_KilledMidwayStartsOver: duplex is killed during the initial
// snapshot; at the next start the interrupted snapshot starts over from a
// new slot, and the ERP ends equal to the CRM.
func TestSnapshot_KilledMidwayStartsOver(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	n, err := bench.Bulk(context.Background(), f.env("CRM_DSN"), 60_000, 900)
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, f.env("CRM_DSN"), 1, 0, 100)
	d := f.startChild()
	js := f.js()
	ctx := context.Background()
	waitFor(t, time.Minute, func() (bool, string) {
		s, err := js.Stream(ctx, pipeline.StreamName)
		if err != nil {
			return false, err.Error()
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs > 0, "no snapshot chunk published yet"
	})
	d.kill(t)
	crm := f.conn("crm")
	if done := queryInt(t, crm, `SELECT count(*) FROM pg_tables WHERE schemaname = 'duplex' AND tablename = 'snapshots'`); done > 0 {
		if queryInt(t, crm, `SELECT count(*) FROM duplex.snapshots WHERE slot = $1`, "duplex_crm_"+f.id) > 0 {
			t.Fatalf("the snapshot had completed before the kill: the test needs more rows")
		}
	}
	t.Logf("killed during the snapshot of %d rows", n)
	d = f.startChild()
	time.Sleep(2 * time.Second)
	l.stop()
	rep := f.waitConverged(3 * time.Minute)
	t.Logf("converged after the restarted snapshot and %d live row changes:\n%s", l.rows.Load(), rep)
	d.stop(t)
	if got := queryInt(t, crm, `SELECT rows FROM duplex.snapshots WHERE slot = $1`, "duplex_crm_"+f.id); got < int64(n) {
		t.Errorf("snapshot recorded %d rows, want at least %d", got, n)
	}
	_ = fmt.Sprint
}

// TestSnapshot_NeverCopiesOnlyNewChanges: with `snapshot: never`, rows
// that existed before the slot are left alone and only later changes are
// replicated.
func TestSnapshot_NeverCopiesOnlyNewChanges(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'before', 'EUR')`)
	f.tweak = func(c *config.Config) { c.Systems["crm"].Snapshot = "never"; c.Systems["erp"].Snapshot = "never" }
	f.inProcess()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'after', 'EUR')`)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE name = 'after'`) == 1, "the new account did not arrive"
	})
	if n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE name = 'before'`); n != 0 {
		t.Errorf("snapshot: never copied %d existing account(s)", n)
	}
	if n := queryInt(t, f.conn("crm"), `SELECT count(*) FROM pg_tables WHERE schemaname = 'duplex' AND tablename = 'snapshots'`); n != 0 {
		if queryInt(t, f.conn("crm"), `SELECT count(*) FROM duplex.snapshots`) != 0 {
			t.Errorf("snapshot: never recorded a snapshot")
		}
	}
}
