package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	for _, c := range []struct {
		name, in, want, wantLines string
	}{
		{"plain", "key 42 ünïcode €", "key 42 ünïcode €", "key 42 ünïcode €"},
		{"escape sequence", "k\x1b[2J\x1b]0;owned\x07", `k\x1b[2J\x1b]0;owned\x07`, `k\x1b[2J\x1b]0;owned\x07`},
		{"carriage return", "ok\rFAKE", `ok\rFAKE`, `ok\rFAKE`},
		{"newline and tab", "a\nb\tc", `a\nb\tc`, "a\nb\tc"},
		{"C1 CSI and DEL", "a\u009b2Jb\x7f", `a\x9b2Jb\x7f`, `a\x9b2Jb\x7f`},
		{"bidi override", "abc\u202edcb", `abc\u202edcb`, `abc\u202edcb`},
		{"line separator", "a\u2028b", `a\u2028b`, `a\u2028b`},
		{"invalid UTF-8", "a\xffb", `a\xffb`, `a\xffb`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := clean(c.in); got != c.want {
				t.Errorf("clean(%q) = %q, want %q", c.in, got, c.want)
			}
			if got := cleanLines(c.in); got != c.wantLines {
				t.Errorf("cleanLines(%q) = %q, want %q", c.in, got, c.wantLines)
			}
		})
	}
}

func TestWriteJSON_EscapesEveryControl(t *testing.T) {
	v := map[string]string{"key": "a\x1b[31m\u009b\u202e\x7fb", "error": "x\ny"}
	var buf bytes.Buffer
	if err := writeJSON(&buf, v); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.ContainsFunc(out, func(r rune) bool { return r != '\n' && unsafeRune(r) }) {
		t.Errorf("JSON output holds a control character: %q", out)
	}
	var back map[string]string
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back["key"] != v["key"] || back["error"] != v["error"] {
		t.Errorf("the escaped JSON does not decode to the same values: %v %q", err, back)
	}
}
