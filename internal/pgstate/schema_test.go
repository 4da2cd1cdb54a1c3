package pgstate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/transform"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) {
	var err error
	cluster, err = harness.StartCluster(context.Background(), harness.ClusterOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Roles are cluster-wide: duplex_erp is what duplex connects as,
	// mallory someone else, duplex_owners a group duplex_erp belongs to.
	err = cluster.Exec(context.Background(), "postgres", `
CREATE ROLE duplex_erp LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE duplex_owners;
GRANT duplex_owners TO duplex_erp;`)
	if err != nil {
		cluster.Close()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Close()
	os.Exit(code)
}

// newDB creates a database that duplex_erp may create schemas in and
// returns its name.
func newDB(t *testing.T) string {
	t.Helper()
	db := "st_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	ctx := context.Background()
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, db, fmt.Sprintf(`GRANT CREATE ON DATABASE %s TO duplex_erp`, pgx.Identifier{db}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	return db
}

// connect opens a session on db as role (postgres: the superuser).
func connect(t *testing.T, db, role string, tracer pgx.QueryTracer) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(cluster.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	cfg.Tracer = tracer
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// releaseDDL is the duplex schema exactly as the release before pgstate
// made it: the four statements of sinks/postgres, capture/postgres
// (snapshots, backfills) and internal/app (holds), copied verbatim.
var releaseDDL = []string{`
CREATE SCHEMA IF NOT EXISTS duplex;
CREATE TABLE IF NOT EXISTS duplex.applied (
	flow        text PRIMARY KEY,
	source      text NOT NULL,
	commit_lsn  pg_lsn NOT NULL,
	commit_time timestamptz NOT NULL,
	xid         bigint NOT NULL,
	applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE duplex.applied IS 'duplex: last source transaction applied per flow, written in the same transaction as the rows';
CREATE TABLE IF NOT EXISTS duplex.field_versions (
	entity      text NOT NULL,
	key         text NOT NULL,
	field       text NOT NULL,
	source      text NOT NULL,
	commit_time timestamptz NOT NULL,
	value_hash  text,
	PRIMARY KEY (entity, key, field)
);
COMMENT ON TABLE duplex.field_versions IS 'duplex: source and commit time of the value duplex last wrote into each shared (owner both) field';`, `
CREATE SCHEMA IF NOT EXISTS duplex;
CREATE TABLE IF NOT EXISTS duplex.snapshots (
	slot           text PRIMARY KEY,
	consistent_lsn pg_lsn NOT NULL,
	rows           bigint NOT NULL,
	completed_at   timestamptz NOT NULL DEFAULT now()
);`, `
CREATE SCHEMA IF NOT EXISTS duplex;
CREATE TABLE IF NOT EXISTS duplex.backfills (
	id           bigserial PRIMARY KEY,
	slot         text NOT NULL,
	tbl          text NOT NULL,
	filter       text NOT NULL DEFAULT '',
	chunk_rows   int NOT NULL DEFAULT 500,
	status       text NOT NULL DEFAULT 'requested', -- requested, running, done, failed
	last_key     text,
	rows         bigint NOT NULL DEFAULT 0,
	estimate     bigint NOT NULL DEFAULT 0,
	error        text NOT NULL DEFAULT '',
	requested_at timestamptz NOT NULL DEFAULT now(),
	started_at   timestamptz,
	finished_at  timestamptz
);`, `
CREATE SCHEMA IF NOT EXISTS duplex;
CREATE TABLE IF NOT EXISTS duplex.held (
	system    text NOT NULL,
	entity    text NOT NULL,
	since_lsn pg_lsn NOT NULL,
	reason    text NOT NULL,
	held_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (system, entity)
);`}

// shape describes the duplex schema: per table its columns (name, type,
// nullability, default), constraints, indexes and comment, one line each.
func shape(t *testing.T, conn *pgx.Conn, except ...string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
SELECT format('column %s.%s %s null=%s default=%s', table_name, column_name, data_type, is_nullable, coalesce(column_default, '-'))
	FROM information_schema.columns WHERE table_schema = 'duplex'
UNION ALL
SELECT format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid))
	FROM pg_constraint WHERE connamespace = 'duplex'::regnamespace
UNION ALL
SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'duplex'
UNION ALL
SELECT format('comment %s %s', c.oid::regclass, obj_description(c.oid, 'pg_class'))
	FROM pg_class c WHERE c.relnamespace = 'duplex'::regnamespace AND c.relkind = 'r'
ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(all, func(l string) bool {
		return slices.ContainsFunc(except, func(x string) bool { return strings.Contains(l, x) })
	})
}

// fresh is the shape of a database Ensure created the schema in.
func fresh(t *testing.T) []string {
	t.Helper()
	conn := connect(t, newDB(t), "postgres", nil)
	if err := pgstate.Ensure(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	return shape(t, conn)
}

func TestEnsure_UpgradesReleaseInPlace(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, newDB(t), "postgres", nil)
	for _, ddl := range releaseDDL {
		exec(t, conn, ddl)
	}
	released := shape(t, conn)
	exec(t, conn, `INSERT INTO duplex.applied (flow, source, commit_lsn, commit_time, xid) VALUES ('to-erp', 'crm', '0/16B3748', '2024-05-01 10:00:00+00', 4711)`)
	exec(t, conn, `INSERT INTO duplex.field_versions VALUES ('customer', 'k1', 'name', 'crm', '2024-05-01 10:00:00+00', md5('Acme'))`)
	exec(t, conn, `INSERT INTO duplex.snapshots (slot, consistent_lsn, rows) VALUES ('duplex_crm', '0/1000', 42)`)
	exec(t, conn, `INSERT INTO duplex.backfills (slot, tbl, filter) VALUES ('duplex_crm', 'public.accounts', 'id > 3')`)
	exec(t, conn, `INSERT INTO duplex.held (system, entity, since_lsn, reason) VALUES ('crm', 'customer', '0/2000', 'column name is missing')`)

	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatalf("Ensure on a release install: %v", err)
	}

	// Migration 1 is exactly the release's tables: the columns and keys
	// of a fresh install, less the version table and the tables later
	// migrations add, are the release's.
	want := fresh(t)
	if got := shape(t, conn); !slices.Equal(got, want) {
		t.Errorf("upgraded schema differs from a fresh install:\n got %q\nwant %q", got, want)
	}
	later := []string{"column slots.", "constraint duplex.slots ", // migration 3
		"column held_released.", "constraint duplex.held_released ", // migration 4
		"column signing_keys.", "constraint duplex.signing_keys ", // migration 5
		"column field_hash_key.", "constraint duplex.field_hash_key "} // migration 6
	freshCols := slices.DeleteFunc(slices.Clone(want), func(l string) bool {
		for _, p := range later {
			if strings.HasPrefix(l, p) {
				return true
			}
		}
		return strings.Contains(l, "schema_version") || !strings.HasPrefix(l, "column ") && !strings.HasPrefix(l, "constraint ")
	})
	releasedCols := slices.DeleteFunc(released, func(l string) bool {
		return !strings.HasPrefix(l, "column ") && !strings.HasPrefix(l, "constraint ")
	})
	if !slices.Equal(freshCols, releasedCols) {
		t.Errorf("migrations produce other columns or keys than the release:\n got %q\nwant %q", freshCols, releasedCols)
	}

	pos, err := pgstate.Applied(ctx, conn, "to-erp")
	if err != nil {
		t.Fatal(err)
	}
	if pos.LSN.String() != "0/16B3748" || pos.Xid != 4711 || !pos.CommitTime.Equal(time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("applied position after the upgrade = %+v", pos)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || fv[0].Field != "name" || fv[0].Source != "crm" || fv[0].ValueHash == nil {
		t.Errorf("field versions after the upgrade = %+v", fv)
	}
	if done, err := pgstate.SnapshotDone(ctx, conn, "duplex_crm"); err != nil || !done {
		t.Errorf("snapshot of duplex_crm after the upgrade: done %v, %v", done, err)
	}
	id, ok, err := pgstate.PendingBackfill(ctx, conn, "duplex_crm")
	if err != nil || !ok {
		t.Fatalf("pending backfill after the upgrade: %v %v", ok, err)
	}
	if b, err := pgstate.BackfillByID(ctx, conn, id); err != nil || b.Table != "public.accounts" || b.Filter != "id > 3" || b.ChunkRows != 500 {
		t.Errorf("backfill after the upgrade = %+v, %v", b, err)
	}
	holds, err := pgstate.Holds(ctx, conn, "crm")
	if err != nil || len(holds) != 1 || holds[0].Entity != "customer" || holds[0].Since.String() != "0/2000" {
		t.Errorf("holds after the upgrade = %+v, %v", holds, err)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM duplex.schema_version`); n != int64(pgstate.Latest()) {
		t.Errorf("%d versions recorded, want %d", n, pgstate.Latest())
	}
	if v := queryInt(t, conn, `SELECT max(version) FROM duplex.schema_version WHERE applied_by LIKE 'duplex %' AND description <> ''`); v != int64(pgstate.Latest()) {
		t.Errorf("recorded version %d, want %d", v, pgstate.Latest())
	}
}

// countQueries counts the statements a session sends.
type countQueries struct{ n atomic.Int64 }

func (c *countQueries) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countQueries) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestEnsure_FreshInstallIsIdempotentAndCheap(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	count := &countQueries{}
	conn := connect(t, db, "duplex_erp", count)
	if err := pgstate.Verify(ctx, conn); err != nil {
		t.Fatalf("Verify without a schema: %v", err)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'duplex'`); n != 0 {
		t.Fatalf("Verify created the schema")
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	first := shape(t, conn)
	var at time.Time
	if err := conn.QueryRow(ctx, `SELECT max(applied_at) FROM duplex.schema_version`).Scan(&at); err != nil {
		t.Fatal(err)
	}
	other := connect(t, db, "duplex_erp", count)
	before := count.n.Load()
	if err := pgstate.Ensure(ctx, other); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	if n := count.n.Load() - before; n > 2 {
		t.Errorf("Ensure at the latest version sent %d statements, want at most 2", n)
	}
	if got := shape(t, conn); !slices.Equal(got, first) {
		t.Errorf("second Ensure changed the schema:\n got %q\nwant %q", got, first)
	}
	var at2 time.Time
	if err := conn.QueryRow(ctx, `SELECT max(applied_at) FROM duplex.schema_version`).Scan(&at2); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM duplex.schema_version`); n != int64(pgstate.Latest()) || !at2.Equal(at) {
		t.Errorf("second Ensure recorded versions again: %d rows, last at %s (was %s)", n, at2, at)
	}
	if owner := queryInt(t, conn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'duplex' AND nspowner = 'duplex_erp'::regrole`); owner != 1 {
		t.Errorf("the schema is not owned by the role that created it")
	}
}

func TestEnsure_ConcurrentSessions(t *testing.T) {
	for _, name := range []string{"fresh", "release"} {
		t.Run(name, func(t *testing.T) {
			db := newDB(t)
			admin := connect(t, db, "postgres", nil)
			if name == "release" {
				for _, ddl := range releaseDDL {
					exec(t, admin, ddl)
				}
				exec(t, admin, `INSERT INTO duplex.applied (flow, source, commit_lsn, commit_time, xid) VALUES ('to-erp', 'crm', '0/10', now(), 1)`)
			}
			const sessions = 6
			conns := make([]*pgx.Conn, sessions)
			for i := range conns {
				conns[i] = connect(t, db, "postgres", nil)
			}
			errs := make([]error, sessions)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs[i] = pgstate.Ensure(context.Background(), conns[i])
				}()
			}
			close(start)
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("concurrent Ensure: %v", err)
			}
			if n := queryInt(t, admin, `SELECT count(*) FROM duplex.schema_version`); n != int64(pgstate.Latest()) {
				t.Errorf("%d versions recorded, want %d", n, pgstate.Latest())
			}
			if name == "release" {
				if n := queryInt(t, admin, `SELECT count(*) FROM duplex.applied`); n != 1 {
					t.Errorf("duplex.applied holds %d rows after the upgrade, want 1", n)
				}
			}
		})
	}
}

func TestEnsure_RefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	conn := connect(t, db, "postgres", nil)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	future := pgstate.Latest() + 3
	exec(t, conn, `INSERT INTO duplex.schema_version (version, description, applied_by) VALUES ($1, 'from the future', 'duplex v9')`, future)
	for name, f := range map[string]func(context.Context, *pgx.Conn) error{"Ensure": pgstate.Ensure, "Verify": pgstate.Verify} {
		err := f(ctx, connect(t, db, "postgres", nil))
		if !errors.Is(err, pgstate.ErrTooNew) {
			t.Fatalf("%s on a newer schema: %v, want ErrTooNew", name, err)
		}
		msg := err.Error()
		for _, want := range []string{fmt.Sprintf("%q", db), fmt.Sprintf("version %d", future), fmt.Sprintf("up to %d", pgstate.Latest()), "run that release or a later one"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q does not say %q", name, msg, want)
			}
		}
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM duplex.schema_version`); n != int64(pgstate.Latest())+1 {
		t.Errorf("refusal changed duplex.schema_version: %d rows", n)
	}
}

func TestEnsure_RefusesUntrustedObjects(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   string // run by the superuser after duplex_erp made the schema, or instead when before
		before  bool
		wantErr string // empty: accepted
	}{
		{
			name:    "schema created by someone else",
			before:  true,
			setup:   `CREATE SCHEMA duplex AUTHORIZATION mallory`,
			wantErr: `duplex schema is owned by role "mallory", not by "duplex_erp" or a role it belongs to; refusing to use it`,
		},
		{
			name:    "table owned by someone else",
			setup:   `ALTER TABLE duplex.applied OWNER TO mallory`,
			wantErr: `duplex schema object duplex.applied is owned by role "mallory", not by "duplex_erp" or a role it belongs to; refusing to use it`,
		},
		{
			name:    "version table owned by someone else",
			setup:   `ALTER TABLE duplex.schema_version OWNER TO mallory`,
			wantErr: `duplex schema object duplex.schema_version is owned by role "mallory"`,
		},
		{
			name: "trigger",
			setup: `CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER spy BEFORE INSERT ON duplex.applied FOR EACH ROW EXECUTE FUNCTION public.spy()`,
			wantErr: `duplex schema object duplex.applied has trigger "spy", which duplex did not create; refusing to use it`,
		},
		{
			name:    "view in place of a table",
			setup:   `DROP TABLE duplex.held; CREATE VIEW duplex.held AS SELECT 'crm'::text AS system; ALTER VIEW duplex.held OWNER TO duplex_erp`,
			wantErr: `duplex schema object duplex.held is a view, not an ordinary table; refusing to use it`,
		},
		{
			name:  "table owned by a role duplex belongs to",
			setup: `ALTER TABLE duplex.applied OWNER TO duplex_owners; ALTER SCHEMA duplex OWNER TO duplex_owners`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newDB(t)
			admin := connect(t, db, "postgres", nil)
			if tt.before {
				exec(t, admin, tt.setup)
			} else {
				if err := pgstate.Ensure(ctx, connect(t, db, "duplex_erp", nil)); err != nil {
					t.Fatal(err)
				}
				exec(t, admin, tt.setup)
			}
			conn := connect(t, db, "duplex_erp", nil)
			for name, f := range map[string]func(context.Context, *pgx.Conn) error{"Verify": pgstate.Verify, "Ensure": pgstate.Ensure} {
				err := f(ctx, conn)
				if tt.wantErr == "" {
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
					continue
				}
				if !errors.Is(err, pgstate.ErrUntrusted) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("%s: %v\nwant an ErrUntrusted saying %q", name, err, tt.wantErr)
				}
				if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("database %q", db)) {
					t.Errorf("%s: %v does not name the database", name, err)
				}
			}
			if tt.before {
				// Refused before migrating anything.
				if n := queryInt(t, admin, `SELECT count(*) FROM pg_class WHERE relnamespace = 'duplex'::regnamespace`); n != 0 {
					t.Errorf("%d objects created in a foreign schema", n)
				}
			}
		})
	}
}

func TestBookkeeping_RoundTrip(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	conn := connect(t, db, "duplex_erp", nil)
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	exec(t, connect(t, db, "postgres", nil), `CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
INSERT INTO public.accounts VALUES (1, 'Acme'), (2, NULL);
GRANT SELECT ON public.accounts TO duplex_erp`)

	if p, err := pgstate.Applied(ctx, conn, "to-erp"); err != nil || p != (transform.Position{}) {
		t.Fatalf("Applied before any write = %+v, %v", p, err)
	}
	at := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgstate.WriteApplied(ctx, tx, "to-erp", "crm", transform.Position{LSN: 0x16B3748, CommitTime: at, Xid: 7}); err != nil {
		t.Fatal(err)
	}
	// The hashes of the canonical values now in the rows (the sink reads
	// them back and canonicalizes them).
	w := pgstate.Written{Entity: "customer", Field: "name",
		Keys: []string{"1", "2"}, Sources: []string{"crm", "erp"}, At: []time.Time{at, at}, Hashes: []*string{pgstate.HashCanonical("Acme"), nil}}
	if err := pgstate.RecordWritten(ctx, tx, w); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := pgstate.Applied(ctx, conn, "to-erp"); err != nil || p.LSN != capture.LSN(0x16B3748) || p.Xid != 7 || !p.CommitTime.Equal(at) {
		t.Errorf("Applied = %+v, %v", p, err)
	}
	fv, err := pgstate.ReadFieldVersions(ctx, conn, "customer", []string{"1", "2", "3"})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(fv, func(a, b pgstate.FieldVersion) int { return strings.Compare(a.Key, b.Key) })
	if len(fv) != 2 || fv[0].Source != "crm" || fv[0].ValueHash == nil || fv[1].Source != "erp" || fv[1].ValueHash != nil {
		t.Errorf("field versions = %+v", fv)
	}
	if len(fv) == 2 && (!fv[0].Holds("Acme", nil) || fv[0].Legacy() || !fv[1].Holds(nil, nil)) {
		t.Errorf("field versions %+v do not hold the values written", fv)
	}

	if err := pgstate.RecordSnapshot(ctx, conn, "duplex_crm", 0x1000, 42); err != nil {
		t.Fatal(err)
	}
	if done, err := pgstate.SnapshotDone(ctx, conn, "duplex_crm"); err != nil || !done {
		t.Errorf("SnapshotDone = %v, %v", done, err)
	}
	if done, err := pgstate.SnapshotDone(ctx, conn, "other"); err != nil || done {
		t.Errorf("SnapshotDone of another slot = %v, %v", done, err)
	}

	id, err := pgstate.RequestBackfill(ctx, conn, "duplex_crm", "public.accounts", `"public"."accounts"`, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok, err := pgstate.PendingBackfill(ctx, conn, "duplex_crm"); err != nil || !ok || got != id {
		t.Fatalf("PendingBackfill = %d %v %v, want %d", got, ok, err, id)
	}
	if err := pgstate.StartBackfill(ctx, conn, id); err != nil {
		t.Fatal(err)
	}
	if err := pgstate.BackfillProgress(ctx, conn, id, "1", 1, false); err != nil {
		t.Fatal(err)
	}
	if b, err := pgstate.BackfillByID(ctx, conn, id); err != nil || b.Status != "running" || b.Started == nil || b.Rows != 1 || b.LastKey == nil || *b.LastKey != "1" {
		t.Errorf("running backfill = %+v, %v", b, err)
	}
	if err := pgstate.BackfillProgress(ctx, conn, id, "2", 2, true); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := pgstate.PendingBackfill(ctx, conn, "duplex_crm"); err != nil || ok {
		t.Errorf("a done backfill is still pending: %v %v", ok, err)
	}
	id2, err := pgstate.RequestBackfill(ctx, conn, "duplex_crm", "public.accounts", `"public"."accounts"`, "id > 1", 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgstate.FailBackfill(ctx, conn, id2, "table gone"); err != nil {
		t.Fatal(err)
	}
	if b, err := pgstate.BackfillByID(ctx, conn, id2); err != nil || b.Status != "failed" || b.Error != "table gone" || b.Finished == nil {
		t.Errorf("failed backfill = %+v, %v", b, err)
	}
	if _, err := pgstate.BackfillByID(ctx, conn, 999); !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("BackfillByID of no backfill: %v, want pgx.ErrNoRows", err)
	}

	h := pgstate.Hold{Entity: "customer", Since: 0x2000, Reason: "column name is missing", At: at}
	for range 2 {
		if err := pgstate.AddHold(ctx, conn, "crm", h); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgstate.AddHold(ctx, conn, "crm", pgstate.Hold{Entity: "account", Since: 0x1000, Reason: "r", At: at}); err != nil {
		t.Fatal(err)
	}
	holds, err := pgstate.Holds(ctx, conn, "crm")
	if err != nil || len(holds) != 2 || holds[0].Entity != "account" || holds[1].Entity != h.Entity ||
		holds[1].Since != h.Since || holds[1].Reason != h.Reason || !holds[1].At.Equal(h.At) {
		t.Errorf("Holds = %+v, %v", holds, err)
	}
	if err := pgstate.ReleaseHold(ctx, conn, "crm", "customer", 0x3000); err != nil {
		t.Fatal(err)
	}
	if holds, err := pgstate.Holds(ctx, conn, "crm"); err != nil || len(holds) != 1 {
		t.Errorf("Holds after release = %+v, %v", holds, err)
	}
	// Released again later (a second drop): the highest position is kept;
	// a release without a hold records nothing.
	if err := pgstate.AddHold(ctx, conn, "crm", pgstate.Hold{Entity: "customer", Since: 0x5000, Reason: "again", At: at}); err != nil {
		t.Fatal(err)
	}
	if err := pgstate.ReleaseHold(ctx, conn, "crm", "customer", 0x6000); err != nil {
		t.Fatal(err)
	}
	if err := pgstate.ReleaseHold(ctx, conn, "crm", "customer", 0x7000); err != nil {
		t.Fatal(err)
	}
	if err := pgstate.ReleaseHold(ctx, conn, "crm", "nothing", 0x7000); err != nil {
		t.Fatal(err)
	}
	if r, err := pgstate.Redone(ctx, conn, "crm"); err != nil || len(r) != 1 || r["customer"] != 0x6000 {
		t.Errorf("Redone = %v, %v; want customer at 0/6000", r, err)
	}
	if r, err := pgstate.Redone(ctx, conn, "erp"); err != nil || len(r) != 0 {
		t.Errorf("Redone of erp = %v, %v; want none", r, err)
	}
}

// TestVerify_SchemaTheRoleMayNotCreate: with no duplex schema, Verify (what
// duplex check runs) refuses a role without CREATE on the database, naming
// the statement a superuser runs instead; with the schema made for the role
// (as examples/order-to-cash/*-role.sql do), Ensure creates its tables.
func TestVerify_SchemaTheRoleMayNotCreate(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	su := connect(t, db, "postgres", nil)
	exec(t, su, fmt.Sprintf(`REVOKE CREATE ON DATABASE %s FROM duplex_erp`, pgx.Identifier{db}.Sanitize()))
	err := pgstate.Verify(ctx, connect(t, db, "duplex_erp", nil))
	if err == nil || !strings.Contains(err.Error(), "may not create it") || !strings.Contains(err.Error(), `CREATE SCHEMA duplex AUTHORIZATION "duplex_erp"`) {
		t.Fatalf("Verify without CREATE on the database: %v, want a refusal naming CREATE SCHEMA duplex AUTHORIZATION", err)
	}
	exec(t, su, `CREATE SCHEMA duplex AUTHORIZATION duplex_erp`)
	conn := connect(t, db, "duplex_erp", nil)
	if err := pgstate.Verify(ctx, conn); err != nil {
		t.Fatalf("Verify with the schema made for the role: %v", err)
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		t.Fatalf("Ensure with the schema made for the role: %v", err)
	}
	if n := queryInt(t, conn, `SELECT max(version) FROM duplex.schema_version`); n != int64(pgstate.Latest()) {
		t.Errorf("schema at version %d, want %d", n, pgstate.Latest())
	}
}
