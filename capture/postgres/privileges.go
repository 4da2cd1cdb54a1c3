// The privileges the capture uses, checked before it starts.

package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// CheckPrivileges checks, on a connection to system's database as the
// capture's role, what the capture does there besides streaming its slot
// (REPLICATION, checked by transform.Mapping.Check):
//
//   - SELECT on every table it publishes (and USAGE on its schema): the
//     initial snapshot (snapshot.go), backfills (backfill.go) and the
//     re-read of unchanged TOASTed values (unchanged.go) read them;
//   - the publication: when it lacks tables (or does not exist), Ensure
//     adds them (ALTER PUBLICATION … ADD TABLE) or creates it (CREATE
//     PUBLICATION … FOR TABLE), which PostgreSQL allows only to the owner
//     of each table (and of the publication), with CREATE on the database
//     to create one. A publication the tables' owner created beforehand
//     with every table needs nothing.
//
// The error joins one error per problem, each naming system, role, object
// and the statement that fixes it. Tables that do not exist are left to
// the mapping check.
func CheckPrivileges(ctx context.Context, conn *pgx.Conn, system, publication string, tables []string) error {
	var user string
	var exists, pubOwner, createDB bool
	if err := conn.QueryRow(ctx, `SELECT current_user,
		EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
		coalesce((SELECT pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1), false),
		has_database_privilege(current_database(), 'CREATE')`, publication).Scan(&user, &exists, &pubOwner, &createDB); err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", system, publication, err)
	}
	role := pgx.Identifier{user}.Sanitize()
	var errs []error
	var missing []string
	notOwned := false
	for _, t := range tables {
		var found, usage, sel, owner bool
		if err := conn.QueryRow(ctx, `SELECT c.oid IS NOT NULL,
			coalesce(has_schema_privilege(c.relnamespace, 'USAGE'), false),
			coalesce(has_table_privilege(c.oid, 'SELECT'), false),
			coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false)
			FROM (SELECT to_regclass($1) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid`, quoteQualified(t)).Scan(&found, &usage, &sel, &owner); err != nil {
			return fmt.Errorf("capture %s: privileges on table %s: %w", system, t, err)
		}
		if !found {
			continue
		}
		schema, _, _ := strings.Cut(quoteQualified(t), ".")
		switch {
		case !usage:
			errs = append(errs, fmt.Errorf("capture %s: role %s lacks USAGE on schema %s of table %s; GRANT USAGE ON SCHEMA %s TO %s", system, user, schema, t, schema, role))
		case !sel:
			errs = append(errs, fmt.Errorf("capture %s: role %s lacks SELECT on table %s, which the initial snapshot, backfills and the re-read of unchanged values read; GRANT SELECT ON TABLE %s TO %s",
				system, user, t, quoteQualified(t), role))
		}
		in := false
		if exists {
			var err error
			if in, err = publishes(ctx, conn, publication, t); err != nil {
				return fmt.Errorf("capture %s: %w", system, err)
			}
		}
		if !in {
			missing = append(missing, quoteQualified(t))
			notOwned = notOwned || !owner
		}
	}
	pub := pgx.Identifier{publication}.Sanitize()
	switch {
	case len(missing) == 0:
	case !exists && (notOwned || !createDB):
		errs = append(errs, fmt.Errorf("capture %s: publication %s does not exist and role %s cannot create it (CREATE PUBLICATION … FOR TABLE needs CREATE on the database and ownership of each table); create it as the tables' owner: CREATE PUBLICATION %s FOR TABLE %s",
			system, publication, user, pub, strings.Join(missing, ", ")))
	case exists && (notOwned || !pubOwner):
		errs = append(errs, fmt.Errorf("capture %s: publication %s lacks table(s) %s and role %s cannot add them (ALTER PUBLICATION … ADD TABLE needs ownership of the publication and of each table); as their owner: ALTER PUBLICATION %s ADD TABLE %s",
			system, publication, strings.Join(missing, ", "), user, pub, strings.Join(missing, ", ")))
	}
	return errors.Join(errs...)
}
