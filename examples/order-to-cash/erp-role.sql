-- duplex's login role in the ERP database of the order-to-cash example:
-- duplex_erp, with exactly what duplex needs there as the source of flow
-- to-crm and the target of flow to-erp (duplex.yaml, mapping.yaml), and
-- nothing more: not a superuser, not the tables' owner.
--
-- Run by a superuser, in the ERP database, after erp.sql:
--
--   psql -v password="$DUPLEX_ERP_PASSWORD" -d erp -f examples/order-to-cash/erp-role.sql
--
-- then connect duplex as duplex_erp (ERP_DSN=postgres://duplex_erp:…@host/erp).
-- It can run again (after a change of the schema or the mapping, or to
-- set a new password): the role, the publication and the grants are made
-- to match. PostgreSQL 15 or later (GRANT SET ON PARAMETER). pg_hba.conf
-- must also let duplex_erp connect to the database and for replication.
--
-- `duplex check` (and `duplex run` at start) verifies every privilege
-- below and names the GRANT of any that is missing.

\set ON_ERROR_STOP on
SET client_min_messages = warning;
\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'erp-role.sql: set the password of duplex_erp: psql -v password=... -f erp-role.sql'; END $$;
\endif

-- The role. REPLICATION: the capture streams its slot over a replication
-- connection and creates and drops the slot (capture/postgres: stream.go,
-- setup.go; pg_create_logical_replication_slot). Nothing else: no
-- SUPERUSER, CREATEDB, CREATEROLE or BYPASSRLS (the sink refuses to apply
-- with more power than a table's owner, sinks/postgres/privileges.go).
SELECT 'CREATE ROLE duplex_erp' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duplex_erp') \gexec
ALTER ROLE duplex_erp WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'password';

-- Connecting to this database (PUBLIC has it unless revoked).
GRANT CONNECT ON DATABASE :"DBNAME" TO duplex_erp;

-- duplex's own schema, owned by duplex_erp: duplex creates and migrates
-- its tables there (internal/pgstate: schema_version, applied,
-- field_versions, snapshots, backfills, held, held_released, slots) and
-- refuses a schema or table owned by a role it is not a member of. A
-- schema an earlier run as superuser made is handed over with its tables.
CREATE SCHEMA IF NOT EXISTS duplex AUTHORIZATION duplex_erp;
ALTER SCHEMA duplex OWNER TO duplex_erp;
SELECT format('ALTER TABLE duplex.%I OWNER TO duplex_erp', relname) FROM pg_class
  WHERE relnamespace = 'duplex'::regnamespace AND relkind IN ('r', 'p') \gexec

-- The publication of the tables the ERP publishes (the entities whose
-- fields the ERP owns: customer, order, invoice, ledger_entry).
-- CREATE PUBLICATION ... FOR TABLE needs the tables' ownership, which
-- duplex_erp does not have, so it is made here, by the tables' owner,
-- with every table; the capture then has nothing to add
-- (capture/postgres/setup.go). Its name is systems.erp.publication in
-- duplex.yaml. The tables' REPLICA IDENTITY (erp.sql: FULL on customers
-- and sales_orders) is the schema's, not a privilege.
SELECT 'CREATE PUBLICATION duplex_erp' WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'duplex_erp') \gexec
ALTER PUBLICATION duplex_erp SET TABLE public.customers, public.sales_orders, public.invoices, public.ledger_entries;

-- The mapped tables live in schema public (PUBLIC has USAGE unless revoked).
GRANT USAGE ON SCHEMA public TO duplex_erp;

-- Source (flow to-crm): SELECT on the published tables, which the initial
-- snapshot, backfills and the re-read of unchanged values read
-- (capture/postgres: snapshot.go, backfill.go, unchanged.go).
-- Target (flow to-erp): SELECT on every mapped table, which references,
-- upserts and foreign key checks read (sinks/postgres: lookup.go,
-- upsert.go, fkcheck.go); invoices and ledger_entries also reference
-- customers and sales_orders, which the sink deletes from, so it checks
-- them before a delete (fkcheck.go).
GRANT SELECT ON public.customers, public.sales_orders, public.sales_order_lines, public.invoices, public.ledger_entries TO duplex_erp;

-- Target (flow to-erp), INSERT, UPDATE, DELETE: customers, sales orders
-- and their lines are born in the CRM; the sink creates, updates and
-- deletes them (upsert.go, delete.go). Deleting a sales order also deletes
-- its lines (ON DELETE CASCADE, which duplex performs itself, fkcheck.go).
-- Invoices and ledger entries are the ERP's own: no write to them.
GRANT INSERT, UPDATE, DELETE ON public.customers, public.sales_orders, public.sales_order_lines TO duplex_erp;

-- Target (flow to-erp): a row the sink creates takes the ERP's own
-- numbers from the columns' defaults (customer_no, order_no, line_no are
-- bigserial): nextval needs USAGE on each sequence.
GRANT USAGE ON SEQUENCE public.customers_customer_no_seq, public.sales_orders_order_no_seq, public.sales_order_lines_line_no_seq TO duplex_erp;
-- Target: the sink applies under a replication origin, so that the ERP's
-- capture skips what it applied (no echo) and PostgreSQL records the
-- origin's progress with each commit. sinks/postgres/session.go looks the
-- origin up and creates it (pg_replication_origin_oid, _create) and binds
-- its session to it (_session_setup); apply.go sets each transaction's
-- origin LSN and commit time (_xact_setup). PostgreSQL grants them to
-- superusers only (transform.OriginFunctions lists them).
GRANT EXECUTE ON FUNCTION pg_replication_origin_oid(text) TO duplex_erp;
GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO duplex_erp;
GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO duplex_erp;
GRANT EXECUTE ON FUNCTION pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone) TO duplex_erp;

-- Target: the sink's session sets session_replication_role = replica, as
-- PostgreSQL's apply worker does, so that the ERP's ordinary triggers do
-- not fire on replicated rows (sinks/postgres/session.go; foreign keys are
-- then checked by duplex, fkcheck.go). A superuser-only parameter.
GRANT SET ON PARAMETER session_replication_role TO duplex_erp;
