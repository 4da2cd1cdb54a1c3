package pipeline_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
)

// Issue 11, cases 10 and 11(a) at the capture: erp inserting a customer
// (crm owns the key) is dead-lettered with the reason and counted; erp
// editing a field crm owns is counted; a row moving between partitions
// (DELETE and INSERT of one key) is neither.
func TestRunCapture_OwnershipViolations(t *testing.T) {
	js, m := setup(t)
	const a, b = "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a01", "6f1c2c1e-6a39-4c59-9d1b-2d7b6c1f0a02"
	row := func(id, name string) capture.Row {
		return capture.Row{"customer_no": int64(1), "crm_account_id": id, "name": name, "email": nil, "country": "DE", "currency": "EUR",
			"credit_limit_minor": int64(100), "updated_at": time.Unix(0, 0), "open_balance": decimal.RequireFromString("0"), "payment_terms": "NET30"}
	}
	tx := capture.TxInfo{System: "erp", CommitLSN: 100, EndLSN: 110, CommitTime: time.Now(), Xid: 1}
	src := &fakeSource{sys: "erp", done: make(chan struct{}), chunks: []*capture.Chunk{{Tx: tx, Last: true, Changes: []capture.Change{
		{Schema: "public", Table: "customers", Op: capture.Insert, New: row(a, "made in erp")},
		{Schema: "public", Table: "customers", Op: capture.Update, Old: row(b, "crm's name"), New: row(b, "edited in erp")},
		{Schema: "public", Table: "customers", Op: capture.Delete, Old: row(b, "edited in erp")},
		{Schema: "public", Table: "customers", Op: capture.Insert, New: row(b, "edited in erp")},
	}}}}
	stats := &pipeline.SourceStats{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pipeline.RunCapture(ctx, js, src, pipeline.ProducerConfig{Mapping: m, Stats: stats}) }()
	select {
	case <-src.done:
	case <-time.After(10 * time.Second):
		t.Fatal("source was not drained")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c := stats.Snapshot()
	if c.OwnershipViolations["customer/insert"] != 1 || c.OwnershipViolations["customer/field"] != 1 || c.DeadLetters != 1 {
		t.Errorf("violations %v, dead letters %d; want customer/insert 1, customer/field 1 and one dead letter", c.OwnershipViolations, c.DeadLetters)
	}
	dls, err := pipeline.ListDeadLetters(context.Background(), js, "capture-erp", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Entity != "customer" || dls[0].Key != a || !strings.Contains(dls[0].Error, "erp inserted a row of public.customers") {
		t.Errorf("dead letters %+v, want one for customer %s naming the refused insert", dls, a)
	}
}
