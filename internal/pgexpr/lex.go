package pgexpr

import (
	"fmt"
	"slices"
	"strings"
)

type tokKind int

const (
	tEOF    tokKind = iota
	tIdent          // unquoted identifier or keyword, lower-cased
	tQIdent         // "quoted" identifier
	tNumber
	tString // 'literal', unescaped
	tOp     // operator or punctuation
)

type token struct {
	kind tokKind
	text string
	pos  int // byte offset in the input
}

// ops are the operators of the grammar.
var ops = []string{"::", "<>", "!=", "<=", ">=", "||", "=", "<", ">", "+", "-", "*", "/", "%"}

// opChars make up PostgreSQL operator names (and ':' of the cast).
const opChars = "+-*/<>=~!@#%^&|`?:"

// operatorAt is the operator at the start of s as PostgreSQL's lexer reads
// it (section 4.1.3 of the manual): the longest run of operator
// characters, cut before a comment start, without trailing + and - unless
// the run holds one of ~ ! @ # % ^ & | ` ?. The cast "::" stands alone.
func operatorAt(s string) string {
	if strings.HasPrefix(s, "::") {
		return "::"
	}
	n := 0
	for n < len(s) && strings.IndexByte(opChars, s[n]) >= 0 && s[n] != ':' {
		if strings.HasPrefix(s[n:], "--") || strings.HasPrefix(s[n:], "/*") {
			break
		}
		n++
	}
	if n == 0 {
		return s[:1]
	}
	run := s[:n]
	if n > 1 && !strings.ContainsAny(run, "~!@#%^&|`?") {
		for len(run) > 1 && (run[len(run)-1] == '+' || run[len(run)-1] == '-') {
			run = run[:len(run)-1]
		}
	}
	return run
}

// lex splits s into tokens, refusing what the grammar never allows with
// a reason that says why.
func lex(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == ';':
			return nil, fmt.Errorf("at %d: ';' would end the condition and start another statement; give one expression", i)
		case strings.HasPrefix(s[i:], "--") || strings.HasPrefix(s[i:], "/*"):
			return nil, fmt.Errorf("at %d: comments are not allowed", i)
		case c == '$':
			return nil, fmt.Errorf("at %d: '$' (parameters, dollar quoting) is not allowed", i)
		case c == '\\':
			return nil, fmt.Errorf("at %d: '\\' is not allowed outside a string", i)
		case c == '\'':
			v, n, err := lexString(s, i, false)
			if err != nil {
				return nil, err
			}
			out = append(out, token{tString, v, i})
			i += n
		case c == '"':
			j := i + 1
			var b strings.Builder
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("at %d: unterminated quoted identifier", i)
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				if s[j] < 0x20 || s[j] == 0x7f {
					return nil, fmt.Errorf("at %d: control character in a quoted identifier", j)
				}
				b.WriteByte(s[j])
				j++
			}
			if b.Len() == 0 {
				return nil, fmt.Errorf("at %d: empty quoted identifier", i)
			}
			out = append(out, token{tQIdent, b.String(), i})
			i = j + 1
		case isDigit(c) || c == '.' && i+1 < len(s) && isDigit(s[i+1]):
			j := i
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			if j < len(s) && s[j] == '.' {
				j++
				for j < len(s) && isDigit(s[j]) {
					j++
				}
			}
			if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
				k := j + 1
				if k < len(s) && (s[k] == '+' || s[k] == '-') {
					k++
				}
				if k < len(s) && isDigit(s[k]) {
					for k < len(s) && isDigit(s[k]) {
						k++
					}
					j = k
				}
			}
			if j < len(s) && (isIdentChar(s[j]) || s[j] == '.') {
				return nil, fmt.Errorf("at %d: malformed number %q", i, s[i:min(len(s), j+1)])
			}
			out = append(out, token{tNumber, s[i:j], i})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			word := strings.ToLower(s[i:j])
			if word == "e" && j < len(s) && s[j] == '\'' {
				v, n, err := lexString(s, j, true)
				if err != nil {
					return nil, err
				}
				out = append(out, token{tString, v, i})
				i = j + n
				continue
			}
			if j < len(s) && s[j] == '\'' {
				switch word {
				case "b", "x", "n":
					return nil, fmt.Errorf("at %d: %s'…' strings are not allowed; use a plain '…' string", i, strings.ToUpper(word))
				}
			}
			if word == "u" && strings.HasPrefix(s[j:], "&") {
				return nil, fmt.Errorf("at %d: U&'…' strings and identifiers are not allowed", i)
			}
			out = append(out, token{tIdent, word, i})
			i = j
		case strings.IndexByte(opChars, c) >= 0:
			op := operatorAt(s[i:])
			if !slices.Contains(ops, op) {
				return nil, fmt.Errorf("at %d: operator %q is not allowed", i, op)
			}
			out = append(out, token{tOp, op, i})
			i += len(op)
		case c == '(' || c == ')' || c == ',' || c == '.':
			out = append(out, token{tOp, string(c), i})
			i++
		default:
			return nil, fmt.Errorf("at %d: %q is not allowed", i, runeAt(s, i))
		}
	}
	return append(out, token{tEOF, "", len(s)}), nil
}

// lexString reads a string literal at s[i]: standard ('…', a doubled
// quote for a quote; a backslash is an ordinary character, as with
// standard_conforming_strings on, PostgreSQL's default), or with escape
// the body of an E'…' literal, where the only escape allowed is \\ (a
// backslash: what this package prints). Adjacent literals separated only
// by whitespace containing a newline are one literal in PostgreSQL; that
// form is refused.
func lexString(s string, i int, escape bool) (string, int, error) {
	var b strings.Builder
	j := i + 1
	for {
		if j >= len(s) {
			return "", 0, fmt.Errorf("at %d: unterminated string", i)
		}
		if s[j] == '\'' {
			if j+1 < len(s) && s[j+1] == '\'' {
				b.WriteByte('\'')
				j += 2
				continue
			}
			break
		}
		if s[j] == 0 {
			return "", 0, fmt.Errorf("at %d: NUL in a string", j)
		}
		if escape && s[j] == '\\' {
			if j+1 >= len(s) || s[j+1] != '\\' {
				return "", 0, fmt.Errorf("at %d: in E'…' strings only \\\\ (a backslash) is allowed; write other characters as they are in a plain '…' string", j)
			}
			b.WriteByte('\\')
			j += 2
			continue
		}
		b.WriteByte(s[j])
		j++
	}
	j++
	// 'a'
	// 'b' is 'ab' in PostgreSQL: refuse continuation rather than guess.
	k := j
	for k < len(s) && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r' || s[k] == '\f') {
		k++
	}
	if k > j && k < len(s) && s[k] == '\'' {
		return "", 0, fmt.Errorf("at %d: two adjacent strings; join them into one", k)
	}
	return b.String(), j - i, nil
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isIdentChar(c byte) bool  { return isIdentStart(c) || isDigit(c) }

func runeAt(s string, i int) string {
	for j := i + 1; j <= len(s); j++ {
		if j == len(s) || s[j]&0xc0 != 0x80 {
			return s[i:j]
		}
	}
	return s[i:]
}
