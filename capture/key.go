package capture

import (
	"fmt"
	"strings"
)

// JoinKey returns the text form of a key made of parts (the text of each
// key column, or each canonical key field, in key order). A key of one part
// is that part as it is, so single-column keys read as before. A key of
// several parts is written the way PostgreSQL writes a row value (record_out,
// "Composite Type Input and Output Syntax" in the PostgreSQL manual):
// "(ACME,1001)", a part that is empty or holds a comma, parenthesis, double
// quote, backslash or white space double-quoted with '"' and '\' doubled:
// ("ACME, Inc",1001). The text form is what events, dead letters, logs and
// duplex's own tables carry; SplitKey reverses it.
func JoinKey(parts []string) string {
	if len(parts) == 1 {
		return parts[0]
	}
	var b strings.Builder
	b.WriteByte('(')
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		if !needsQuote(p) {
			b.WriteString(p)
			continue
		}
		b.WriteByte('"')
		for _, r := range p {
			if r == '"' || r == '\\' {
				b.WriteRune(r)
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte(')')
	return b.String()
}

func needsQuote(p string) bool {
	return p == "" || strings.ContainsAny(p, "\",\\() \t\n\r\v\f")
}

// SplitKey splits the text form of a key of n parts (see JoinKey) into its
// parts. A key of one part is returned as it is. It accepts what
// PostgreSQL's record_in accepts for non-NULL parts (quotes, doubled quotes,
// backslash escapes) and returns an error naming the key when the text is
// not a row of n parts; a part cannot be NULL (an unquoted empty part).
func SplitKey(key string, n int) ([]string, error) {
	if n <= 1 {
		return []string{key}, nil
	}
	bad := func(why string) ([]string, error) {
		return nil, fmt.Errorf("key %q is not a key of %d parts: %s", key, n, why)
	}
	if len(key) < 2 || key[0] != '(' || key[len(key)-1] != ')' {
		return bad("want (part,part,...)")
	}
	body := key[1 : len(key)-1]
	parts := make([]string, 0, n)
	var cur strings.Builder
	quotedPart, inQuote := false, false
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case inQuote && c == '"':
			if i+1 < len(body) && body[i+1] == '"' {
				cur.WriteByte('"')
				i++
			} else {
				inQuote = false
			}
		case c == '\\':
			if i+1 >= len(body) {
				return bad("a backslash ends it")
			}
			cur.WriteByte(body[i+1])
			i++
		case inQuote:
			cur.WriteByte(c)
		case c == '"':
			inQuote, quotedPart = true, true
		case c == ',':
			if cur.Len() == 0 && !quotedPart {
				return bad("a part is NULL")
			}
			parts = append(parts, cur.String())
			cur.Reset()
			quotedPart = false
		default:
			cur.WriteByte(c)
		}
	}
	if inQuote {
		return bad("a quote is not closed")
	}
	if cur.Len() == 0 && !quotedPart {
		return bad("a part is NULL")
	}
	parts = append(parts, cur.String())
	if len(parts) != n {
		return bad(fmt.Sprintf("it has %d", len(parts)))
	}
	return parts, nil
}

// ComparePartsC compares two keys of the same number of parts part by
// part, each by its bytes (PostgreSQL's "C" collation): the order of
// ORDER BY a::text COLLATE "C", b::text COLLATE "C". It returns -1, 0 or
// +1.
func ComparePartsC(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if c := strings.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}
