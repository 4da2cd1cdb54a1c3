package pgexpr

import (
	"strings"
	"testing"
)

var testColumns = []string{"id", "name", "country", "credit_limit", "created_at", "status", "Mixed Case", "date"}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
	}{
		{"comparison", "country = 'DE'", `("country" = E'DE')`},
		{"modulo", "id % 7 = 0", `(("id" % 7) = 0)`},
		{"precedence", "id > 1 AND country = 'DE' OR NOT status IS NULL", `((("id" > 1) AND ("country" = E'DE')) OR (NOT ("status" IS NULL)))`},
		{"arithmetic", "credit_limit * 2 + 1 >= -3.5e2", `((("credit_limit" * 2) + 1) >= (-3.5e2))`},
		{"not equal", "status != 'x' AND status <> 'y'", `(("status" <> E'x') AND ("status" <> E'y'))`},
		{"like", "name NOT ILIKE 'a%' AND name LIKE '%\\%'", `(("name" NOT ILIKE E'a%') AND ("name" LIKE E'%\\%'))`},
		{"quote in string", "name = 'O''Brien'", `("name" = E'O''Brien')`},
		{"in", "country IN ('DE', 'FR') AND id NOT IN (1, 2)", `(("country" IN (E'DE', E'FR')) AND ("id" NOT IN (1, 2)))`},
		{"between", "id BETWEEN 1 AND 10 AND id > 0", `(("id" BETWEEN 1 AND 10) AND ("id" > 0))`},
		{"is distinct", "status IS NOT DISTINCT FROM 'open'", `("status" IS NOT DISTINCT FROM E'open')`},
		{"is true", "(id > 1) IS TRUE", `(("id" > 1) IS TRUE)`},
		{"cast", "status::text = 'open' AND credit_limit::numeric(12,2) > 0", `((("status")::text = E'open') AND (("credit_limit")::numeric(12,2) > 0))`},
		{"multiword cast", "created_at::timestamp with time zone > now()", `(("created_at")::timestamptz > pg_catalog.now())`},
		{"typed literal", "created_at >= DATE '2026-01-01' AND created_at < now() - interval '1 day'",
			`(("created_at" >= (E'2026-01-01')::date) AND ("created_at" < (pg_catalog.now() - (E'1 day')::interval)))`},
		{"functions", "lower(name) = 'x' AND coalesce(status, 'none') = 'none'", `((pg_catalog.lower("name") = E'x') AND (coalesce("status", E'none') = E'none'))`},
		{"keywords", "created_at < CURRENT_TIMESTAMP AND true", `(("created_at" < CURRENT_TIMESTAMP) AND TRUE)`},
		{"quoted and folded names", `"Mixed Case" = 1 AND ID = 2`, `(("Mixed Case" = 1) AND ("id" = 2))`},
		{"a column named like a type", "date > 1", `("date" > 1)`},
		{"concat", "name || 'x' = 'ax'", `(("name" || E'x') = E'ax')`},
		{"just true", "true", `TRUE`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.in, "public.accounts", testColumns)
			if err != nil {
				t.Fatalf("Parse(%q): %v", c.in, err)
			}
			if got != c.want {
				t.Errorf("Parse(%q)\n got %s\nwant %s", c.in, got, c.want)
			}
			again, err := Parse(got, "public.accounts", testColumns)
			if err != nil || again != got {
				t.Errorf("Parse of the canonical form %s = %s, %v; want it unchanged", got, again, err)
			}
		})
	}
}

func TestParse_Refuses(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
	}{
		{"second statement", "true; DELETE FROM accounts", "another statement"},
		{"trailing semicolon", "id = 1;", "another statement"},
		{"line comment", "id = 1 -- AND false", "comments"},
		{"block comment", "id = 1 /* x */", "comments"},
		{"comment inside an operator", "id =-- x\n1", "comments"},
		{"dollar quote", "name = $$x$$", "'$'"},
		{"parameter", "id = $1", "'$'"},
		{"subquery", "id IN (SELECT id FROM accounts)", "subqueries"},
		{"scalar subquery", "(SELECT count(*) FROM pg_authid) > 0", "subqueries"},
		{"exists", "EXISTS (SELECT 1)", "function exists is not allowed"},
		{"side effect", "pg_terminate_backend(42) IS NULL", "function pg_terminate_backend is not allowed"},
		{"file read", "length(pg_read_file('/etc/passwd')) > 0", "function pg_read_file is not allowed"},
		{"qualified other function", "pg_catalog.pg_sleep(10) IS NULL", "only the allowed functions"},
		{"quoted function", `"lower"(name) = 'x'`, "function"},
		{"unbalanced to widen the chunk query", "true) OR (1=1", "unexpected"},
		{"closing parenthesis", "id = 1)", "unexpected"},
		{"unknown column", "no_such_column > 1", "no_such_column is not a column of public.accounts"},
		{"qualified column", "accounts.id = 1", "qualified names"},
		{"other table's column", "other.secret = 1", "qualified names"},
		{"escape string with an escape", `name = E'\x41'`, `only \\`},
		{"escape string hiding a quote", `name = E'\' OR true --'`, `only \\`},
		{"unicode string", "name = U&'\\0041'", "U&"},
		{"bit string", "id = B'1'", "B'…'"},
		{"adjacent strings", "name = 'a'\n'b'", "adjacent"},
		{"cast to another type", "name::regclass IS NULL", "casting to \"regclass\""},
		{"unknown operator", "name ~ 'x'", "operator"},
		{"operator run", "id <>= 1", "operator"},
		{"chained comparison", "1 < id < 3", "do not chain"},
		{"reserved word", "id = 1 UNION SELECT 1", "unexpected"},
		{"select as column", "select = 1", "SELECT is not allowed"},
		{"empty", "  ", "empty"},
		{"too long", strings.Repeat("id = 1 AND ", 400) + "true", "at most"},
		{"too deep", strings.Repeat("(", 100) + "true" + strings.Repeat(")", 100), "nested"},
		{"unterminated string", "name = 'x", "unterminated"},
		{"backslash", `id = 1 \g`, `'\'`},
		{"malformed number", "id = 1e", "malformed"},
		{"two expressions", "id = 1 id = 2", "one expression only"},
		{"set", "set_config('x', 'y', false) IS NULL", "function set_config is not allowed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.in, "public.accounts", testColumns)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse(%q) = %q, %v; want an error containing %q", c.in, got, err, c.want)
			}
		})
	}
}

// FuzzParse: whatever is accepted prints as one canonical expression that
// parses to itself and holds nothing that could end the statement or hide
// text from the server (no ';', comment start or '$' outside strings).
func FuzzParse(f *testing.F) {
	for _, s := range []string{"country = 'DE'", "id % 7 = 0", "name LIKE 'a%' OR id IN (1, 2)", "created_at > now() - interval '1 day'",
		"true; DELETE FROM accounts", "id = 1 -- x", "name = E'a\\\\b'", `"Mixed Case" IS NOT NULL`, "lower(name)::text <> 'x'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := Parse(in, "t", testColumns)
		if err != nil {
			return
		}
		again, err := Parse(out, "t", testColumns)
		if err != nil || again != out {
			t.Fatalf("Parse(%q) = %q, which parses to %q, %v", in, out, again, err)
		}
		toks, err := lex(out)
		if err != nil {
			t.Fatalf("canonical form %q does not lex: %v", out, err)
		}
		depth := 0
		for _, tk := range toks {
			if tk.kind == tOp && tk.text == "(" {
				depth++
			}
			if tk.kind == tOp && tk.text == ")" {
				depth--
				if depth < 0 {
					t.Fatalf("canonical form %q closes more than it opens", out)
				}
			}
		}
		if depth != 0 {
			t.Fatalf("canonical form %q is unbalanced", out)
		}
	})
}
