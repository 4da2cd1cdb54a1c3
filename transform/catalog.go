package transform

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Catalog is what Check needs to know of one database: its tables, as read
// from pg_catalog by the caller.
type Catalog struct {
	// Tables by "schema.table".
	Tables map[string]*TableInfo
	// Role describes the connected role and server settings; nil when
	// unknown (then the checks that need it are not made).
	Role *RoleInfo
}

// RoleInfo is what the connected role may do, and server settings the
// mapping depends on.
type RoleInfo struct {
	Name string
	// Superuser is pg_roles.rolsuper.
	Superuser bool
	// Replication: the role may stream a slot (REPLICATION or superuser).
	Replication bool
	// Origins: the role may use replication origins (superuser, or EXECUTE
	// on each of OriginFunctions).
	Origins bool
	// MissingOrigins are the OriginFunctions the role may not execute.
	MissingOrigins []string
	// TrackCommitTimestamp is the server's track_commit_timestamp.
	TrackCommitTimestamp bool
}

// OriginFunctions are the replication-origin functions duplex's sink
// calls (sinks/postgres: session.go looks the origin up and creates it,
// then binds the session to it; apply.go sets each transaction's origin
// LSN and commit time), by signature. PostgreSQL grants EXECUTE on them to
// superusers only; a superuser may GRANT EXECUTE on each to another role.
var OriginFunctions = []string{
	"pg_replication_origin_oid(text)",
	"pg_replication_origin_create(text)",
	"pg_replication_origin_session_setup(text)",
	"pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
}

// TableInfo describes one table.
type TableInfo struct {
	Columns map[string]*ColumnInfo
	// UniqueColumns holds the columns that alone carry a unique index or
	// the primary key.
	UniqueColumns map[string]bool
	// UniqueKeys holds the column sets of the table's unique indexes
	// without expressions or predicate (the primary key among them), each
	// sorted: the indexes an ON CONFLICT (a, b) can infer.
	UniqueKeys [][]string
	// ReplicaIdentity is pg_class.relreplident: 'd', 'f', 'i' or 'n'.
	ReplicaIdentity byte
	// IdentityColumns are the columns the replica identity sends for a
	// delete (primary key or the chosen index); all columns with 'f'.
	IdentityColumns []string
	// ForeignKeys are the table's own foreign keys (not those a partition
	// inherits), by constraint name.
	ForeignKeys []ForeignKey
	// PartitionKey are the columns of a partitioned table's partition key
	// (pg_partitioned_table.partattrs; expressions left out); empty for
	// other tables.
	PartitionKey []string
	// PartitionIdentity maps each leaf partition ("schema.table") of a
	// partitioned table to its own relreplident: PostgreSQL sends a
	// partition's changes with the partition's replica identity, which
	// is set per partition and not inherited.
	PartitionIdentity map[string]byte
}

// missingFrom returns the elements of want that have is missing, in
// want's order.
func missingFrom(want, have []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			out = append(out, w)
		}
	}
	return out
}

// partitionsWithout lists, sorted, the partitions whose replica identity
// is not one of ok.
func (ti *TableInfo) partitionsWithout(ok ...byte) []string {
	var out []string
	for p, ident := range ti.PartitionIdentity {
		if !slices.Contains(ok, ident) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// ColumnInfo describes one column.
type ColumnInfo struct {
	Name string
	// Type is the base type name (pg_type.typname, after domains): int8,
	// numeric, text, bpchar, varchar, uuid, timestamptz, ...
	Type string
	// SQLType is format_type(): "numeric(18,2)", "character(3)".
	SQLType string
	// CastType is the column's type without modifier, as SQL: what a
	// text value is cast to before it is stored (bpchar, numeric, a
	// schema-qualified enum or domain).
	CastType string
	// IsEnum is set for user-defined enum types.
	IsEnum bool
	// Precision and Scale of numeric; -1 when unconstrained.
	Precision, Scale int32
	// MaxLen of varchar/char; -1 when unconstrained.
	MaxLen  int
	NotNull bool
	// HasDefault: the column fills itself in an insert that leaves it
	// out (a DEFAULT, or GENERATED ... AS IDENTITY).
	HasDefault bool
	// Collation is the column's collation as SQL ("public.ci"), when it
	// is not its type's default; "" otherwise.
	Collation string
	// Nondeterministic is set when that collation compares strings that
	// differ in bytes as equal (pg_collation.collisdeterministic false):
	// then two distinct texts may be one key.
	Nondeterministic bool
}

func isTextType(c *ColumnInfo) bool {
	switch c.Type {
	case "text", "varchar", "bpchar", "name", "citext":
		return true
	}
	return c.IsEnum
}

func isIntType(c *ColumnInfo) bool {
	return c.Type == "int2" || c.Type == "int4" || c.Type == "int8"
}

// columnFits says whether a column of the given type can hold the field
// through the converter, or why not.
func columnFits(f *Field, conv string, c *ColumnInfo) error {
	if c.Type == "money" {
		return errors.New("type money depends on the server's lc_monetary and cannot be read exactly; use numeric")
	}
	ok := false
	switch conv {
	case ConvConstant:
		ok = true
	case ConvText, ConvEnum:
		ok = isTextType(c) || (f.Type == TypeUUID && c.Type == "uuid")
	case ConvInteger:
		ok = isIntType(c) || (c.Type == "numeric" && c.Scale == 0)
	case ConvDecimal, ConvMoney:
		ok = c.Type == "numeric" || (f.Type == TypeInteger && isIntType(c))
	case ConvMoneyMinor:
		ok = isIntType(c) || (c.Type == "numeric" && c.Scale == 0)
	case ConvTimestamp:
		ok = c.Type == "timestamptz" || c.Type == "timestamp"
	case ConvDate:
		ok = c.Type == "date"
	case ConvBoolean:
		ok = c.Type == "bool"
	case ConvUUID:
		ok = c.Type == "uuid"
	case ConvNative:
		ok = nativeFits(f, c)
	}
	if !ok {
		return fmt.Errorf("type %s cannot hold a %s field through converter %s", c.SQLType, f.Type, conv)
	}
	return nil
}

// Check compares the mapping's tables for one system with that system's
// catalog and binds the column descriptions used for exact conversion. It
// returns every mismatch, each naming system, table and column. role is
// "source", "target" or "both": a target table must also accept inserts
// (every NOT NULL column without a default is mapped), and a source table
// must key its deletes.
func (m *Mapping) Check(system string, cat *Catalog, role string) error {
	_, err := m.check(system, cat, role, nil, nil)
	return err
}

// CheckReport is Check that also returns warnings: what fits but will
// refuse some events. A target table with a NOT NULL column (no DEFAULT)
// that the mapping neither maps nor gives a default: updates of existing
// rows are applied, but a row duplex has to insert is dead-lettered with
// the reason.
func (m *Mapping) CheckReport(system string, cat *Catalog, role string) (warnings []string, err error) {
	return m.check(system, cat, role, nil, nil)
}

// CheckTarget is Check for the sink of one flow: only the entities the
// flow's source publishes are written, so only they must fit, and of
// those only the columns of fields the flow carries (owned by the source
// or by both) must exist. A column of a field the target system owns
// alone is never written by the flow: that it is missing (dropped while
// the target's own capture holds the entity) does not stop the flow.
func (m *Mapping) CheckTarget(system, source string, cat *Catalog) error {
	_, err := m.check(system, cat, "target", func(e *Entity) bool { return e.Publishes(source) }, func(f *Field) bool {
		return f.Owner == source || f.Owner == OwnerBoth
	})
	return err
}

// check is Check for the entities only accepts (nil: all), requiring the
// columns of the fields carried accepts (nil: all) to exist; it returns
// the warnings of CheckReport too.
func (m *Mapping) check(system string, cat *Catalog, role string, only func(*Entity) bool, carried func(*Field) bool) ([]string, error) {
	var errs []error
	var warns []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, e := range m.Entities {
		if only != nil && !only(e) {
			continue
		}
		t := e.Tables[system]
		if t == nil {
			continue
		}
		where := fmt.Sprintf("%s table %s (entity %s)", system, t.QualifiedTable(), e.Name)
		ti := cat.Tables[t.QualifiedTable()]
		if ti == nil {
			bad("%s: table does not exist", where)
			continue
		}
		kcs := t.KeyColumns()
		missingKey := false
		for _, kc := range kcs {
			if ti.Columns[kc] == nil {
				bad("%s: key column %s does not exist", where, kc)
				missingKey = true
			}
		}
		switch {
		case missingKey:
		case len(ti.PartitionKey) > 0 && !containsAll(kcs, ti.PartitionKey) && (len(kcs) == 1 && !ti.UniqueColumns[kcs[0]] || len(kcs) > 1 && !ti.HasUniqueKey(kcs)):
			// PostgreSQL: "unique constraint on partitioned table must
			// include all partitioning columns".
			bad("%s: the key (%s) has no unique index, and cannot have one: the table is partitioned by (%s), and a unique index of a partitioned table must contain the partition key; make the key (%s) (key: [...] and key_columns), or partition by the key",
				where, strings.Join(kcs, ", "), strings.Join(ti.PartitionKey, ", "), strings.Join(append(slices.Clone(kcs), missingFrom(ti.PartitionKey, kcs)...), ", "))
		case len(kcs) == 1 && !ti.UniqueColumns[kcs[0]]:
			bad("%s: key column %s has no unique index (create one: CREATE UNIQUE INDEX ON %s (%s))", where, kcs[0], t.QualifiedTable(), kcs[0])
		case len(kcs) > 1 && !ti.HasUniqueKey(kcs):
			bad("%s: key columns (%s) have no unique index on exactly these columns (create one: CREATE UNIQUE INDEX ON %s (%s))", where, strings.Join(kcs, ", "), t.QualifiedTable(), strings.Join(kcs, ", "))
		}
		if len(kcs) > 1 && !missingKey {
			// A unique index lets rows share a key with a NULL part, and
			// a NULL part cannot be compared (row comparison, ON
			// CONFLICT): every part of a composite key must be set.
			for _, kc := range kcs {
				if !ti.Columns[kc].NotNull {
					bad("%s: key column %s can be NULL; every column of a composite key must be NOT NULL (ALTER TABLE %s ALTER COLUMN %s SET NOT NULL)", where, kc, t.QualifiedTable(), kc)
				}
			}
		}
		mapped := map[string]bool{}
		for _, fname := range sortedKeys(t.Columns) {
			c := t.Columns[fname]
			f := e.Field(fname)
			conv := c.converter(f)
			if c.Column != "" {
				mapped[c.Column] = true
				ci := ti.Columns[c.Column]
				if ci == nil {
					if carried != nil && !e.IsKey(fname) && !carried(f) {
						continue
					}
					bad("%s: column %s (field %s) does not exist", where, c.Column, fname)
				} else if c.Ref != nil {
					c.info = ci
				} else if err := columnFits(f, conv, ci); err != nil {
					bad("%s: column %s (field %s): %w", where, c.Column, fname, err)
				} else {
					c.info = ci
				}
			}
			if c.CurrencyColumn != "" {
				ci := ti.Columns[c.CurrencyColumn]
				if ci == nil {
					bad("%s: currency column %s (field %s) does not exist", where, c.CurrencyColumn, fname)
				} else if !isTextType(ci) {
					bad("%s: currency column %s (field %s) has type %s, want text or char(3)", where, c.CurrencyColumn, fname, ci.SQLType)
				}
			}
			if c.Ref != nil {
				if rt := m.Entity(c.Ref.Entity); rt != nil && rt.Tables[system] != nil {
					rti := cat.Tables[rt.Tables[system].QualifiedTable()]
					if rti != nil && rti.Columns[c.Ref.Column] == nil {
						bad("%s: field %s refers to %s.%s, which does not exist", where, fname, rt.Tables[system].QualifiedTable(), c.Ref.Column)
					}
				}
			}
		}
		for _, col := range sortedKeys(t.Default) {
			if (role == "target" || role == "both") && ti.Columns[col] == nil {
				bad("%s: default for column %s, which does not exist", where, col)
			}
		}
		// Rows born in another system (it owns the key) are created here
		// by duplex: a NOT NULL column without a default that is not
		// mapped either gets a value from the mapping's default: or makes
		// those inserts fail. Updates of existing rows do not need it (the
		// sink updates rows it cannot insert), so this is a warning: the
		// inserts are dead-lettered with the reason, the rest flows.
		if ko := e.KeyOwner(); (role == "target" || role == "both") && ko != system && ko != OwnerBoth {
			for _, name := range sortedKeys(ti.Columns) {
				ci := ti.Columns[name]
				if ci.NotNull && !ci.HasDefault && !mapped[name] && t.Default[name] == nil {
					warns = append(warns, fmt.Sprintf("%s: column %s is NOT NULL without a default and not mapped: updates of existing rows are applied, but a row duplex inserts is dead-lettered; give it a value with default: in the mapping (a constant or sql:) or a DEFAULT in the table", where, name))
				}
			}
		}
		if shared := e.SharedFields(system); len(shared) > 0 && (role == "source" || role == "both") && e.Publishes(system) && ti.ReplicaIdentity != 'f' {
			bad("%s: shared field(s) %v need the old row of every update to tell which fields a write changed; run ALTER TABLE %s REPLICA IDENTITY FULL", where, shared, t.QualifiedTable())
		} else if parts := ti.partitionsWithout('f'); len(shared) > 0 && (role == "source" || role == "both") && e.Publishes(system) && len(parts) > 0 {
			bad("%s: shared field(s) %v need the old row of every update, and partition(s) %v do not send it: run ALTER TABLE … REPLICA IDENTITY FULL on each (a partition has its own replica identity)", where, shared, parts)
		}
		if others := e.OwnedElsewhere(system); len(others) > 0 && e.Enforce == EnforceOwner && (role == "source" || role == "both") && ti.ReplicaIdentity != 'f' {
			bad("%s: enforce: owner needs the old row of every update to tell an edit of %v (owned by another system) made here; run ALTER TABLE %s REPLICA IDENTITY FULL", where, others, t.QualifiedTable())
		}
		if shared := e.SharedFields(system); len(shared) > 0 && (role == "target" || role == "both") && cat.Role != nil && !cat.Role.TrackCommitTimestamp {
			bad("%s: shared field(s) %v are resolved by commit time; set track_commit_timestamp = on (needs a restart)", where, shared)
		}
		if (role == "source" || role == "both") && e.Publishes(system) {
			switch {
			case ti.ReplicaIdentity == 'n':
				bad("%s: REPLICA IDENTITY NOTHING cannot key deletes; run ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key) or FULL", where, t.QualifiedTable())
			case len(ti.partitionsWithout('d', 'f', 'i')) > 0:
				bad("%s: partition(s) %v have REPLICA IDENTITY NOTHING, which cannot key deletes; run ALTER TABLE … REPLICA IDENTITY DEFAULT or FULL on each", where, ti.partitionsWithout('d', 'f', 'i'))
			case ti.ReplicaIdentity != 'f' && !containsAll(ti.IdentityColumns, kcs):
				if len(ti.IdentityColumns) == 0 {
					bad("%s: no primary key or replica identity index, so deletes cannot be keyed; add a primary key or run ALTER TABLE %s REPLICA IDENTITY FULL", where, t.QualifiedTable())
				} else {
					what := "key column " + kcs[0]
					if len(kcs) > 1 {
						what = "all of key columns (" + strings.Join(kcs, ", ") + ")"
					}
					bad("%s: deletes send only %v, not %s; run ALTER TABLE %s REPLICA IDENTITY FULL or USING INDEX on a unique index of %s", where, ti.IdentityColumns, what, t.QualifiedTable(), strings.Join(kcs, ", "))
				}
			}
		}
	}
	if role == "target" || role == "both" {
		// The rows of one source transaction are written in one order;
		// foreign keys of the target that form a cycle must be
		// deferrable (WriteOrder).
		writes := only
		if writes == nil {
			writes = func(e *Entity) bool {
				for from := range e.Tables {
					if from != system && e.Publishes(from) {
						return true
					}
				}
				return false
			}
		}
		if _, _, err := m.WriteOrder(system, cat, writes); err != nil {
			errs = append(errs, err)
		}
	}
	if r := cat.Role; r != nil {
		if (role == "source" || role == "both") && !r.Replication {
			bad("%s: role %s cannot stream a replication slot; ALTER ROLE %s REPLICATION", system, r.Name, r.Name)
		}
		if (role == "target" || role == "both") && !r.Origins {
			missing := r.MissingOrigins
			if len(missing) == 0 {
				missing = OriginFunctions
			}
			bad("%s: role %s may not execute %s, which duplex applies under (replication origins); GRANT EXECUTE ON FUNCTION %s TO %s", system, r.Name, strings.Join(missing, ", "), strings.Join(missing, ", "), r.Name)
		}
	}
	return warns, errors.Join(errs...)
}

// HasUniqueKey says whether a unique index (or the primary key) has
// exactly these columns, in any order: what PostgreSQL's ON CONFLICT
// (a, b) infers its arbiter index from.
func (ti *TableInfo) HasUniqueKey(cols []string) bool {
	want := slices.Sorted(slices.Values(cols))
	for _, k := range ti.UniqueKeys {
		if slices.Equal(k, want) {
			return true
		}
	}
	return len(cols) == 1 && ti.UniqueColumns[cols[0]]
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
