package e2e

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/internal/bench"
)

// TestBench_SmallShapeTable runs `duplex bench --shape small --scale 0.01`
// end to end: 80 transactions of 1 account + 1 order + 3 lines committed
// while duplex (the test binary as its own process) and the native
// subscription are stopped, drained by each, timed between the marker
// accounts of the first and the last transaction. It checks that both
// markers were seen on both sides and that the table has every column
// and the shape's line. No figure is asserted: the machine is shared.
func TestBench_SmallShapeTable(t *testing.T) {
	var out bytes.Buffer
	res, err := bench.Run(context.Background(), bench.Options{
		Shapes:   []string{bench.ShapeSmall},
		Runs:     1,
		Scale:    0.01,
		Exe:      os.Args[0],
		ExtraEnv: []string{childEnv + "=1"},
		Out:      &out,
	})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Shapes == nil || len(res.Shapes.Rows) != 1 {
		t.Fatalf("shapes result %+v, want one row", res.Shapes)
	}
	row := res.Shapes.Rows[0]
	if row.Shape != bench.ShapeSmall || len(row.Native) != 1 || len(row.Duplex) != 1 {
		t.Fatalf("row %+v, want small with one run of each", row)
	}
	for side, m := range map[string]bench.Measure{"native": row.Native[0], "duplex": row.Duplex[0]} {
		if !m.FirstSeen || !m.LastSeen {
			t.Errorf("%s: first marker seen %v, last marker seen %v", side, m.FirstSeen, m.LastSeen)
		}
		// 79 transactions of 5 rows after the first.
		if m.Rows != 79*5 || m.Span <= 0 {
			t.Errorf("%s: %d rows in %s, want 395 rows in a positive span", side, m.Rows, m.Span)
		}
	}
	// CPU is read in clock ticks (10 ms) over the timed span, which at
	// this scale can be shorter than one tick: only the RSS is asserted.
	if row.Duplex[0].PeakRSS <= 0 {
		t.Errorf("duplex: peak RSS %d; want it measured", row.Duplex[0].PeakRSS)
	}
	s := out.String()
	head := strings.Index(s, bench.ShapeTableColumns[0]+" ")
	if head < 0 {
		t.Fatalf("no table in the output")
	}
	table := s[head:]
	header, rest, _ := strings.Cut(table, "\n")
	for _, c := range bench.ShapeTableColumns {
		if !strings.Contains(header, c) {
			t.Errorf("table header %q lacks column %q", header, c)
		}
	}
	if !strings.HasPrefix(rest, bench.ShapeSmall+" ") {
		t.Errorf("table line %q, want the small shape's", strings.SplitN(rest, "\n", 2)[0])
	}
}
