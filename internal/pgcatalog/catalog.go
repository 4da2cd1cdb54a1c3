// Package pgcatalog reads what duplex needs to know of a PostgreSQL
// database's tables from pg_catalog: columns with their base types,
// precision, scale and collation, unique indexes (single columns and
// column sets), foreign keys, and replica identity (of each partition too).
// It returns a transform.Catalog; deciding what fits is transform's job.
package pgcatalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// Querier is a pgx connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Read describes the given "schema.table" tables. Tables that do not exist
// are absent from the result.
func Read(ctx context.Context, q Querier, tables []string) (*transform.Catalog, error) {
	cat := &transform.Catalog{Tables: map[string]*transform.TableInfo{}}
	rows, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, c.relreplident, a.attname, a.attnotnull, a.atthasdef OR a.attidentity <> '',
       bt.typname, bt.typtype = 'e', format_type(a.atttypid, a.atttypmod),
       CASE WHEN bt.typname = 'numeric' AND coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) >= 4
            THEN ((coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) - 4) >> 16) & 65535 ELSE -1 END,
       CASE WHEN bt.typname = 'numeric' AND coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) >= 4
            THEN ((coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) - 4) & 65535) ELSE -1 END,
       CASE WHEN bt.typname IN ('varchar', 'bpchar') AND coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) >= 4
            THEN coalesce(NULLIF(t.typtypmod, -1), a.atttypmod) - 4 ELSE -1 END,
       CASE WHEN tn.nspname = 'pg_catalog' THEN t.typname ELSE quote_ident(tn.nspname) || '.' || quote_ident(t.typname) END,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN quote_ident(con.nspname) || '.' || quote_ident(co.collname) ELSE '' END,
       NOT coalesce(co.collisdeterministic, true)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace con ON con.oid = co.collnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY($1)
ORDER BY 1, a.attnum`, tables)
	if err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	for rows.Next() {
		var tbl string
		var ident byte
		ci := &transform.ColumnInfo{}
		var prec, scale, maxLen int32
		if err := rows.Scan(&tbl, &ident, &ci.Name, &ci.NotNull, &ci.HasDefault, &ci.Type, &ci.IsEnum, &ci.SQLType, &prec, &scale, &maxLen, &ci.CastType, &ci.Collation, &ci.Nondeterministic); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read catalog: %w", err)
		}
		ci.Precision, ci.Scale, ci.MaxLen = prec, scale, int(maxLen)
		ti := cat.Tables[tbl]
		if ti == nil {
			ti = &transform.TableInfo{Columns: map[string]*transform.ColumnInfo{}, UniqueColumns: map[string]bool{}, ReplicaIdentity: ident}
			cat.Tables[tbl] = ti
		}
		ti.Columns[ci.Name] = ci
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	idx, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, a.attname, i.indnkeyatts = 1 AND i.indisunique AND i.indpred IS NULL, i.indisprimary OR i.indisreplident
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts-1])
WHERE n.nspname || '.' || c.relname = ANY($1)`, tables)
	if err != nil {
		return nil, fmt.Errorf("read catalog indexes: %w", err)
	}
	for idx.Next() {
		var tbl, col string
		var unique, ident bool
		if err := idx.Scan(&tbl, &col, &unique, &ident); err != nil {
			idx.Close()
			return nil, fmt.Errorf("read catalog indexes: %w", err)
		}
		ti := cat.Tables[tbl]
		if ti == nil {
			continue
		}
		if unique {
			ti.UniqueColumns[col] = true
		}
		if ident {
			ti.IdentityColumns = append(ti.IdentityColumns, col)
		}
	}
	if err := idx.Err(); err != nil {
		return nil, fmt.Errorf("read catalog indexes: %w", err)
	}
	// Unique indexes of several columns, for composite keys: only plain
	// columns and no predicate, as ON CONFLICT (a, b) infers them.
	uk, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C")
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts-1])
WHERE n.nspname || '.' || c.relname = ANY($1) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY 1, i.indexrelid`, tables)
	if err != nil {
		return nil, fmt.Errorf("read catalog unique indexes: %w", err)
	}
	for uk.Next() {
		var tbl string
		var cols []string
		if err := uk.Scan(&tbl, &cols); err != nil {
			uk.Close()
			return nil, fmt.Errorf("read catalog unique indexes: %w", err)
		}
		if ti := cat.Tables[tbl]; ti != nil {
			ti.UniqueKeys = append(ti.UniqueKeys, cols)
		}
	}
	if err := uk.Err(); err != nil {
		return nil, fmt.Errorf("read catalog unique indexes: %w", err)
	}
	if err := readForeignKeys(ctx, q, tables, cat); err != nil {
		return nil, err
	}
	// The partition key of partitioned tables (columns; an expression
	// has attnum 0 and is left out).
	pk, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, array_agg(a.attname::text ORDER BY k.i)
FROM pg_partitioned_table p
JOIN pg_class c ON c.oid = p.partrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(p.partattrs::int2[]) WITH ORDINALITY AS k(attnum, i)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname || '.' || c.relname = ANY($1)
GROUP BY 1`, tables)
	if err != nil {
		return nil, fmt.Errorf("read catalog partition keys: %w", err)
	}
	for pk.Next() {
		var tbl string
		var cols []string
		if err := pk.Scan(&tbl, &cols); err != nil {
			pk.Close()
			return nil, fmt.Errorf("read catalog partition keys: %w", err)
		}
		if ti := cat.Tables[tbl]; ti != nil {
			ti.PartitionKey = cols
		}
	}
	if err := pk.Err(); err != nil {
		return nil, fmt.Errorf("read catalog partition keys: %w", err)
	}
	// A partition's changes carry its own replica identity.
	parts, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, ln.nspname || '.' || l.relname, l.relreplident
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_partition_tree(c.oid) pt
JOIN pg_class l ON l.oid = pt.relid
JOIN pg_namespace ln ON ln.oid = l.relnamespace
WHERE c.relkind = 'p' AND pt.isleaf AND n.nspname || '.' || c.relname = ANY($1)`, tables)
	if err != nil {
		return nil, fmt.Errorf("read catalog partitions: %w", err)
	}
	for parts.Next() {
		var tbl, leaf string
		var ident byte
		if err := parts.Scan(&tbl, &leaf, &ident); err != nil {
			parts.Close()
			return nil, fmt.Errorf("read catalog partitions: %w", err)
		}
		if ti := cat.Tables[tbl]; ti != nil {
			if ti.PartitionIdentity == nil {
				ti.PartitionIdentity = map[string]byte{}
			}
			ti.PartitionIdentity[leaf] = ident
		}
	}
	if err := parts.Err(); err != nil {
		return nil, fmt.Errorf("read catalog partitions: %w", err)
	}
	role, err := q.Query(ctx, `
SELECT current_user, r.rolsuper, r.rolsuper OR r.rolreplication,
       ARRAY(SELECT f FROM unnest($1::text[]) AS f WHERE NOT has_function_privilege(f, 'EXECUTE')),
       current_setting('track_commit_timestamp') = 'on'
FROM pg_roles r WHERE r.rolname = current_user`, transform.OriginFunctions)
	if err != nil {
		return nil, fmt.Errorf("read role: %w", err)
	}
	ri, err := pgx.CollectExactlyOneRow(role, func(row pgx.CollectableRow) (*transform.RoleInfo, error) {
		r := &transform.RoleInfo{}
		err := row.Scan(&r.Name, &r.Superuser, &r.Replication, &r.MissingOrigins, &r.TrackCommitTimestamp)
		r.Origins = len(r.MissingOrigins) == 0
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read role: %w", err)
	}
	cat.Role = ri
	return cat, nil
}

// readForeignKeys adds the tables' foreign keys: the constraints declared
// on them, not the copies PostgreSQL makes on partitions (conparentid).
func readForeignKeys(ctx context.Context, q Querier, tables []string, cat *transform.Catalog) error {
	rows, err := q.Query(ctx, `
SELECT n.nspname || '.' || c.relname, n.nspname, con.conname, rn.nspname || '.' || rc.relname, con.condeferrable, con.condeferred,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.ord)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class rc ON rc.oid = con.confrelid
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0 AND n.nspname || '.' || c.relname = ANY($1)
ORDER BY 1, con.conname`, tables)
	if err != nil {
		return fmt.Errorf("read catalog foreign keys: %w", err)
	}
	for rows.Next() {
		var tbl string
		var fk transform.ForeignKey
		if err := rows.Scan(&tbl, &fk.Schema, &fk.Name, &fk.RefTable, &fk.Deferrable, &fk.InitiallyDeferred, &fk.Columns); err != nil {
			rows.Close()
			return fmt.Errorf("read catalog foreign keys: %w", err)
		}
		if ti := cat.Tables[tbl]; ti != nil {
			ti.ForeignKeys = append(ti.ForeignKeys, fk)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read catalog foreign keys: %w", err)
	}
	return nil
}
