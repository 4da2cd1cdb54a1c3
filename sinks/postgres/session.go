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
	if err := CheckDefaults(ctx, conn, s.cfg.Mapping, s.cfg.System, cat); err != nil {
		return fail("mapping does not fit the database", err)
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
