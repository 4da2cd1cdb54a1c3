package pgstate

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier runs statements: a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	// ErrTooNew is matched (errors.Is) by the error of a database whose
	// duplex schema was migrated by a newer duplex than this one.
	ErrTooNew = errors.New("duplex schema is newer than this duplex")
	// ErrUntrusted is matched (errors.Is) by the error of a database
	// whose duplex schema holds an object duplex does not trust.
	ErrUntrusted = errors.New("duplex schema is not trusted")
)

// migration is one numbered step of the schema; migrations[i] is version
// i+1.
type migration struct {
	description string
	sql         string
}

// migrations are applied in order, each in its own transaction. Never
// change one that was released: add the next.
var migrations = []migration{
	{
		// Exactly the tables of the release before the schema was
		// versioned, so that its installs are adopted with their data.
		description: "applied positions, field versions, snapshots, backfills and holds",
		sql: `
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
COMMENT ON TABLE duplex.field_versions IS 'duplex: source and commit time of the value duplex last wrote into each shared (owner both) field';
CREATE TABLE IF NOT EXISTS duplex.snapshots (
	slot           text PRIMARY KEY,
	consistent_lsn pg_lsn NOT NULL,
	rows           bigint NOT NULL,
	completed_at   timestamptz NOT NULL DEFAULT now()
);
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
);
CREATE TABLE IF NOT EXISTS duplex.held (
	system    text NOT NULL,
	entity    text NOT NULL,
	since_lsn pg_lsn NOT NULL,
	reason    text NOT NULL,
	held_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (system, entity)
);`,
	},
	{
		// Each capture looks for a pending backfill about once a second:
		// without the index that reads every backfill ever requested.
		description: "index pending backfills; describe every table",
		sql: `
CREATE INDEX backfills_pending ON duplex.backfills (slot, id) WHERE status IN ('requested', 'running');
COMMENT ON TABLE duplex.snapshots IS 'duplex: initial snapshots completed, per replication slot';
COMMENT ON TABLE duplex.backfills IS 'duplex: backfill requests and their progress (requested, running, done, failed), per replication slot';
COMMENT ON TABLE duplex.held IS 'duplex: entities a source holds back because their table no longer fits the mapping';`,
	},
	{
		// A slot dropped and created again, or one of another cluster,
		// starts where it was created, silently skipping what came
		// between: the capture compares the slot with this record at
		// every start (capture/postgres, checkSlot).
		description: "record the replication slots duplex created",
		sql: `
CREATE TABLE duplex.slots (
	slot              text PRIMARY KEY,
	system_identifier text NOT NULL,
	database          text NOT NULL,
	database_oid      oid NOT NULL,
	created_lsn       pg_lsn NOT NULL,
	confirmed_lsn     pg_lsn NOT NULL,
	created_at        timestamptz NOT NULL DEFAULT now(),
	confirmed_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE duplex.slots IS 'duplex: replication slots duplex created (cluster, creation LSN) and the highest position it may have reported flushed on each';`,
	},
	{
		// A crash restart of a source takes its slot back to the
		// position saved at the last checkpoint, and pgoutput sends the
		// WAL from there again with each table as it was then: a
		// released hold's changes come back without the column that was
		// missing. The capture must know that WAL was handled.
		description: "remember how far released holds were read again",
		sql: `
CREATE TABLE duplex.held_released (
	system       text NOT NULL,
	entity       text NOT NULL,
	since_lsn    pg_lsn NOT NULL,
	redone_until pg_lsn NOT NULL,
	released_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (system, entity)
);
COMMENT ON TABLE duplex.held_released IS 'duplex: per entity a source held and released, the position up to which its held changes were read again and published';`,
	},
	{
		// Flows trust the keys a source's captures sign with. Instances
		// with data directories of their own (an active and a standby on
		// two hosts) each generate a key; each registers its public key
		// here, in the source database, which only duplex's role (or the
		// database's owners) may write, and a flow reads it from here: a
		// publisher on the bus cannot add a key (pipeline/sign.go).
		description: "record the public keys the captures of this database sign with",
		sql: `
CREATE TABLE duplex.signing_keys (
	system     text NOT NULL,
	public_key text NOT NULL,
	host       text NOT NULL DEFAULT '',
	added_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (system, public_key)
);
COMMENT ON TABLE duplex.signing_keys IS 'duplex: public keys (nkeys, U...) the captures of this system sign their messages with; flows trust exactly these (delete a row to revoke a key)';`,
	},
	{
		// Every instance of a configuration must hash field versions
		// under one key: a capture records a version's hash and the sink
		// of another instance (after a failover) compares it. A key per
		// data directory made them differ, and an older write then
		// overwrote a newer one. The key lives in the database, readable
		// by duplex's role only (its schema).
		description: "keep the key of duplex.field_versions' hashes",
		sql: `
CREATE TABLE duplex.field_hash_key (
	id         int PRIMARY KEY CHECK (id = 1),
	key        bytea NOT NULL CHECK (length(key) >= 32),
	created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON duplex.field_hash_key FROM PUBLIC;
COMMENT ON TABLE duplex.field_hash_key IS 'duplex: the secret key of the HMAC in duplex.field_versions.value_hash, shared by every duplex instance of the configuration';`,
	},
}

// Latest is the schema version this binary migrates databases to.
func Latest() int { return len(migrations) }

// versionDDL creates the version table; it runs under the migration lock
// before the version is read.
const versionDDL = `
CREATE TABLE IF NOT EXISTS duplex.schema_version (
	version     int PRIMARY KEY,
	description text NOT NULL,
	applied_by  text NOT NULL,
	applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE duplex.schema_version IS 'duplex: migrations of this schema applied so far, one row each';`

// lockKey is the pg_advisory_xact_lock key that serializes migrations of
// one database across sessions: "duplex" in ASCII.
const lockKey int64 = 0x6475706c6578

// Ensure makes the duplex schema of the database conn is connected to
// ready for use: it checks that the schema and everything in it can be
// trusted, applies the migrations the database lacks (creating the schema
// if absent), and checks again. At the latest version it makes two round
// trips and changes nothing. Sessions may call it concurrently.
//
// The error matches ErrUntrusted when an object is owned by a role the
// connecting role is not a member of, is not an ordinary table or
// sequence, or carries a trigger or rule; it names the object and its
// owner. It matches ErrTooNew when the schema is at a version above
// Latest. Either way nothing was changed.
func Ensure(ctx context.Context, conn *pgx.Conn) error {
	st, err := inspect(ctx, conn)
	if err != nil {
		return err
	}
	if err := st.trusted(); err != nil {
		return err
	}
	if st.version == Latest() {
		return nil
	}
	if err := st.notNewer(); err != nil {
		return err
	}
	for clashes := 0; ; {
		done, err := step(ctx, conn)
		if err != nil && createClash(err) && clashes < 3 {
			// A session that does not take the lock (an older duplex)
			// created the same object at the same moment: look again.
			clashes++
			continue
		}
		if err != nil {
			return err
		}
		if done {
			break
		}
	}
	st, err = inspect(ctx, conn)
	if err != nil {
		return err
	}
	return st.trusted()
}

// Verify makes the checks of Ensure without changing anything: the schema
// may be absent or older than Latest, but what exists must be trusted and
// not newer than Latest, and an absent schema must be one the role may
// create (CREATE on the database; the error names the statement a
// superuser runs instead, CREATE SCHEMA duplex AUTHORIZATION <role>).
// A role that owns the schema may create the tables of every migration in
// it. Errors as for Ensure.
func Verify(ctx context.Context, conn *pgx.Conn) error {
	st, err := inspect(ctx, conn)
	if err != nil {
		return err
	}
	if err := st.trusted(); err != nil {
		return err
	}
	if !st.exists {
		var create bool
		if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE')`).Scan(&create); err != nil {
			return fmt.Errorf("database %q: read privileges: %w", st.database, err)
		}
		if !create {
			return fmt.Errorf("database %q: schema duplex does not exist and role %s may not create it (CREATE on the database); as a superuser: CREATE SCHEMA duplex AUTHORIZATION %s",
				st.database, st.role, pgx.Identifier{st.role}.Sanitize())
		}
	}
	return st.notNewer()
}

// state is what inspect found.
type state struct {
	database string
	role     string
	exists   bool // schema duplex
	version  int  // 0 when duplex.schema_version is absent or empty
	problems [][]string
}

// trustSQL lists, in one round trip, the objects of schema duplex duplex
// must not use: kind is owner (detail: the owner), relkind (detail: the
// pg_class relkind), trigger or rule (detail: its name).
const trustSQL = `
WITH ns AS (SELECT oid, nspowner FROM pg_namespace WHERE nspname = 'duplex'),
rel AS (
	SELECT c.oid, format('duplex.%I', c.relname) AS name, c.relname, c.relkind, c.relowner
	FROM pg_class c JOIN ns ON c.relnamespace = ns.oid
	WHERE c.relkind NOT IN ('i', 'I')
),
problem AS (
	SELECT 1 AS o, 'owner' AS kind, 'duplex' AS object, pg_get_userbyid(nspowner)::text AS detail
		FROM ns WHERE NOT pg_has_role(current_user, nspowner, 'MEMBER')
	UNION ALL
	SELECT 2, 'owner', name, pg_get_userbyid(relowner)::text
		FROM rel WHERE NOT pg_has_role(current_user, relowner, 'MEMBER')
	UNION ALL
	SELECT 3, 'relkind', name, relkind::text FROM rel WHERE relkind NOT IN ('r', 'S', 'c')
	UNION ALL
	SELECT 4, 'trigger', r.name, t.tgname::text
		FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
	UNION ALL
	SELECT 5, 'rule', r.name, w.rulename::text
		FROM rel r JOIN pg_rewrite w ON w.ev_class = r.oid WHERE w.rulename <> '_RETURN'
)
SELECT current_user::text, EXISTS (SELECT 1 FROM ns),
	EXISTS (SELECT 1 FROM rel WHERE relname = 'schema_version' AND relkind = 'r'),
	coalesce((SELECT json_agg(json_build_array(kind, object, detail) ORDER BY o, object, detail) FROM problem), '[]')`

// inspect reads the trust problems and, when the version table is there
// and trusted, the version: one round trip, two with the version.
func inspect(ctx context.Context, conn *pgx.Conn) (*state, error) {
	st := &state{database: conn.Config().Database}
	var versioned bool
	if err := conn.QueryRow(ctx, trustSQL).Scan(&st.role, &st.exists, &versioned, &st.problems); err != nil {
		return nil, fmt.Errorf("database %q: inspect duplex schema: %w", st.database, err)
	}
	if versioned && len(st.problems) == 0 {
		if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM duplex.schema_version`).Scan(&st.version); err != nil {
			return nil, fmt.Errorf("database %q: read duplex schema version: %w", st.database, err)
		}
	}
	return st, nil
}

// trusted returns an error naming every object duplex must not use.
func (st *state) trusted() error {
	var errs []error
	for _, p := range st.problems {
		if len(p) != 3 {
			continue
		}
		kind, object, detail := p[0], p[1], p[2]
		var msg string
		switch {
		case kind == "owner" && object == "duplex":
			msg = fmt.Sprintf("duplex schema is owned by role %q, not by %q or a role it belongs to; refusing to use it", detail, st.role)
		case kind == "owner":
			msg = fmt.Sprintf("duplex schema object %s is owned by role %q, not by %q or a role it belongs to; refusing to use it", object, detail, st.role)
		case kind == "relkind":
			msg = fmt.Sprintf("duplex schema object %s is %s, not an ordinary table; refusing to use it", object, relkindName(detail))
		case kind == "trigger":
			msg = fmt.Sprintf("duplex schema object %s has trigger %q, which duplex did not create; refusing to use it", object, detail)
		default:
			msg = fmt.Sprintf("duplex schema object %s has rule %q, which duplex did not create; refusing to use it", object, detail)
		}
		errs = append(errs, &untrusted{msg: fmt.Sprintf("database %q: %s", st.database, msg)})
	}
	return errors.Join(errs...)
}

// notNewer refuses a schema migrated by a newer duplex.
func (st *state) notNewer() error {
	if st.version > Latest() {
		return tooNew(st.database, st.version)
	}
	return nil
}

func tooNew(database string, found int) error {
	return fmt.Errorf("database %q: the duplex schema is at version %d, but this duplex knows versions up to %d: "+
		"a newer duplex upgraded it; run that release or a later one against this database (going back is not supported): %w",
		database, found, Latest(), ErrTooNew)
}

type untrusted struct{ msg string }

func (e *untrusted) Error() string        { return e.msg }
func (e *untrusted) Is(target error) bool { return target == ErrUntrusted }

func relkindName(k string) string {
	switch k {
	case "v":
		return "a view"
	case "m":
		return "a materialized view"
	case "f":
		return "a foreign table"
	case "p":
		return "a partitioned table"
	}
	return "a relation of kind " + k
}

// step applies the next migration the database lacks, in one transaction
// holding the migration lock, and says whether there was none left.
func step(ctx context.Context, conn *pgx.Conn) (done bool, err error) {
	database := conn.Config().Database
	var applied migration
	var version int
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		// Creating the schema "if not exists" needs CREATE on the
		// database even when it exists: only create it when it does not.
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'duplex')`).Scan(&exists); err != nil {
			return fmt.Errorf("look for schema duplex: %w", err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, `CREATE SCHEMA duplex`); err != nil {
				return fmt.Errorf("create schema duplex: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, versionDDL); err != nil {
			return fmt.Errorf("create duplex.schema_version: %w", err)
		}
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM duplex.schema_version`).Scan(&version); err != nil {
			return fmt.Errorf("read version: %w", err)
		}
		switch {
		case version > Latest():
			return tooNew(database, version)
		case version == Latest():
			done = true
			return nil
		}
		applied = migrations[version]
		version++
		if _, err := tx.Exec(ctx, applied.sql); err != nil {
			return fmt.Errorf("migrate to version %d (%s): %w", version, applied.description, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO duplex.schema_version (version, description, applied_by) VALUES ($1, $2, $3)`,
			version, applied.description, binary()); err != nil {
			return fmt.Errorf("record version %d: %w", version, err)
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrTooNew):
		return false, err
	case err != nil:
		return false, fmt.Errorf("database %q: migrate duplex schema: %w", database, err)
	}
	return done, nil
}

// createClash says err is a concurrent creation of the same object.
func createClash(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06" || pe.Code == "42P07")
}

// binary describes this duplex in duplex.schema_version.
func binary() string {
	v := "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " " + s.Value
			}
		}
	}
	return strings.TrimSpace("duplex " + v)
}
