package app

import "testing"

func TestErrorClass(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"check violation", `permanent apply error: sink erp: upsert 1 rows into public.customers (entity customer): ERROR: new row for relation "customers" violates check constraint "no_poison" (SQLSTATE 23514)`,
			"permanent, SQLSTATE 23514"},
		{"unique violation quoting the value", `permanent apply error: sink erp: ERROR: duplicate key value violates unique constraint "customers_email_key" DETAIL: Key (email)=(ann@example.com) already exists. (SQLSTATE 23505)`,
			"permanent, SQLSTATE 23505"},
		{"field", `entity order key 7 field total value "12.345": JPY has 0 decimals`, "field total"},
		{"waiting", `waiting apply error: sink erp: reference customer key 9 has not arrived`, "waiting"},
		{"undecodable", `undecodable message: invalid character 'x'`, "undecodable message"},
		{"whole transaction", `transaction 0/1 (xid 5) failed as a whole: permanent apply error: x (SQLSTATE 22003)`, "permanent, SQLSTATE 22003, transaction failed as a whole"},
		{"unknown", `something about ann@example.com`, "other"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ErrorClass(c.in); got != c.want {
				t.Errorf("ErrorClass(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}
