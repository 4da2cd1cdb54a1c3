package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestBigMessages_WithinAOneMiBServer: duplex runs its embedded NATS with
// a max payload of 1 MiB (a default nats-server's). A CRM row with a 12 MB
// text and a transaction of 500 rows of 40 KB arrive intact; a 70 MB row
// is dead-lettered at capture naming table, key and size, and rows
// committed after it arrive.
func TestBigMessages_WithinAOneMiBServer(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.tweak = func(c *config.Config) {
		c.NATS.URL = ""
		c.NATS.Embedded.MaxPayload = 1 << 20
	}
	f.inProcess()
	ctx := context.Background()
	if got := f.app.JetStream().Conn().MaxPayload(); got != 1<<20 {
		t.Fatalf("server max payload %d, want 1 MiB", got)
	}
	crm, erp := f.conn("crm"), f.conn("erp")
	// The 12 MB row, as random text (what compresses poorly is what a real
	// document looks like on the wire too).
	big := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency)
		SELECT $1, string_agg(md5(i::text), ''), 'EUR' FROM generate_series(1, 12000000/32) i`, big)
	// 500 rows of 40 KB in one transaction.
	batch := uuid.New().String()[:8]
	f.exec("crm", `INSERT INTO accounts (id, name, currency)
		SELECT gen_random_uuid(), $1 || ':' || i || ':' || repeat(md5(i::text), 1280), 'USD' FROM generate_series(1, 500) i`, batch)
	waitFor(t, 120*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE name LIKE $1 || ':%'`, batch)
		m := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, big)
		return n == 500 && m == 1, fmt.Sprintf("ERP has %d of the 500 rows of 40 KB and %d of the 12 MB row", n, m)
	})
	var src, dst string
	if err := crm.QueryRow(ctx, `SELECT md5(name) || length(name) FROM accounts WHERE id = $1`, big).Scan(&src); err != nil {
		t.Fatal(err)
	}
	if err := erp.QueryRow(ctx, `SELECT md5(name) || length(name) FROM customers WHERE crm_account_id = $1`, big).Scan(&dst); err != nil {
		t.Fatal(err)
	}
	if src != dst {
		t.Errorf("12 MB row: ERP has md5||length %s, CRM %s", dst, src)
	}
	sum := `SELECT coalesce(md5(string_agg(md5(name), '' ORDER BY name)), '') FROM %s WHERE name LIKE $1 || ':%%'`
	if err := crm.QueryRow(ctx, fmt.Sprintf(sum, "accounts"), batch).Scan(&src); err != nil {
		t.Fatal(err)
	}
	if err := erp.QueryRow(ctx, fmt.Sprintf(sum, "customers"), batch).Scan(&dst); err != nil {
		t.Fatal(err)
	}
	if src != dst {
		t.Errorf("the 500 rows of 40 KB differ between CRM and ERP")
	}

	// A 70 MB row, above max_change_bytes (64 MiB), then a row after it.
	huge, after := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, repeat('x', 70000000), 'EUR')`, huge)
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'after the huge one', 'EUR')`, after)
	waitFor(t, 120*time.Second, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, after) == 1, "the row committed after the 70 MB one has not arrived"
	})
	if n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, huge); n != 0 {
		t.Errorf("the 70 MB row is in the ERP (%d)", n)
	}
	dls, err := pipeline.ListDeadLetters(ctx, f.app.JetStream(), "capture-crm", 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dl := range dls {
		if dl.Key == huge.String() {
			found = true
			for _, want := range []string{"public.accounts", huge.String(), "bytes", fmt.Sprint(pipeline.DefaultMaxChangeBytes)} {
				if !strings.Contains(dl.Error, want) {
					t.Errorf("dead letter %q does not name %s", dl.Error, want)
				}
			}
		}
	}
	if !found {
		t.Errorf("no capture dead letter for the 70 MB row; dead letters: %+v", dls)
	}
	if st := f.app.SrcStat["crm"].Snapshot(); st.Reconnects > 0 {
		t.Errorf("the CRM capture restarted %d times (last error %q)", st.Reconnects, st.LastError)
	}
}
