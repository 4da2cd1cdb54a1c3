-- duplex's login role in the CRM database of the order-to-cash example:
-- duplex_crm, with exactly what duplex needs there as the source of flow
-- to-erp and the target of flow to-crm (duplex.yaml, mapping.yaml), and
-- nothing more: not a superuser, not the tables' owner.
--
-- Run by a superuser, in the CRM database, after crm.sql:
--
--   psql -v password="$DUPLEX_CRM_PASSWORD" -d crm -f examples/order-to-cash/crm-role.sql
--
-- then connect duplex as duplex_crm (CRM_DSN=postgres://duplex_crm:…@host/crm).
-- It can run again (after a change of the schema or the mapping, or to
-- set a new password): the role, the publication and the grants are made
-- to match. PostgreSQL 15 or later (GRANT SET ON PARAMETER). pg_hba.conf
-- must also let duplex_crm connect to the database and for replication.
--
-- `duplex check` (and `duplex run` at start) verifies every privilege
-- below and names the GRANT of any that is missing.

\set ON_ERROR_STOP on
SET client_min_messages = warning;
\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'crm-role.sql: set the password of duplex_crm: psql -v password=... -f crm-role.sql'; END $$;
\endif

-- The role. REPLICATION: the capture streams its slot over a replication
-- connection and creates and drops the slot (capture/postgres: stream.go,
-- setup.go; pg_create_logical_replication_slot). Nothing else: no
-- SUPERUSER, CREATEDB, CREATEROLE or BYPASSRLS (the sink refuses to apply
-- with more power than a table's owner, sinks/postgres/privileges.go).
SELECT 'CREATE ROLE duplex_crm' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duplex_crm') \gexec
ALTER ROLE duplex_crm WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'password';

-- Connecting to this database (PUBLIC has it unless revoked).
GRANT CONNECT ON DATABASE :"DBNAME" TO duplex_crm;

-- duplex's own schema, owned by duplex_crm: duplex creates and migrates
-- its tables there (internal/pgstate: schema_version, applied,
-- field_versions, snapshots, backfills, held, held_released, slots) and
-- refuses a schema or table owned by a role it is not a member of. A
-- schema an earlier run as superuser made is handed over with its tables.
CREATE SCHEMA IF NOT EXISTS duplex AUTHORIZATION duplex_crm;
ALTER SCHEMA duplex OWNER TO duplex_crm;
SELECT format('ALTER TABLE duplex.%I OWNER TO duplex_crm', relname) FROM pg_class
  WHERE relnamespace = 'duplex'::regnamespace AND relkind IN ('r', 'p') \gexec

-- The publication of the tables the CRM publishes (the entities whose
-- fields the CRM owns: customer, order, order_line). CREATE PUBLICATION
-- ... FOR TABLE needs the tables' ownership, which duplex_crm does not
-- have, so it is made here, by the tables' owner, with every table; the
-- capture then has nothing to add (capture/postgres/setup.go). Its name is
-- systems.crm.publication in duplex.yaml. The tables' REPLICA IDENTITY
-- (crm.sql: FULL on accounts) is the schema's, not a privilege.
SELECT 'CREATE PUBLICATION duplex_crm' WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'duplex_crm') \gexec
ALTER PUBLICATION duplex_crm SET TABLE public.accounts, public.orders, public.order_lines;

-- The mapped tables live in schema public (PUBLIC has USAGE unless revoked).
GRANT USAGE ON SCHEMA public TO duplex_crm;

-- Source (flow to-erp): SELECT on the published tables, which the initial
-- snapshot, backfills and the re-read of unchanged values read
-- (capture/postgres: snapshot.go, backfill.go, unchanged.go).
-- Target (flow to-crm): SELECT on every mapped table, which references,
-- upserts and foreign key checks read (sinks/postgres: lookup.go,
-- upsert.go, fkcheck.go).
GRANT SELECT ON public.accounts, public.orders, public.order_lines, public.invoices, public.ledger_entries TO duplex_crm;

-- Target (flow to-crm), UPDATE: the ERP's fields of customers and orders
-- (customer_no, open_balance, payment_terms; order_no, fulfilment_status)
-- (sinks/postgres/upsert.go). Customers and orders are born in the CRM, so
-- the sink never inserts or deletes them here.
GRANT UPDATE ON public.accounts, public.orders TO duplex_crm;

-- Target (flow to-crm), INSERT, UPDATE, DELETE: invoices and ledger
-- entries are born in the ERP; the sink creates, updates and deletes them
-- (upsert.go, delete.go). Their keys default to gen_random_uuid(), which
-- needs no grant.
GRANT INSERT, UPDATE, DELETE ON public.invoices, public.ledger_entries TO duplex_crm;

-- Target: the sink applies under a replication origin, so that the CRM's
-- capture skips what it applied (no echo) and PostgreSQL records the
-- origin's progress with each commit. sinks/postgres/session.go looks the
-- origin up and creates it (pg_replication_origin_oid, _create) and binds
-- its session to it (_session_setup); apply.go sets each transaction's
-- origin LSN and commit time (_xact_setup). PostgreSQL grants them to
-- superusers only (transform.OriginFunctions lists them).
GRANT EXECUTE ON FUNCTION pg_replication_origin_oid(text) TO duplex_crm;
GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO duplex_crm;
GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO duplex_crm;
GRANT EXECUTE ON FUNCTION pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone) TO duplex_crm;

-- Target: the sink's session sets session_replication_role = replica, as
-- PostgreSQL's apply worker does, so that the CRM's ordinary triggers do
-- not fire on replicated rows (sinks/postgres/session.go; foreign keys are
-- then checked by duplex, fkcheck.go). A superuser-only parameter.
GRANT SET ON PARAMETER session_replication_role TO duplex_crm;
