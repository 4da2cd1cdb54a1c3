package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRun_ShortDemoAgrees runs the demo for a few seconds: it must print
// lag lines and end with both sides agreeing.
func TestRun_ShortDemoAgrees(t *testing.T) {
	var out bytes.Buffer
	ok, err := Run(context.Background(), Options{Duration: 4 * time.Second, Rate: 100, Out: &out})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if !ok {
		t.Fatalf("demo says the sides disagree:\n%s", out.String())
	}
	for _, want := range []string{"to-erp", "to-crm", "p99", "invoices paid", "OK: the CRM and the ERP agree"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
