// The session: connect, duplex's schema, the replication origin, the catalog.

package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgcatalog"
	"github.com/duplex-cdc/duplex/internal/pgstate"
)

// connect opens the session, creates duplex's schema, binds the
// replication origin and reads the catalog.
func (s *Sink) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(s.cfg.DSN)
	if err != nil {
		return &permanentErr{fmt.Errorf("sink %s: parse dsn: %w", s.cfg.System, err)}
	}
	cfg.RuntimeParams["application_name"] = "duplex-" + s.cfg.Flow
	// Nothing may block an apply silently: a lock held elsewhere fails
	// the batch (retried) instead of hanging the flow.
	cfg.RuntimeParams["lock_timeout"] = "30s"
	// Replicated rows are applied as PostgreSQL's own apply worker
	// applies them: ordinary triggers and rules of the target do not
	// fire (ENABLE REPLICA and ENABLE ALWAYS ones do); foreign keys are
	// checked by the sink itself (fkcheck.go). Needs superuser, or on
	// PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role.
	cfg.RuntimeParams["session_replication_role"] = "replica"
	// A pinned search_path (pinSearchPath): until the catalog is read,
	// pg_catalog and pg_temp only.
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("sink %s: connect: %w", s.cfg.System, err)
	}
	fail := func(what string, err error) error {
		_ = conn.Close(ctx)
		return fmt.Errorf("sink %s: %s: %w", s.cfg.System, what, err)
	}
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fail("prepare duplex schema", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, s.cfg.Origin); err != nil {
		return fail("create replication origin "+s.cfg.Origin, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, s.cfg.Origin); err != nil {
		return fail("bind replication origin "+s.cfg.Origin, err)
	}
	cat, err := pgcatalog.Read(ctx, conn, s.cfg.Mapping.Tables(s.cfg.System))
	if err != nil {
		return fail("read catalog", err)
	}
	// A mapping that does not fit stops the flow (retried, visibly) until
	// the table or the mapping is fixed; it is not the events' fault.
	if err := s.cfg.Mapping.CheckTarget(s.cfg.System, s.cfg.Source, cat); err != nil {
		return fail("mapping does not fit the database", err)
	}
	if err := pinSearchPath(ctx, conn, s.cfg.Mapping.Tables(s.cfg.System)); err != nil {
		return fail("pin search_path", err)
	}
	if err := CheckDefaults(ctx, conn, s.cfg.Mapping, s.cfg.System, cat); err != nil {
		return fail("mapping does not fit the database", err)
	}
	if err := CheckPrivileges(ctx, conn, s.cfg.Mapping, s.cfg.System, s.cfg.Source); err != nil {
		return fail("privileges", err)
	}
	order, _, err := s.writeOrder(cat)
	if err != nil {
		return fail("write order", err)
	}
	fks, err := readForeignKeys(ctx, conn, s.cfg.Mapping.Tables(s.cfg.System))
	if err != nil {
		return fail("read foreign keys", err)
	}
	s.conn, s.catalog, s.stmts, s.fks, s.sequences = conn, cat, map[string]string{}, fks, nil
	s.order = order
	s.log.Info("sink session started", slog.String("origin", s.cfg.Origin))
	return nil
}

// pinSearchPath sets the session's search_path to pg_catalog, then the
// schemas of the mapped columns' types that are not in pg_catalog (an
// extension's citext in public: its operators, such as citext's
// case-insensitive =, resolve through the path), then pg_temp. Every
// name the sink sends is qualified (the mapped tables, duplex.*, types
// read from the catalog), so nothing else resolves through a schema in
// which a table owner or another user can create objects, and pg_temp
// comes last so that a temporary object cannot shadow anything
// (PostgreSQL's advice for SECURITY DEFINER functions,
// https://www.postgresql.org/docs/current/sql-createfunction.html#SQL-CREATEFUNCTION-SECURITY;
// its own apply worker runs with an empty search_path). Triggers enabled
// for replicas and sql: expressions of the mapping's default: run under
// it too, so they must qualify names or set their own search_path.
func pinSearchPath(ctx context.Context, conn *pgx.Conn, tables []string) error {
	var path string
	err := conn.QueryRow(ctx, `
SELECT array_to_string(ARRAY['pg_catalog'] || coalesce(array_agg(DISTINCT quote_ident(tn.nspname)) FILTER (WHERE tn.nspname <> 'pg_catalog'), '{}') || ARRAY['pg_temp'], ', ')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid IN (t.oid, t.typbasetype, t.typelem)
JOIN pg_namespace tn ON tn.oid = bt.typnamespace
WHERE n.nspname || '.' || c.relname = ANY($1)`, tables).Scan(&path)
	if err != nil {
		return fmt.Errorf("read the schemas of the mapped columns' types: %w", err)
	}
	if _, err := conn.Exec(ctx, `SELECT set_config('search_path', $1, false)`, path); err != nil {
		return fmt.Errorf("set search_path %s: %w", path, err)
	}
	return nil
}
