// Package progress draws progress on a terminal: one line per task,
// redrawn in place, with done/total, rate and time left. Off a terminal it
// prints nothing; callers log instead.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// IsTerminal says whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Bar is one task's progress line.
type Bar struct {
	w     io.Writer
	label string
	start time.Time
	width int
}

// New returns a Bar writing to w.
func New(w io.Writer, label string) *Bar {
	return &Bar{w: w, label: label, start: time.Now(), width: 30}
}

// Line renders the bar: label, a bar when total is known, done/total, rate
// and time left at the rate so far.
func Line(label string, done, total int64, elapsed time.Duration, width int) string {
	var sb strings.Builder
	sb.WriteString(label)
	sb.WriteByte(' ')
	if total > 0 {
		filled := int(min(done, total) * int64(width) / total)
		sb.WriteByte('[')
		sb.WriteString(strings.Repeat("#", filled))
		sb.WriteString(strings.Repeat(".", width-filled))
		sb.WriteString("] ")
		fmt.Fprintf(&sb, "%d/%d", done, total)
	} else {
		fmt.Fprintf(&sb, "%d", done)
	}
	rate := int64(0)
	if elapsed > 0 {
		rate = done * int64(time.Second) / int64(elapsed)
	}
	fmt.Fprintf(&sb, " rows, %d rows/s", rate)
	if total > done && rate > 0 {
		fmt.Fprintf(&sb, ", ETA %s", (time.Duration((total-done)/rate) * time.Second).String())
	}
	return sb.String()
}

// Update redraws the line.
func (b *Bar) Update(done, total int64) {
	fmt.Fprintf(b.w, "\r\033[K%s", Line(b.label, done, total, time.Since(b.start), b.width))
}

// Done redraws the line a last time and ends it.
func (b *Bar) Done(done, total int64, note string) {
	b.Update(done, total)
	fmt.Fprintf(b.w, " %s\n", note)
}
