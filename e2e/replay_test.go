package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/cli"
	"github.com/duplex-cdc/duplex/pipeline"
)

// rowVersions returns "table key xmin" of every ERP row, sorted.
func rowVersions(t *testing.T, c *pgx.Conn) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), `
SELECT 'c ' || crm_account_id || ' ' || xmin FROM customers
UNION ALL SELECT 'o ' || crm_order_id || ' ' || xmin FROM sales_orders
UNION ALL SELECT 'l ' || crm_line_id || ' ' || xmin FROM sales_order_lines ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReplay_FromStartLeavesRowsUntouched: resetting the flow's consumer to
// the start of the stream and applying everything again leaves every ERP
// row untouched (same xmin).
func TestReplay_FromStartLeavesRowsUntouched(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stop := f.inProcess()
	l := startLoad(t, f.env("CRM_DSN"), 2, 3000, 0)
	l.waitRows(t, 3000, time.Minute)
	l.stop()
	f.waitConverged(time.Minute)
	stop()

	erp := f.conn("erp")
	before := rowVersions(t, erp)
	if len(before) < 1000 {
		t.Fatalf("only %d ERP rows", len(before))
	}
	js := f.js()
	ctx := context.Background()
	s, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.ResetFlow(ctx, js, "to-erp", "crm", info.State.FirstSeq); err != nil {
		t.Fatal(err)
	}
	f.inProcess()
	waitFor(t, time.Minute, func() (bool, string) {
		c, err := js.Consumer(ctx, pipeline.StreamName, "to-erp")
		if err != nil {
			return false, err.Error()
		}
		ci := c.CachedInfo()
		// Everything of the CRM's the stream holds was delivered again
		// and acknowledged.
		return ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Consumer > 0,
			fmt.Sprintf("delivered %d, ack floor %d, pending %d", ci.Delivered.Stream, ci.AckFloor.Stream, ci.NumPending)
	})
	var replayed int64
	if st := f.app.Flows["to-erp"]; st != nil {
		s := st.Snapshot()
		replayed = s.Skipped
		if s.Applied != 0 {
			t.Errorf("the replay applied %d events, want 0 (all skipped)", s.Applied)
		}
	}
	if replayed == 0 {
		t.Errorf("the replay skipped nothing: was anything replayed?")
	}
	after := rowVersions(t, erp)
	if len(after) != len(before) {
		t.Fatalf("%d rows after replay, %d before", len(after), len(before))
	}
	changed := 0
	for i := range before {
		if before[i] != after[i] {
			changed++
			if changed <= 5 {
				t.Errorf("row changed by replay: %s -> %s", before[i], after[i])
			}
		}
	}
	if changed > 0 {
		t.Errorf("%d of %d rows were rewritten by the replay", changed, len(before))
	}
	t.Logf("replayed %d events (skipped as already applied); %d ERP rows untouched", replayed, len(before))
}

// TestRun_RefusesMismatchedMapping: a mapping that names a missing column,
// a wrong type or a key without a unique index stops `duplex run` at start
// with a message naming each problem.
func TestRun_RefusesMismatchedMapping(t *testing.T) {
	base, err := os.ReadFile("../examples/order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := string(base)
	m = strings.Replace(m, "email:        {column: email}\n          country:      {column: country}\n          currency:     {column: currency}\n          # The ERP", "email:        {column: e_mail}\n          country:      {column: country}\n          currency:     {column: currency}\n          # The ERP", 1)
	m = strings.Replace(m, "ordered_at: {column: ordered_at}\n          order_no:          {column: order_no}", "ordered_at: {column: status}\n          order_no:          {column: order_no}", 1)
	if !strings.Contains(m, "ordered_at: {column: status}") {
		t.Fatal("the ordered_at edit did not apply")
	}
	if m == string(base) {
		t.Fatal("mapping edits did not apply")
	}
	f := newFixture(t, fixtureOptions{mapping: m})
	f.exec("erp", `ALTER TABLE sales_order_lines DROP CONSTRAINT sales_order_lines_crm_line_id_key`)
	var stdout, stderr bytes.Buffer
	t.Setenv("CRM_DSN", f.env("CRM_DSN"))
	t.Setenv("ERP_DSN", f.env("ERP_DSN"))
	code := cli.MainIO([]string{"run", "--config", f.cfgPath, "--data-dir", filepath.Join(f.dir, "data")}, &stdout, &stderr)
	if code == 0 {
		t.Fatalf("duplex run started with a broken mapping")
	}
	msg := stderr.String()
	for _, want := range []string{
		"erp table public.customers (entity customer): column e_mail (field email) does not exist",
		"erp table public.sales_orders (entity order): column status (field ordered_at): type text cannot hold a timestamp field",
		"erp table public.sales_order_lines (entity order_line): key column crm_line_id has no unique index",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error output lacks %q; got:\n%s", want, msg)
		}
	}
	// Nothing was created: the check runs before slots and streams.
	c := f.conn("crm")
	if n := queryInt(t, c, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, "duplex_crm_"+f.id); n != 0 {
		t.Errorf("a slot was created although the mapping was refused")
	}
}
