package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// TestSink_NeverStrongerThanTheTableOwner (issue 12): a sink connected as a
// superuser refuses to apply to a table a non-superuser owns (a trigger
// of that owner enabled for replicas would run as superuser), naming
// table, owner and the surplus, and writes nothing; once the owner is one
// at least as strong, the same sink applies.
func TestSink_NeverStrongerThanTheTableOwner(t *testing.T) {
	ctx := context.Background()
	s, conn := newCustomTarget(t, `CREATE TABLE t (id serial PRIMARY KEY, note text, amount numeric(12,2), stamp text);
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_owner') THEN CREATE ROLE app_owner; END IF; END $$;
ALTER TABLE t OWNER TO app_owner;`, noteMapping, "")
	_, err := s.Apply(ctx, []*transform.Tx{tx(0x100, noteEv("1", "a"))})
	if err == nil {
		t.Fatal("applied as superuser to a table app_owner owns")
	}
	for _, want := range []string{"role postgres would apply to table public.t with more power than its owner app_owner (SUPERUSER"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := queryCount(t, conn, `SELECT count(*) FROM t`); n != 0 {
		t.Errorf("%d rows written", n)
	}
	exec(t, conn, `ALTER TABLE t OWNER TO postgres`)
	mustApply(t, s, tx(0x100, noteEv("1", "a")))
	if n := queryCount(t, conn, `SELECT count(*) FROM t`); n != 1 {
		t.Errorf("%d rows after the owner changed, want 1", n)
	}
}

// TestCheckPrivileges_NamesEachMissingGrant: a role with SELECT only is
// told each privilege the flow needs and the GRANT that gives it: INSERT,
// UPDATE, DELETE on the table (the crm owns the key) and SELECT, UPDATE on
// the key's sequence (sequence: follow).
func TestCheckPrivileges_NamesEachMissingGrant(t *testing.T) {
	ctx := context.Background()
	_, conn := newCustomTarget(t, `CREATE TABLE t (id serial PRIMARY KEY, note text, amount numeric(12,2), stamp text);
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duplex_reader') THEN CREATE ROLE duplex_reader LOGIN; END IF; END $$;
GRANT SELECT ON t TO duplex_reader;`, noteMapping, "")
	m, err := transform.Parse([]byte(noteMapping))
	if err != nil {
		t.Fatal(err)
	}
	cfg := conn.Config().Copy()
	cfg.User = "duplex_reader"
	reader, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)
	err = postgres.CheckPrivileges(ctx, reader, m, "erp", "crm")
	if err == nil {
		t.Fatal("a role with SELECT only passes")
	}
	for _, p := range []string{"INSERT", "UPDATE", "DELETE"} {
		if want := fmt.Sprintf("role duplex_reader lacks %s on table public.t", p); !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
		if want := fmt.Sprintf(`GRANT %s ON TABLE public.t TO "duplex_reader"`, p); !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if want := `lacks UPDATE on sequence public.t_id_seq, which entity note's sequence: follow reads and moves (setval); GRANT SELECT, UPDATE ON SEQUENCE public.t_id_seq TO "duplex_reader"`; !strings.Contains(err.Error(), want) {
		t.Errorf("error does not say %q:\n%v", want, err)
	}
	exec(t, conn, `GRANT INSERT, UPDATE, DELETE ON t TO duplex_reader; GRANT SELECT, UPDATE ON SEQUENCE t_id_seq TO duplex_reader`)
	if err := postgres.CheckPrivileges(ctx, reader, m, "erp", "crm"); err != nil {
		t.Errorf("after the grants: %v", err)
	}
}

func queryCount(t *testing.T, c *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
