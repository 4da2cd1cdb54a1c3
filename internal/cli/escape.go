package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text that comes from the data or from another process (keys, error
// messages, table and entity names, a running duplex's answers) is printed
// with its control characters escaped, so that it cannot move the
// terminal's cursor, rewrite what was printed, change the terminal's
// settings (ESC and CSI sequences, C0 and C1 controls), or reorder what is
// shown (Unicode bidirectional controls such as U+202E).

// unsafeRune says whether r must not reach a terminal as it is.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || unicode.In(r, unicode.Zl, unicode.Zp) || r == utf8.RuneError
}

// clean escapes every control character of s, newlines and tabs included
// (\n, \t, \x1b, \u202e; invalid UTF-8 as \xNN): for one table cell or
// one line.
func clean(s string) string { return escape(s, false) }

// cleanLines is clean but keeps newlines and tabs: for a multi-line
// message such as a list of errors.
func cleanLines(s string) string { return escape(s, true) }

func escape(s string, keepLines bool) string {
	if !strings.ContainsFunc(s, unsafeRune) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case keepLines && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// writeJSON prints v as indented JSON with every control character
// escaped: encoding/json escapes C0 controls but not DEL, C1 controls
// (U+0080–U+009F, among them CSI) or bidirectional controls, which can
// only occur inside JSON strings, where \uXXXX means the same.
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(escapeJSON(buf.Bytes()))
	return err
}

func escapeJSON(b []byte) []byte {
	if !bytes.ContainsFunc(b, func(r rune) bool { return unsafeRune(r) && r != '\n' }) {
		return b
	}
	var out bytes.Buffer
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != '\n' && unsafeRune(r) && !(r == utf8.RuneError && n == 1) {
			fmt.Fprintf(&out, `\u%04x`, r)
		} else {
			out.Write(b[i : i+n]) // encoding/json already replaced invalid UTF-8
		}
		i += n
	}
	return out.Bytes()
}
