package transform

import (
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/capture"
)

// TestTimeValues_WholePostgreSQLRange: every date and timestamp PostgreSQL
// stores, decoded by the capture into a time.Time (or capture.Special for
// the infinities), has a canonical form that reads back as the same value
// and a PostgreSQL text form for the target column (the text PostgreSQL
// itself prints for it, so the two sides compare equal as text).
func TestTimeValues_WholePostgreSQLRange(t *testing.T) {
	for _, c := range []struct {
		name      string
		in        any // as the capture decodes it
		conv      string
		colType   string // target column type
		canonical string
		pg        string // what the target column is given
	}{
		{name: "timestamptz in range", in: time.Date(2024, 3, 1, 9, 0, 0, 500000000, time.UTC), conv: ConvTimestamp, colType: "timestamptz",
			canonical: "2024-03-01T09:00:00.5Z", pg: "2024-03-01T09:00:00.5Z"},
		{name: "timestamp in range", in: time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC), conv: ConvTimestamp, colType: "timestamp",
			canonical: "2024-03-01T09:00:00Z", pg: "2024-03-01 09:00:00"},
		{name: "timestamptz 4713 BC", in: time.Date(-4712, 1, 1, 0, 0, 0, 0, time.UTC), conv: ConvTimestamp, colType: "timestamptz",
			canonical: "-4712-01-01T00:00:00Z", pg: "4713-01-01 00:00:00+00 BC"},
		{name: "timestamp 1 BC", in: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), conv: ConvTimestamp, colType: "timestamp",
			canonical: "0000-01-01T00:00:00Z", pg: "0001-01-01 00:00:00 BC"},
		{name: "timestamp 5 BC, leap day", in: time.Date(-4, 2, 29, 12, 0, 0, 0, time.UTC), conv: ConvTimestamp, colType: "timestamp",
			canonical: "-0004-02-29T12:00:00Z", pg: "0005-02-29 12:00:00 BC"},
		{name: "timestamptz 294276 AD", in: time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), conv: ConvTimestamp, colType: "timestamptz",
			canonical: "+294276-12-31T23:59:59.999999Z", pg: "294276-12-31 23:59:59.999999+00"},
		{name: "timestamp 294276 AD", in: time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), conv: ConvTimestamp, colType: "timestamp",
			canonical: "+294276-12-31T23:59:59.999999Z", pg: "294276-12-31 23:59:59.999999"},
		{name: "timestamptz infinity", in: capture.Special("infinity"), conv: ConvTimestamp, colType: "timestamptz", canonical: "infinity", pg: "infinity"},
		{name: "timestamp -infinity", in: capture.Special("-infinity"), conv: ConvTimestamp, colType: "timestamp", canonical: "-infinity", pg: "-infinity"},
		{name: "date in range", in: time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC), conv: ConvDate, colType: "date", canonical: "2026-02-28", pg: "2026-02-28"},
		{name: "date 4713 BC", in: time.Date(-4712, 1, 1, 0, 0, 0, 0, time.UTC), conv: ConvDate, colType: "date", canonical: "-4712-01-01", pg: "4713-01-01 BC"},
		{name: "date 1 BC", in: time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC), conv: ConvDate, colType: "date", canonical: "0000-12-31", pg: "0001-12-31 BC"},
		{name: "date 5874897 AD", in: time.Date(5874897, 12, 31, 0, 0, 0, 0, time.UTC), conv: ConvDate, colType: "date", canonical: "+5874897-12-31", pg: "5874897-12-31"},
		{name: "date 10000 AD", in: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), conv: ConvDate, colType: "date", canonical: "+10000-01-01", pg: "10000-01-01"},
		{name: "date infinity", in: capture.Special("infinity"), conv: ConvDate, colType: "date", canonical: "infinity", pg: "infinity"},
		{name: "date -infinity", in: capture.Special("-infinity"), conv: ConvDate, colType: "date", canonical: "-infinity", pg: "-infinity"},
	} {
		t.Run(c.name, func(t *testing.T) {
			typ := TypeTimestamp
			if c.conv == ConvDate {
				typ = TypeDate
			}
			e := &Entity{Name: "e", Key: Names{"id"}}
			f := &Field{Name: "at", Type: typ}
			col := &ColumnMap{Column: "at", info: &ColumnInfo{Name: "at", Type: c.colType}}
			var m Mapping
			got, err := m.canonical(e, f, col, capture.Row{"at": c.in}, "1")
			if err != nil || got != c.canonical {
				t.Fatalf("canonical = %#v, %v; want %q", got, err, c.canonical)
			}
			if !f.Equal(got, c.canonical) {
				t.Errorf("Equal(%q, itself) is false", c.canonical)
			}
			cv, err := m.targetText(e, f, col, got, "1")
			if err != nil || cv.Text != c.pg {
				t.Errorf("targetText(%q) = %q, %v; want %q", got, cv.Text, err, c.pg)
			}
			if tm, ok := c.in.(time.Time); ok {
				back, inf, err := ParseCanonicalTime(c.canonical, c.conv == ConvDate)
				if err != nil || inf != 0 || !back.Equal(tm) {
					t.Errorf("ParseCanonicalTime(%q) = %v, %d, %v; want %v", c.canonical, back, inf, err, tm)
				}
			}
		})
	}
}

func TestParseCanonicalTime_Refuses(t *testing.T) {
	for _, s := range []string{"", "2024-02-30T00:00:00Z", "+294275-02-29T00:00:00Z", "-0001-02-29T00:00:00Z", "-471-01-01T00:00:00Z", "+abcd-01-01", "294276-12-31T00:00:00Z", "Infinity"} {
		if _, _, err := ParseCanonicalTime(s, false); err == nil {
			t.Errorf("ParseCanonicalTime(%q) did not fail", s)
		}
	}
	if _, _, err := ParseCanonicalTime("+5874897-02-29", true); err == nil {
		t.Error("5874897-02-29 (not a leap year) was accepted")
	}
}
