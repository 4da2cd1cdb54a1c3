package app

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/transform"
)

// Warnings reads both databases for what the mapping allows but an
// operator should know, and returns one sentence each (duplex check
// prints them, duplex run logs them):
//
//   - a table in a system that does not own its entity's key whose key
//     column is generated (a sequence default or an identity): rows that
//     system inserts are refused (issue 11, case 10), so it should not
//     generate keys; the warning names the sequence and the fix, or says
//     that sequence: follow keeps the sequence past replicated keys;
//   - target tables with triggers: duplex applies with
//     session_replication_role = replica, so ordinary triggers do not fire
//     on replicated rows, and ENABLE ALWAYS / ENABLE REPLICA ones do, in
//     duplex's transaction, where what they write is not captured.
func Warnings(ctx context.Context, cfg *config.Config, m *transform.Mapping) ([]string, error) {
	var out []string
	targets := map[string]bool{}
	for _, f := range cfg.Flows {
		targets[f.To] = true
	}
	for _, name := range sortedSystems(cfg) {
		sys := cfg.Systems[name]
		if !slices.Contains(m.Systems, name) {
			continue
		}
		conn, err := pgx.Connect(ctx, sys.DSN)
		if err != nil {
			return out, fmt.Errorf("system %s: connect: %w", name, err)
		}
		w, err := systemWarnings(ctx, conn, name, targets[name], m)
		_ = conn.Close(ctx)
		if err != nil {
			return out, fmt.Errorf("system %s: %w", name, err)
		}
		out = append(out, w...)
	}
	return out, nil
}

func systemWarnings(ctx context.Context, conn *pgx.Conn, system string, target bool, m *transform.Mapping) ([]string, error) {
	var out []string
	for _, e := range m.Entities {
		t := e.Tables[system]
		if t == nil {
			continue
		}
		owner := e.KeyOwner()
		if owner != system && owner != transform.OwnerBoth {
			var seq, def *string
			var identity bool
			err := conn.QueryRow(ctx, `
SELECT pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident($2), a.attname), a.attidentity <> '', pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND NOT a.attisdropped`, t.Schema(), t.Name(), t.KeyColumn).Scan(&seq, &identity, &def)
			if err != nil && err != pgx.ErrNoRows {
				return out, fmt.Errorf("read key column %s of %s: %w", t.KeyColumn, t.QualifiedTable(), err)
			}
			if err == nil && (identity || (def != nil && strings.Contains(*def, "nextval("))) {
				gen := "an identity column"
				fix := fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s DROP IDENTITY", t.QualifiedTable(), t.KeyColumn)
				if !identity {
					gen = "default " + *def
					fix = fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT", t.QualifiedTable(), t.KeyColumn)
				}
				seqName := "its sequence"
				if seq != nil {
					seqName = *seq
				}
				w := fmt.Sprintf("%s table %s (entity %s): key column %s is generated (%s), but %s owns the key: rows are created in %s only, and a row %s inserts itself is refused "+
					"(dead-lettered at capture, counted in duplex_source_ownership_violations_total) and replaced by %s's row should %s hand out the same key. "+
					"Keep %s from creating rows: %s (inserts must then name a key), or revoke INSERT on the table from %s's application role",
					system, t.QualifiedTable(), e.Name, t.KeyColumn, gen, owner, owner, system, owner, owner, system, fix, system)
				if e.Sequence == transform.SequenceFollow {
					w += fmt.Sprintf("; sequence: follow keeps %s past the keys duplex writes, so %s's own inserts do not fail on them", seqName, system)
				} else {
					w += fmt.Sprintf("; or set sequence: follow on entity %s to keep %s past the keys duplex writes", e.Name, seqName)
				}
				out = append(out, w)
			}
		}
	}
	if !target {
		return out, nil
	}
	rows, err := conn.Query(ctx, `
SELECT n.nspname || '.' || c.relname, t.tgname, t.tgenabled::text
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND n.nspname || '.' || c.relname = ANY($1)
ORDER BY 1, 2`, m.Tables(system))
	if err != nil {
		return out, fmt.Errorf("read triggers: %w", err)
	}
	type trig struct{ table, name, enabled string }
	trigs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (trig, error) {
		var t trig
		return t, r.Scan(&t.table, &t.name, &t.enabled)
	})
	if err != nil {
		return out, fmt.Errorf("read triggers: %w", err)
	}
	for _, t := range trigs {
		switch t.enabled {
		case "O":
			out = append(out, fmt.Sprintf("%s table %s: trigger %s does not fire on the rows duplex applies (duplex applies with session_replication_role = replica, as PostgreSQL's apply worker does); "+
				"what it would write comes from the other system's own triggers, through the mapping. ALTER TABLE %s ENABLE ALWAYS TRIGGER %s makes it fire, and what it then writes in duplex's transaction is not replicated back",
				system, t.table, t.name, t.table, t.name))
		case "A", "R":
			out = append(out, fmt.Sprintf("%s table %s: trigger %s is ENABLE %s, so it fires on the rows duplex applies, inside duplex's transaction: what it writes there carries duplex's replication origin and is not replicated to the other system",
				system, t.table, t.name, map[string]string{"A": "ALWAYS", "R": "REPLICA"}[t.enabled]))
		}
	}
	return out, nil
}
