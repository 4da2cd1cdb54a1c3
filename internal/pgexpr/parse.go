package pgexpr

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Limits of a condition.
const (
	MaxLength = 4096
	MaxDepth  = 64
)

// functions are the built-in functions a condition may call: none has a
// side effect, reads outside the row, or takes a lock. Those marked false
// are SQL constructs rather than functions and cannot be qualified with
// pg_catalog.
var functions = map[string]bool{
	"lower": true, "upper": true, "length": true, "char_length": true, "octet_length": true,
	"btrim": true, "ltrim": true, "rtrim": true, "substr": true, "left": true, "right": true, "strpos": true,
	"replace": true, "lpad": true, "rpad": true, "starts_with": true,
	"abs": true, "ceil": true, "floor": true, "round": true, "trunc": true, "mod": true,
	"date_trunc": true, "date_part": true, "now": true, "to_char": true,
	"coalesce": false, "nullif": false, "greatest": false, "least": false,
}

// types are the types a condition may cast to or write a literal of,
// with the name printed.
var types = map[string]string{
	"text": "text", "varchar": "varchar", "char": "char", "bpchar": "bpchar",
	"int": "integer", "integer": "integer", "int2": "smallint", "smallint": "smallint", "int4": "integer", "int8": "bigint", "bigint": "bigint",
	"numeric": "numeric", "decimal": "numeric", "real": "real", "float4": "real", "float8": "double precision",
	"bool": "boolean", "boolean": "boolean", "date": "date", "time": "time", "timetz": "timetz",
	"timestamp": "timestamp", "timestamptz": "timestamptz", "interval": "interval", "uuid": "uuid",
	"json": "json", "jsonb": "jsonb", "bytea": "bytea",
}

// multiword types: the words after the first.
var multiword = map[string][]struct {
	rest []string
	name string
}{
	"double":    {{[]string{"precision"}, "double precision"}},
	"character": {{[]string{"varying"}, "varchar"}},
	"timestamp": {{[]string{"with", "time", "zone"}, "timestamptz"}, {[]string{"without", "time", "zone"}, "timestamp"}},
	"time":      {{[]string{"with", "time", "zone"}, "timetz"}, {[]string{"without", "time", "zone"}, "time"}},
}

// keywords of the grammar; any other reserved word is refused by name.
var keywords = []string{"and", "or", "not", "is", "null", "true", "false", "unknown", "distinct", "from", "like", "ilike", "in", "between",
	"current_date", "current_timestamp", "localtimestamp"}

// reserved are PostgreSQL's reserved key words (Appendix C of the
// manual) outside the grammar: read as a column name they would change
// the statement, so they are refused.
var reserved = []string{"all", "analyse", "analyze", "any", "array", "as", "asc", "asymmetric", "both", "case", "cast", "check", "collate",
	"column", "constraint", "create", "current_catalog", "current_role", "current_time", "current_user", "default", "deferrable", "desc", "do",
	"else", "end", "except", "exists", "fetch", "for", "foreign", "grant", "group", "having", "initially", "intersect", "into", "lateral",
	"leading", "limit", "localtime", "offset", "on", "only", "order", "placing", "primary", "references", "returning", "select", "session_user",
	"some", "symmetric", "system_user", "table", "then", "to", "trailing", "union", "unique", "user", "using", "variadic", "when", "where",
	"window", "with", "values", "row", "similar", "overlaps", "escape", "collation", "over", "filter", "within", "at", "tablesample",
	"delete", "insert", "update", "drop", "alter", "truncate", "copy", "execute", "call", "do", "set", "reset", "show", "notify", "listen",
	"lock", "vacuum", "begin", "commit", "rollback", "savepoint", "prepare", "deallocate", "declare", "discard", "explain", "load", "import",
	"refresh", "reindex", "security", "comment", "cluster", "checkpoint", "natural", "join", "inner", "outer", "left", "right", "full", "cross",
	"isnull", "notnull", "extract", "position", "substring", "trim", "overlay", "xmlparse", "xmlelement", "treat", "nullif", "coalesce",
	"greatest", "least", "exists", "interval"}

type parser struct {
	toks  []token
	i     int
	cols  map[string]bool
	table string
	depth int
}

// Parse reads cond as one boolean expression over the columns of table
// (for messages) and returns its canonical form. columns are the table's
// column names; a column reference outside them is refused. The error
// names the position and the reason.
func Parse(cond, table string, columns []string) (string, error) {
	if strings.TrimSpace(cond) == "" {
		return "", fmt.Errorf("empty condition")
	}
	if len(cond) > MaxLength {
		return "", fmt.Errorf("condition of %d bytes; at most %d", len(cond), MaxLength)
	}
	toks, err := lex(cond)
	if err != nil {
		return "", err
	}
	p := &parser{toks: toks, cols: map[string]bool{}, table: table}
	for _, c := range columns {
		p.cols[c] = true
	}
	out, err := p.or()
	if err != nil {
		return "", err
	}
	if t := p.peek(); t.kind != tEOF {
		return "", fmt.Errorf("at %d: unexpected %s after the expression (one expression only)", t.pos, show(t))
	}
	return out, nil
}

func show(t token) string {
	switch t.kind {
	case tEOF:
		return "end"
	case tString:
		return "a string"
	case tQIdent:
		return fmt.Sprintf("%q", t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) peekAt(n int) token {
	if p.i+n < len(p.toks) {
		return p.toks[p.i+n]
	}
	return p.toks[len(p.toks)-1]
}

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) isWord(w string) bool {
	t := p.peek()
	return t.kind == tIdent && t.text == w
}

func (p *parser) isOp(o string) bool {
	t := p.peek()
	return t.kind == tOp && t.text == o
}

func (p *parser) expectOp(o string) error {
	if !p.isOp(o) {
		t := p.peek()
		return fmt.Errorf("at %d: want %q, found %s", t.pos, o, show(t))
	}
	p.next()
	return nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > MaxDepth {
		return fmt.Errorf("at %d: nested more than %d levels", p.peek().pos, MaxDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

func (p *parser) or() (string, error) {
	l, err := p.and()
	for err == nil && p.isWord("or") {
		p.next()
		var r string
		if r, err = p.and(); err == nil {
			l = "(" + l + " OR " + r + ")"
		}
	}
	return l, err
}

func (p *parser) and() (string, error) {
	l, err := p.not()
	for err == nil && p.isWord("and") {
		p.next()
		var r string
		if r, err = p.not(); err == nil {
			l = "(" + l + " AND " + r + ")"
		}
	}
	return l, err
}

func (p *parser) not() (string, error) {
	if p.isWord("not") {
		p.next()
		if err := p.enter(); err != nil {
			return "", err
		}
		defer p.leave()
		e, err := p.not()
		if err != nil {
			return "", err
		}
		return "(NOT " + e + ")", nil
	}
	return p.is()
}

func (p *parser) is() (string, error) {
	l, err := p.cmp()
	for err == nil && p.isWord("is") {
		p.next()
		neg := ""
		if p.isWord("not") {
			p.next()
			neg = "NOT "
		}
		t := p.next()
		switch {
		case t.kind == tIdent && (t.text == "null" || t.text == "true" || t.text == "false" || t.text == "unknown"):
			l = "(" + l + " IS " + neg + strings.ToUpper(t.text) + ")"
		case t.kind == tIdent && t.text == "distinct":
			if !p.isWord("from") {
				return "", fmt.Errorf("at %d: want FROM after IS %sDISTINCT", p.peek().pos, neg)
			}
			p.next()
			var r string
			if r, err = p.cmp(); err == nil {
				l = "(" + l + " IS " + neg + "DISTINCT FROM " + r + ")"
			}
		default:
			return "", fmt.Errorf("at %d: want NULL, TRUE, FALSE, UNKNOWN or DISTINCT FROM after IS, found %s", t.pos, show(t))
		}
	}
	return l, err
}

var comparisons = []string{"=", "<>", "!=", "<", ">", "<=", ">="}

func (p *parser) cmp() (string, error) {
	l, err := p.pred()
	if err != nil {
		return "", err
	}
	if t := p.peek(); t.kind == tOp && slices.Contains(comparisons, t.text) {
		p.next()
		r, err := p.pred()
		if err != nil {
			return "", err
		}
		op := t.text
		if op == "!=" {
			op = "<>"
		}
		l = "(" + l + " " + op + " " + r + ")"
		if t := p.peek(); t.kind == tOp && slices.Contains(comparisons, t.text) {
			return "", fmt.Errorf("at %d: comparisons do not chain (a < b < c); join them with AND", t.pos)
		}
	}
	return l, nil
}

func (p *parser) pred() (string, error) {
	l, err := p.concat()
	if err != nil {
		return "", err
	}
	neg := ""
	if p.isWord("not") {
		if n := p.peekAt(1); n.kind == tIdent && (n.text == "like" || n.text == "ilike" || n.text == "in" || n.text == "between") {
			p.next()
			neg = "NOT "
		} else {
			return l, nil
		}
	}
	switch {
	case p.isWord("like") || p.isWord("ilike"):
		op := strings.ToUpper(p.next().text)
		r, err := p.concat()
		if err != nil {
			return "", err
		}
		return "(" + l + " " + neg + op + " " + r + ")", nil
	case p.isWord("in"):
		p.next()
		if err := p.expectOp("("); err != nil {
			return "", err
		}
		var items []string
		for {
			if p.isWord("select") || p.isWord("values") || p.isWord("with") || p.isWord("table") {
				return "", fmt.Errorf("at %d: subqueries are not allowed; list the values", p.peek().pos)
			}
			e, err := p.or()
			if err != nil {
				return "", err
			}
			items = append(items, e)
			if !p.isOp(",") {
				break
			}
			p.next()
		}
		if err := p.expectOp(")"); err != nil {
			return "", err
		}
		return "(" + l + " " + neg + "IN (" + strings.Join(items, ", ") + "))", nil
	case p.isWord("between"):
		p.next()
		lo, err := p.concat()
		if err != nil {
			return "", err
		}
		if !p.isWord("and") {
			return "", fmt.Errorf("at %d: want AND in BETWEEN", p.peek().pos)
		}
		p.next()
		hi, err := p.concat()
		if err != nil {
			return "", err
		}
		return "(" + l + " " + neg + "BETWEEN " + lo + " AND " + hi + ")", nil
	}
	return l, nil
}

func (p *parser) concat() (string, error) {
	return p.binary(p.add, "||")
}

func (p *parser) add() (string, error) {
	return p.binary(p.mul, "+", "-")
}

func (p *parser) mul() (string, error) {
	return p.binary(p.unary, "*", "/", "%")
}

func (p *parser) binary(operand func() (string, error), opsHere ...string) (string, error) {
	l, err := operand()
	for err == nil {
		t := p.peek()
		if t.kind != tOp || !slices.Contains(opsHere, t.text) {
			break
		}
		p.next()
		var r string
		if r, err = operand(); err == nil {
			l = "(" + l + " " + t.text + " " + r + ")"
		}
	}
	return l, err
}

func (p *parser) unary() (string, error) {
	if p.isOp("-") || p.isOp("+") {
		op := p.next().text
		if err := p.enter(); err != nil {
			return "", err
		}
		defer p.leave()
		e, err := p.unary()
		if err != nil {
			return "", err
		}
		return "(" + op + e + ")", nil
	}
	return p.postfix()
}

func (p *parser) postfix() (string, error) {
	e, err := p.primary()
	for err == nil && p.isOp("::") {
		p.next()
		var typ string
		if typ, err = p.typeName(); err == nil {
			e = "(" + e + ")::" + typ
		}
	}
	return e, err
}

// typeName reads a type of the list, with an optional (n[, m]) and [].
func (p *parser) typeName() (string, error) {
	t := p.next()
	if t.kind != tIdent {
		return "", fmt.Errorf("at %d: want a type name, found %s", t.pos, show(t))
	}
	name, ok := types[t.text]
	for _, m := range multiword[t.text] {
		match := true
		for k, w := range m.rest {
			if n := p.peekAt(k); n.kind != tIdent || n.text != w {
				match = false
				break
			}
		}
		if match {
			p.i += len(m.rest)
			name, ok = m.name, true
			break
		}
	}
	if !ok {
		return "", fmt.Errorf("at %d: casting to %q is not allowed (built-in types only: text, integer, numeric, date, timestamptz, …)", t.pos, t.text)
	}
	if p.isOp("(") {
		p.next()
		var mods []string
		for {
			n := p.next()
			if n.kind != tNumber || strings.ContainsAny(n.text, ".eE") {
				return "", fmt.Errorf("at %d: want an integer type modifier, found %s", n.pos, show(n))
			}
			mods = append(mods, n.text)
			if !p.isOp(",") {
				break
			}
			p.next()
		}
		if err := p.expectOp(")"); err != nil {
			return "", err
		}
		name += "(" + strings.Join(mods, ",") + ")"
	}
	return name, nil
}

func (p *parser) primary() (string, error) {
	if err := p.enter(); err != nil {
		return "", err
	}
	defer p.leave()
	t := p.next()
	switch t.kind {
	case tNumber:
		return t.text, nil
	case tString:
		return quoteString(t.text), nil
	case tQIdent:
		if p.isOp("(") {
			return "", fmt.Errorf("at %d: function %q is not allowed", t.pos, t.text)
		}
		return p.column(t)
	case tOp:
		if t.text == "(" {
			if p.isWord("select") || p.isWord("values") || p.isWord("with") || p.isWord("table") {
				return "", fmt.Errorf("at %d: subqueries are not allowed", p.peek().pos)
			}
			e, err := p.or()
			if err != nil {
				return "", err
			}
			if err := p.expectOp(")"); err != nil {
				return "", err
			}
			return e, nil
		}
		return "", fmt.Errorf("at %d: unexpected %s", t.pos, show(t))
	case tEOF:
		return "", fmt.Errorf("at %d: the expression ends too early", t.pos)
	}
	// An unquoted word: literal, keyword, typed literal, function or column.
	if t.text == "pg_catalog" && p.isOp(".") {
		p.next()
		f := p.next()
		if f.kind != tIdent || !functions[f.text] || !p.isOp("(") {
			return "", fmt.Errorf("at %d: only the allowed functions may be named in pg_catalog", f.pos)
		}
		t = f
	}
	switch t.text {
	case "true", "false", "null":
		return strings.ToUpper(t.text), nil
	case "current_date", "current_timestamp", "localtimestamp":
		return strings.ToUpper(t.text), nil
	}
	if p.isOp("(") {
		qualify, ok := functions[t.text]
		if !ok {
			return "", fmt.Errorf("at %d: function %s is not allowed (allowed: %s)", t.pos, t.text, allowedFunctions())
		}
		p.next()
		var args []string
		if !p.isOp(")") {
			for {
				e, err := p.or()
				if err != nil {
					return "", err
				}
				args = append(args, e)
				if !p.isOp(",") {
					break
				}
				p.next()
			}
		}
		if err := p.expectOp(")"); err != nil {
			return "", err
		}
		name := t.text
		if qualify {
			name = "pg_catalog." + name
		}
		return name + "(" + strings.Join(args, ", ") + ")", nil
	}
	// DATE '2026-01-01', TIMESTAMP WITH TIME ZONE '…', INTERVAL '1 day'
	if _, isType := types[t.text]; isType || multiword[t.text] != nil {
		save := p.i
		p.i--
		typ, err := p.typeName()
		if err == nil && p.peek().kind == tString {
			return "(" + quoteString(p.next().text) + ")::" + typ, nil
		}
		p.i = save
	}
	if slices.Contains(keywords, t.text) || slices.Contains(reserved, t.text) {
		return "", fmt.Errorf("at %d: %s is not allowed here", t.pos, strings.ToUpper(t.text))
	}
	return p.column(t)
}

func (p *parser) column(t token) (string, error) {
	if p.isOp(".") {
		return "", fmt.Errorf("at %d: qualified names are not allowed; name a column of %s", t.pos, p.table)
	}
	if !p.cols[t.text] {
		return "", fmt.Errorf("at %d: %s is not a column of %s", t.pos, t.text, p.table)
	}
	return pgx.Identifier{t.text}.Sanitize(), nil
}

func allowedFunctions() string {
	var names []string
	for f := range functions {
		names = append(names, f)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// quoteString writes s as an escape string literal: its meaning is the
// same whatever standard_conforming_strings says.
func quoteString(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
