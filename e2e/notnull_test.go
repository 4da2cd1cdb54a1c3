package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/transform"
)

// TestNotNullColumnAddedWhileStreaming: the ERP adds a NOT NULL column the
// mapping does not carry (its DEFAULT added, then dropped) while duplex
// runs. An update of an existing row is still applied; an insert of a new
// row is dead-lettered with the reason; duplex then starts again (check
// warns, it does not refuse) and goes on applying.
func TestNotNullColumnAddedWhileStreaming(t *testing.T) {
	base, err := os.ReadFile("../examples/order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{mapping: string(base) + regionMapping("")})
	f.exec("crm", `CREATE TABLE accts (id int PRIMARY KEY, note text)`)
	f.exec("erp", `CREATE TABLE accts (id int PRIMARY KEY, note text)`)
	stop := f.inProcess()
	erp := f.conn("erp")
	rows := func() []string {
		got, err := textRows(t.Context(), erp, `SELECT id, note, region FROM accts ORDER BY id`)
		if err != nil {
			got, err = textRows(t.Context(), erp, `SELECT id, note FROM accts ORDER BY id`)
		}
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	f.exec("crm", `INSERT INTO accts VALUES (1, 'a'), (2, 'a')`)
	waitFor(t, 30*time.Second, func() (bool, string) {
		got := rows()
		return slices.Equal(got, []string{"1|a", "2|a"}), strings.Join(got, ", ")
	})

	f.exec("erp", `ALTER TABLE accts ADD region text NOT NULL DEFAULT 'EU'; ALTER TABLE accts ALTER region DROP DEFAULT`)
	f.exec("crm", `UPDATE accts SET note = 'b' WHERE id = 1`)
	f.exec("crm", `INSERT INTO accts VALUES (3, 'new')`)
	waitFor(t, 30*time.Second, func() (bool, string) {
		got := rows()
		return slices.Equal(got, []string{"1|b|EU", "2|a|EU"}), strings.Join(got, ", ")
	})
	waitFor(t, 30*time.Second, func() (bool, string) {
		dls := deadLetterErrors(t, f)
		return len(dls) == 1 && strings.Contains(dls[0], "entity acct key 3: no row in public.accts to update, and the event lacks [region]"), strings.Join(dls, "\n")
	})

	// duplex check: a warning, not a refusal.
	cfg := f.config()
	m, err := transform.Load(cfg.MappingPath())
	if err != nil {
		t.Fatal(err)
	}
	warnings, err := app.PreflightReport(t.Context(), cfg, m)
	if err != nil {
		t.Errorf("check refuses: %v", err)
	}
	// Besides the warnings about the fixture's connections (superuser,
	// no TLS), exactly one about the table: region.
	var about []string
	for _, w := range warnings {
		if strings.Contains(w, "public.accts") {
			about = append(about, w)
		}
	}
	if len(about) != 1 || !strings.Contains(about[0], "erp table public.accts (entity acct): column region is NOT NULL without a default and not mapped") {
		t.Errorf("check warnings = %q, want one about public.accts, on region", warnings)
	}

	stop()
	f.inProcess() // fails the test if duplex refuses to start
	f.exec("crm", `UPDATE accts SET note = 'c' WHERE id = 2`)
	waitFor(t, 30*time.Second, func() (bool, string) {
		got := rows()
		return slices.Equal(got, []string{"1|b|EU", "2|c|EU"}), strings.Join(got, ", ")
	})
	if dls := deadLetterErrors(t, f); len(dls) != 1 {
		t.Errorf("dead letters: %q, want the insert of 3 only", dls)
	}
}
