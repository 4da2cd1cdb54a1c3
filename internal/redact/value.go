package redact

import (
	"fmt"
	"unicode/utf8"
)

// MaxValue is the longest value, in characters, shown in a log line, an
// error or the CLI; a longer one is cut and ends with how long it was.
const MaxValue = 64

// Masked stands for the value of a personal field (pii: true in the
// mapping) wherever a value would be shown.
const Masked = "(pii, masked)"

// Value returns a column or canonical value as it may be shown: cut to
// MaxValue characters, with "…(N bytes)" after a cut one.
func Value(s string) string {
	if utf8.RuneCountInString(s) <= MaxValue {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxValue {
			return s[:i] + fmt.Sprintf("…(%d bytes)", len(s))
		}
		n++
	}
	return s
}

// Field returns a value of a field as it may be shown: Masked when the
// field is personal, else Value(s).
func Field(s string, personal bool) string {
	if personal {
		return Masked
	}
	return Value(s)
}
