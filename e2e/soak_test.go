package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/internal/bench"
)

// TestSoak_EveryFaultInTwoMinutes runs `duplex bench --soak` for two
// minutes with compressed fault lengths (ERP stopped 10 s, a table locked
// 5 s): two duplex processes (the test binary) and a nats-server process,
// the two-way order-to-cash workload, and every kind of fault once in a
// random order at random moments (seed logged; DUPLEX_SOAK_SEED repeats a
// run). Both systems must agree, every change made must be applied or
// dead-lettered, and the dead letters must be exactly the poisons.
func TestSoak_EveryFaultInTwoMinutes(t *testing.T) {
	var seed uint64
	if v := os.Getenv("DUPLEX_SOAK_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("DUPLEX_SOAK_SEED: %v", err)
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	faults := bench.SoakFaultKinds()
	w := &logWriter{t: t}
	res, err := bench.Soak(context.Background(), bench.SoakOptions{
		Faults:   faults,
		Duration: 2 * time.Minute,
		Seed:     seed,
		ERPStop:  10 * time.Second,
		Lock:     5 * time.Second,
		LeaseTTL: 3 * time.Second,
		Exe:      os.Args[0],
		ExtraEnv: []string{childEnv + "=1"},
		LogDir:   t.TempDir(),
		Out:      w,
	})
	w.flush()
	if err != nil {
		t.Fatalf("soak (seed %d): %v", seed, err)
	}
	kinds := map[string]int{}
	for _, f := range res.Faults {
		kinds[f.Kind]++
	}
	for _, k := range faults {
		if kinds[k] == 0 {
			t.Errorf("fault %s was not injected", k)
		}
	}
	if len(bench.SoakFaultKinds()) < 10 {
		t.Errorf("%d kinds of fault, want at least 10", len(bench.SoakFaultKinds()))
	}
	if res.CRMMade == 0 || res.ERPMade == 0 {
		t.Errorf("changes made: CRM %d, ERP %d; want both > 0", res.CRMMade, res.ERPMade)
	}
	if res.CRMApplied+res.CRMDeadLettered != res.CRMMade || res.ERPApplied+res.ERPDeadLettered != res.ERPMade {
		t.Errorf("CRM: %d made, %d applied, %d dead-lettered; ERP: %d made, %d applied, %d dead-lettered",
			res.CRMMade, res.CRMApplied, res.CRMDeadLettered, res.ERPMade, res.ERPApplied, res.ERPDeadLettered)
	}
	if res.CRMDeadLettered != int64(kinds["poison-row"]) || res.ERPDeadLettered != 0 {
		t.Errorf("dead letters: %d to the ERP, %d to the CRM; want %d (the poisons) and 0", res.CRMDeadLettered, res.ERPDeadLettered, kinds["poison-row"])
	}
	if res.CRMBackfilled == 0 {
		t.Errorf("no change was recovered by the backfill after the slot was replaced")
	}
}

// logWriter logs what the soak prints, a line at a time.
type logWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf strings.Builder
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	s := w.buf.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		w.t.Log("\n" + s[:i])
		w.buf.Reset()
		w.buf.WriteString(s[i+1:])
	}
	return len(p), nil
}

func (w *logWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() > 0 {
		w.t.Log(w.buf.String())
		w.buf.Reset()
	}
}
