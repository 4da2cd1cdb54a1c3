package progress

import (
	"testing"
	"time"
)

func TestLine(t *testing.T) {
	for _, c := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{50, 100, 10 * time.Second, "t [#####.....] 50/100 rows, 5 rows/s, ETA 10s"},
		{100, 100, 10 * time.Second, "t [##########] 100/100 rows, 10 rows/s"},
		{120, 100, 10 * time.Second, "t [##########] 120/100 rows, 12 rows/s"},
		{7, 0, 0, "t 7 rows, 0 rows/s"},
	} {
		if got := Line("t", c.done, c.total, c.elapsed, 10); got != c.want {
			t.Errorf("Line(%d, %d, %s) = %q, want %q", c.done, c.total, c.elapsed, got, c.want)
		}
	}
}
