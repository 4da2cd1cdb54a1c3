// The privileges the sink uses, checked before it applies anything; and
// the rule that it never applies with more power than a table's owner.

package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// grantNeed is one privilege on one relation, and the code that uses it.
type grantNeed struct {
	table, priv, why string
}

// Needs lists the table privileges a flow from source into system uses,
// "schema.table" -> privileges -> the code that uses it:
//
//   - SELECT on every mapped table of system: lookups of references
//     (lookup.go), the current rows an upsert compares with, shared-field
//     resolution (sharedfields.go), foreign key checks (fkcheck.go);
//   - INSERT on the tables of entities whose key another system owns
//     (upsert.go creates rows only there; a row of an entity whose key
//     this system owns is born here and only updated);
//   - UPDATE on the tables of entities source publishes (upsert.go; the
//     FOR UPDATE of sharedfields.go needs it too);
//   - DELETE on the tables of entities whose key source owns (alone or
//     with this system), or that propagate a truncate (apply.go deletes
//     every row; delete.go).
//
// Foreign keys and sequences add to these (CheckPrivileges).
func Needs(m *transform.Mapping, system, source string) map[string]map[string]string {
	out := map[string]map[string]string{}
	add := func(table, priv, why string) {
		if out[table] == nil {
			out[table] = map[string]string{}
		}
		if _, ok := out[table][priv]; !ok {
			out[table][priv] = why
		}
	}
	for _, e := range m.Entities {
		t := e.Tables[system]
		if t == nil {
			continue
		}
		tbl := t.QualifiedTable()
		add(tbl, "SELECT", "references, upserts and foreign keys read it")
		if !e.Publishes(source) {
			continue
		}
		add(tbl, "UPDATE", fmt.Sprintf("flow from %s updates entity %s", source, e.Name))
		if ko := e.KeyOwner(); ko != system {
			add(tbl, "INSERT", fmt.Sprintf("flow from %s creates entity %s (its key is %s's)", source, e.Name, ko))
		}
		if ko := e.KeyOwner(); ko == source || ko == transform.OwnerBoth {
			add(tbl, "DELETE", fmt.Sprintf("flow from %s deletes entity %s (its key is %s's)", source, e.Name, ko))
		} else if e.Truncate == "propagate" {
			add(tbl, "DELETE", fmt.Sprintf("flow from %s propagates truncates of entity %s", source, e.Name))
		}
	}
	return out
}

// CheckPrivileges checks, on the sink's connection to system, that the
// connected role has every privilege the flow from source uses there
// (Needs), plus:
//
//   - SELECT on the tables whose foreign keys reference a table it
//     deletes from, and on the tables the tables it writes reference
//     (fkcheck.go checks foreign keys itself, since it applies with
//     session_replication_role = replica); DELETE on the referencing
//     tables of ON DELETE CASCADE, UPDATE on those of SET NULL and SET
//     DEFAULT, which it performs, and so on down the cascade;
//   - USAGE on each sequence a column default of a table it inserts into
//     calls (nextval); with sequence: follow, SELECT and UPDATE on the key
//     column's sequence (ownership.go reads and setvals it);
//   - that it is not more powerful than the owner of any table it writes:
//     not a superuser, BYPASSRLS or CREATEROLE where the owner is not, and
//     a member of no role whose privileges the owner lacks. A trigger the
//     owner enabled for replicas (ENABLE REPLICA or ENABLE ALWAYS
//     TRIGGER) runs as the role that applies, so a stronger role would run
//     the owner's code with power the owner was not given (PostgreSQL 16's
//     own apply worker switches to the table owner for this reason:
//     https://www.postgresql.org/docs/16/logical-replication-security.html).
//
// Replication origins (transform.OriginFunctions) are checked by
// transform.Mapping.Check and session_replication_role by setting it. The
// error joins one error per missing privilege, each naming system, role,
// relation and the GRANT that fixes it.
func CheckPrivileges(ctx context.Context, conn *pgx.Conn, m *transform.Mapping, system, source string) error {
	var user string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil {
		return fmt.Errorf("%s: read role: %w", system, err)
	}
	needs := Needs(m, system, source)
	var list []grantNeed
	var writes, deletes, inserts []string
	for tbl, privs := range needs {
		for p, why := range privs {
			list = append(list, grantNeed{table: tbl, priv: p, why: why})
			switch p {
			case "DELETE":
				deletes = append(deletes, tbl)
			case "INSERT":
				inserts = append(inserts, tbl)
			}
			if p != "SELECT" && !slices.Contains(writes, tbl) {
				writes = append(writes, tbl)
			}
		}
	}
	// Foreign keys: the parents of what it writes; the children of what
	// it deletes, down the cascade (fkcheck.go stops at 8 levels).
	fks, err := readForeignKeys(ctx, conn, append(slices.Clone(writes), deletes...))
	if err != nil {
		return fmt.Errorf("%s: %w", system, err)
	}
	for level := 0; level < 8; level++ {
		grew := false
		for _, fk := range fks {
			if slices.Contains(writes, fk.child) {
				list = append(list, grantNeed{table: fk.parent, priv: "SELECT", why: fmt.Sprintf("foreign key %s of %s references it (fkcheck.go)", fk.name, fk.child)})
			}
			if !slices.Contains(deletes, fk.parent) {
				continue
			}
			list = append(list, grantNeed{table: fk.child, priv: "SELECT", why: fmt.Sprintf("its foreign key %s references %s, which the flow deletes from (fkcheck.go)", fk.name, fk.parent)})
			switch fk.onDelete {
			case "c":
				list = append(list, grantNeed{table: fk.child, priv: "DELETE", why: fmt.Sprintf("ON DELETE CASCADE of its foreign key %s, which duplex performs (fkcheck.go)", fk.name)})
				if !slices.Contains(deletes, fk.child) {
					deletes, grew = append(deletes, fk.child), true
				}
				if !slices.Contains(writes, fk.child) {
					writes = append(writes, fk.child)
				}
			case "n", "d":
				list = append(list, grantNeed{table: fk.child, priv: "UPDATE", why: fmt.Sprintf("ON DELETE SET NULL/DEFAULT of its foreign key %s, which duplex performs (fkcheck.go)", fk.name)})
				if !slices.Contains(writes, fk.child) {
					writes = append(writes, fk.child)
				}
			}
		}
		if !grew {
			break
		}
		if fks, err = readForeignKeys(ctx, conn, deletes); err != nil {
			return fmt.Errorf("%s: %w", system, err)
		}
	}
	// Sequences that column defaults of inserted tables call (nextval
	// needs USAGE or UPDATE; identity columns need none).
	rows, err := conn.Query(ctx, `
SELECT DISTINCT n.nspname || '.' || c.relname, quote_ident(sn.nspname) || '.' || quote_ident(s.relname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attrdef ad ON ad.adrelid = c.oid
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE n.nspname || '.' || c.relname = ANY($1)
  AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE') AND NOT has_sequence_privilege(s.oid, 'UPDATE') ELSE false END`, inserts)
	if err != nil {
		return fmt.Errorf("%s: read sequences of column defaults: %w", system, err)
	}
	var errs []error
	for rows.Next() {
		var tbl, seq string
		if err := rows.Scan(&tbl, &seq); err != nil {
			rows.Close()
			return fmt.Errorf("%s: read sequences of column defaults: %w", system, err)
		}
		errs = append(errs, fmt.Errorf("%s: role %s lacks USAGE on sequence %s, which a column default of %s calls when duplex inserts a row; GRANT USAGE ON SEQUENCE %s TO %s",
			system, user, seq, tbl, seq, pgx.Identifier{user}.Sanitize()))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: read sequences of column defaults: %w", system, err)
	}
	for _, e := range m.Entities {
		t := e.Tables[system]
		if t == nil || e.Sequence != transform.SequenceFollow || !e.Publishes(source) || e.KeyOwner() == system || e.KeyOwner() == transform.OwnerBoth {
			continue
		}
		var seq *string
		if err := conn.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, $2)`, quoteTable(t), t.KeyColumn).Scan(&seq); err != nil {
			return fmt.Errorf("%s: sequence of %s.%s: %w", system, t.QualifiedTable(), t.KeyColumn, err)
		}
		if seq == nil {
			continue
		}
		for _, p := range []string{"SELECT", "UPDATE"} {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT has_sequence_privilege($1, $2)`, *seq, p).Scan(&ok); err != nil {
				return fmt.Errorf("%s: privileges on sequence %s: %w", system, *seq, err)
			}
			if !ok {
				errs = append(errs, fmt.Errorf("%s: role %s lacks %s on sequence %s, which entity %s's sequence: follow reads and moves (setval); GRANT SELECT, UPDATE ON SEQUENCE %s TO %s",
					system, user, p, *seq, e.Name, *seq, pgx.Identifier{user}.Sanitize()))
			}
		}
	}
	// Table privileges, deduplicated, in a stable order.
	slices.SortFunc(list, func(a, b grantNeed) int { return strings.Compare(a.table+" "+a.priv, b.table+" "+b.priv) })
	list = slices.CompactFunc(list, func(a, b grantNeed) bool { return a.table == b.table && a.priv == b.priv })
	tables, privs := make([]string, len(list)), make([]string, len(list))
	why := map[string]string{}
	for i, n := range list {
		tables[i], privs[i] = n.table, n.priv
		why[n.table+" "+n.priv] = n.why
	}
	rows, err = conn.Query(ctx, `
SELECT u.t, u.p, quote_ident(n.nspname) || '.' || quote_ident(c.relname), has_schema_privilege(n.oid, 'USAGE')
FROM unnest($1::text[], $2::text[]) AS u(t, p), pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname || '.' || c.relname = u.t AND (NOT has_schema_privilege(n.oid, 'USAGE') OR NOT has_table_privilege(c.oid, u.p))
ORDER BY 1, 2`, tables, privs)
	if err != nil {
		return fmt.Errorf("%s: read table privileges: %w", system, err)
	}
	for rows.Next() {
		var tbl, priv, quoted string
		var usage bool
		if err := rows.Scan(&tbl, &priv, &quoted, &usage); err != nil {
			rows.Close()
			return fmt.Errorf("%s: read table privileges: %w", system, err)
		}
		if !usage {
			schema, _, _ := strings.Cut(quoted, ".")
			errs = append(errs, fmt.Errorf("%s: role %s lacks USAGE on schema %s of table %s; GRANT USAGE ON SCHEMA %s TO %s", system, user, schema, tbl, schema, pgx.Identifier{user}.Sanitize()))
			continue
		}
		errs = append(errs, fmt.Errorf("%s: role %s lacks %s on table %s (%s); GRANT %s ON TABLE %s TO %s",
			system, user, priv, tbl, why[tbl+" "+priv], priv, quoted, pgx.Identifier{user}.Sanitize()))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: read table privileges: %w", system, err)
	}
	if err := notStrongerThanOwners(ctx, conn, system, writes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// notStrongerThanOwners refuses a role that writes tables with more power
// than their owners (CheckPrivileges).
func notStrongerThanOwners(ctx context.Context, conn *pgx.Conn, system string, tables []string) error {
	rows, err := conn.Query(ctx, `
SELECT n.nspname || '.' || c.relname, current_user::text, o.rolname::text,
       array_remove(ARRAY[
         CASE WHEN me.rolsuper AND NOT o.rolsuper THEN 'SUPERUSER' END,
         CASE WHEN me.rolbypassrls AND NOT (o.rolbypassrls OR o.rolsuper) THEN 'BYPASSRLS' END,
         CASE WHEN me.rolcreaterole AND NOT (o.rolcreaterole OR o.rolsuper) THEN 'CREATEROLE' END], NULL)
       || CASE WHEN me.rolsuper THEN ARRAY[]::text[] ELSE ARRAY(
            SELECT 'member of ' || r.rolname FROM pg_roles r
            WHERE r.oid NOT IN (me.oid, o.oid) AND pg_has_role(me.oid, r.oid, 'USAGE') AND NOT pg_has_role(o.oid, r.oid, 'USAGE')
            ORDER BY r.rolname) END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles o ON o.oid = c.relowner
JOIN pg_roles me ON me.rolname = current_user
WHERE n.nspname || '.' || c.relname = ANY($1)
ORDER BY 1`, tables)
	if err != nil {
		return fmt.Errorf("%s: read table owners: %w", system, err)
	}
	var errs []error
	for rows.Next() {
		var tbl, user, owner string
		var more []string
		if err := rows.Scan(&tbl, &user, &owner, &more); err != nil {
			rows.Close()
			return fmt.Errorf("%s: read table owners: %w", system, err)
		}
		if len(more) > 0 {
			errs = append(errs, fmt.Errorf("%s: role %s would apply to table %s with more power than its owner %s (%s): a trigger of the table enabled for replicas would run with it; connect as a role that is not (as examples/order-to-cash/*-role.sql create) or make the table's owner one at least as strong",
				system, user, tbl, owner, strings.Join(more, ", ")))
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: read table owners: %w", system, err)
	}
	return errors.Join(errs...)
}
