package bench

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// StageFigure is one stage measured alone on the same backlog.
type StageFigure struct {
	Stage string
	Rows  int
	Took  time.Duration
}

// RowsPerSec is Rows over Took.
func (s StageFigure) RowsPerSec() float64 {
	if s.Took <= 0 {
		return 0
	}
	return float64(s.Rows) / s.Took.Seconds()
}

func runStages(ctx context.Context, o Options) ([]StageFigure, error) {
	return nil, fmt.Errorf("not yet")
}

func writeStages(w io.Writer, st []StageFigure) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "stage\trows\ttime\trows/s")
	for _, s := range st {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\n", s.Stage, s.Rows, s.Took.Round(time.Millisecond), s.RowsPerSec())
	}
	tw.Flush()
}
