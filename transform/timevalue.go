package transform

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/duplex-cdc/duplex/capture"
)

// Dates and timestamps cover PostgreSQL's whole range on the bus:
// timestamp and timestamptz from 4713 BC to 294276 AD, date from 4713 BC to
// 5874897 AD, and 'infinity' / '-infinity' for all three
// (https://www.postgresql.org/docs/current/datatype-datetime.html).
//
// The canonical form of a timestamp is RFC 3339 in UTC
// ("2024-03-01T09:00:00.5Z") for the years 0000 to 9999, and of a date
// "2024-03-01". A year outside that range is written as ISO 8601's expanded
// year: a sign and at least four digits ("+294276-12-31T23:59:59.999999Z",
// "-4712-01-01"). Years are numbered astronomically, as ISO 8601 does and
// Go's time.Time counts them: year 0 is 1 BC, -4712 is 4713 BC. The
// infinities are "infinity" and "-infinity", PostgreSQL's own words.

// Canonical words for PostgreSQL's infinite dates and timestamps.
const (
	Infinity    = "infinity"
	NegInfinity = "-infinity"
)

// timeInfinity returns the canonical word for a decoded infinite date or
// timestamp (capture.Special holding PostgreSQL's text), or "".
func timeInfinity(v any) string {
	sp, ok := v.(capture.Special)
	if !ok {
		return ""
	}
	switch strings.ToLower(string(sp)) {
	case Infinity, "+infinity":
		return Infinity
	case NegInfinity:
		return NegInfinity
	}
	return ""
}

// expandedYear writes a year in ISO 8601's expanded form when it has no
// four-digit form: "+294276", "-4712"; "" for 0000 to 9999.
func expandedYear(y int) string {
	switch {
	case y > 9999:
		return "+" + strconv.Itoa(y)
	case y < 0:
		return fmt.Sprintf("-%04d", -y)
	}
	return ""
}

// CanonicalTimestamp is the canonical form of an instant (see above).
func CanonicalTimestamp(t time.Time) string {
	t = t.UTC()
	if ey := expandedYear(t.Year()); ey != "" {
		return ey + t.Format("-01-02T15:04:05.999999999Z07:00")
	}
	return t.Format(time.RFC3339Nano)
}

// CanonicalDate is the canonical form of a date (its year, month and day
// as they are in t's location).
func CanonicalDate(t time.Time) string {
	if ey := expandedYear(t.Year()); ey != "" {
		return ey + t.Format("-01-02")
	}
	return t.Format(time.DateOnly)
}

// ParseCanonicalTime reads a canonical timestamp (date false) or date (date
// true). An infinity is returned as inf -1 or +1 with a zero time.
func ParseCanonicalTime(s string, date bool) (t time.Time, inf int, err error) {
	switch s {
	case Infinity:
		return time.Time{}, 1, nil
	case NegInfinity:
		return time.Time{}, -1, nil
	}
	layout := time.RFC3339Nano
	if date {
		layout = time.DateOnly
	}
	if s == "" || (s[0] != '+' && s[0] != '-') {
		t, err := time.Parse(layout, s)
		if err != nil {
			if date {
				return time.Time{}, 0, errors.New("not a date (YYYY-MM-DD)")
			}
			return time.Time{}, 0, errors.New("not an RFC 3339 timestamp")
		}
		return t, 0, nil
	}
	// Expanded year: parse the rest against a leap year, then put the
	// year in and check that the day still exists in it.
	i := strings.IndexByte(s[1:], '-') + 1
	if i < 5 {
		return time.Time{}, 0, fmt.Errorf("expanded year of %q needs a sign and at least four digits", s)
	}
	y, err := strconv.Atoi(s[1:i])
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("bad year in %q", s)
	}
	if s[0] == '-' {
		y = -y
	}
	p, err := time.Parse(layout, "2000"+s[i:])
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("%q: %w", s, err)
	}
	t = time.Date(y, p.Month(), p.Day(), p.Hour(), p.Minute(), p.Second(), p.Nanosecond(), p.Location())
	if t.Month() != p.Month() || t.Day() != p.Day() {
		return time.Time{}, 0, fmt.Errorf("%q: no such day in year %d", s, y)
	}
	if !date {
		t = t.UTC()
	}
	return t, 0, nil
}

// pgDateTimeText writes t in PostgreSQL's input syntax, which has no year
// 0 and no negative years but a BC suffix: 4713 BC for Go's year -4712.
// date writes the day only; zone appends "+00" (t is taken in UTC).
func pgDateTimeText(t time.Time, date, zone bool) string {
	if !date || zone {
		t = t.UTC()
	}
	y, bc := t.Year(), false
	if y <= 0 {
		y, bc = 1-y, true
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%04d", y)
	if date {
		b.WriteString(t.Format("-01-02"))
	} else {
		b.WriteString(t.Format("-01-02 15:04:05.999999999"))
		if zone {
			b.WriteString("+00")
		}
	}
	if bc {
		b.WriteString(" BC")
	}
	return b.String()
}

// pgInfinity writes an infinity of ParseCanonicalTime as PostgreSQL text.
func pgInfinity(inf int) string {
	if inf < 0 {
		return NegInfinity
	}
	return Infinity
}
