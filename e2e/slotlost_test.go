package e2e

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSlot_ReplacedWhileStoppedIsRefusedUntilResync: the CRM slot is
// dropped and created again while duplex is stopped, with writes in
// between. duplex refuses to stream from it, naming slot and positions and
// the recovery, in its log, /readyz and duplex status, without restarting
// the capture in a loop; after duplex resync --flow to-erp and a restart,
// the systems agree and duplex verify says so.
func TestSlot_ReplacedWhileStoppedIsRefusedUntilResync(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	crm := f.conn("crm")
	slot := "duplex_crm_" + f.id
	d := f.startChild()
	f.waitSlot(t)
	f.exec("crm", `INSERT INTO accounts (id, name, currency) SELECT gen_random_uuid(), 'before ' || g, 'EUR' FROM generate_series(1, 20) g`)
	f.waitConverged(60 * time.Second)
	d.stop(t)

	var expected string
	if err := crm.QueryRow(ctx, `SELECT confirmed_lsn::text FROM duplex.slots WHERE slot = $1`, slot).Scan(&expected); err != nil {
		t.Fatalf("duplex did not record its slot: %v", err)
	}
	f.exec("crm", `SELECT pg_drop_replication_slot($1)`, slot)
	f.exec("crm", `INSERT INTO accounts (id, name, currency) SELECT gen_random_uuid(), 'in the gap ' || g, 'USD' FROM generate_series(1, 15) g`)
	f.exec("crm", `UPDATE accounts SET name = name || ' (renamed in the gap)' WHERE name LIKE 'before 1%'`)
	var found string
	if err := crm.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&found); err != nil {
		t.Fatal(err)
	}

	d = f.startChild()
	want := []string{"slot " + slot + " was dropped and created again", "duplex last confirmed " + expected, "the slot is at " + found, "duplex resync --flow to-erp"}
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, d.listen)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "capture crm") {
			return false, "readyz: " + body
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false, "readyz does not say " + w + ": " + body
			}
		}
		return true, ""
	})
	b, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, w := range append(want, "capture stopped") {
		if !strings.Contains(log, w) {
			t.Errorf("the log does not say %q", w)
		}
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "capture session ended; restarting") && strings.Contains(line, "source=crm") {
			t.Errorf("the capture of crm restarted instead of stopping: %s", line)
		}
	}
	code, out := f.duplexCLI("status", "--listen", d.listen)
	if !strings.Contains(out, "capture crm stopped") || !strings.Contains(out, expected) {
		t.Errorf("duplex status (exit %d) does not show the stopped capture:\n%s", code, out)
	}
	if rep := f.compare(); rep.Equal() {
		t.Fatalf("the ERP has the changes made while the slot was gone: the test did not lose any")
	}
	d.stop(t)

	code, out = f.duplexCLI("resync", "--flow", "nope")
	if code == 0 || !strings.Contains(out, `no flow "nope"`) {
		t.Errorf("resync of an unknown flow exited %d:\n%s", code, out)
	}
	code, out = f.duplexCLI("resync", "--flow", "to-erp", "--table", "nope")
	if code == 0 || !strings.Contains(out, "not mapped") {
		t.Errorf("resync of an unknown table exited %d:\n%s", code, out)
	}
	code, out = f.duplexCLI("resync", "--flow", "to-erp")
	t.Logf("resync:\n%s", out)
	if code != 0 || !strings.Contains(out, "found:   replaced") || !strings.Contains(out, "backfill") || !strings.Contains(out, "public.accounts") {
		t.Fatalf("resync exited %d:\n%s", code, out)
	}

	d = f.startChild()
	defer d.stop(t)
	f.waitBothConverged(90 * time.Second)
	if code, out := f.duplexCLI("verify"); code != 0 {
		t.Errorf("verify after the resync exited %d:\n%s", code, out)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		code, body := readyz(t, d.listen)
		return code == http.StatusOK, body
	})
}
