package pgstate

import (
	"context"
	"crypto/md5" //nolint:gosec // matches PostgreSQL's md5() of recorded values; not for security
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// FieldVersion is who wrote a shared (owner both) field's value and when
// (duplex.field_versions): Source's commit at CommitTime, while the field
// holds the value whose text has md5 ValueHash (nil: NULL).
type FieldVersion struct {
	Entity     string
	Key        string
	Field      string
	Source     string
	CommitTime time.Time
	ValueHash  *string
}

// ReadFieldVersions returns the recorded versions of entity's fields for
// keys, in any order.
func ReadFieldVersions(ctx context.Context, q Querier, entity string, keys []string) ([]FieldVersion, error) {
	rows, err := q.Query(ctx, `SELECT entity, key, field, source, commit_time, value_hash FROM duplex.field_versions WHERE entity = $1 AND key = ANY($2)`, entity, keys)
	if err != nil {
		return nil, fmt.Errorf("read field versions of %s: %w", entity, err)
	}
	out, err := collectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("read field versions of %s: %w", entity, err)
	}
	return out, nil
}

// lookupFieldVersions returns the recorded versions of the fields of the
// pairs (entities[i], keys[i]).
func lookupFieldVersions(ctx context.Context, q Querier, entities, keys []string) ([]FieldVersion, error) {
	rows, err := q.Query(ctx, `SELECT v.entity, v.key, v.field, v.source, v.commit_time, v.value_hash
		FROM unnest($1::text[], $2::text[]) AS u(e, k) JOIN duplex.field_versions v ON v.entity = u.e AND v.key = u.k`, entities, keys)
	if err != nil {
		return nil, err
	}
	return collectVersions(rows)
}

func collectVersions(rows pgx.Rows) ([]FieldVersion, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (FieldVersion, error) {
		var v FieldVersion
		err := r.Scan(&v.Entity, &v.Key, &v.Field, &v.Source, &v.CommitTime, &v.ValueHash)
		return v, err
	})
}

// Written is what a sink just wrote into one shared column of a target
// table: per row the key's text, the system whose write the value is and
// that write's commit time (parallel slices).
type Written struct {
	Entity string
	Field  string
	// Table is the target table, quoted and qualified; KeyColumn and
	// Column are unquoted; KeyType is the SQL type a key's text is cast
	// to.
	Table     string
	KeyColumn string
	Column    string
	KeyType   string
	Keys      []string
	Sources   []string
	At        []time.Time
}

// RecordWritten records, in one statement on q (the sink's apply
// transaction), the version of each written value with the md5 of the
// value now in the row. A recorded version is replaced when the value
// changed or the new version is not older.
func RecordWritten(ctx context.Context, q Querier, w Written) error {
	sql := fmt.Sprintf(`
INSERT INTO duplex.field_versions (entity, key, field, source, commit_time, value_hash)
SELECT $1, u.k, $2, u.s, u.at, md5(t.%s::text)
FROM unnest($3::text[], $4::text[], $5::timestamptz[]) AS u(k, s, at) JOIN %s AS t ON t.%s = u.k::%s
ON CONFLICT (entity, key, field) DO UPDATE SET source = EXCLUDED.source, commit_time = EXCLUDED.commit_time, value_hash = EXCLUDED.value_hash
WHERE field_versions.value_hash IS DISTINCT FROM EXCLUDED.value_hash OR field_versions.commit_time <= EXCLUDED.commit_time`,
		pgx.Identifier{w.Column}.Sanitize(), w.Table, pgx.Identifier{w.KeyColumn}.Sanitize(), w.KeyType)
	if _, err := q.Exec(ctx, sql, w.Entity, w.Field, w.Keys, w.Sources, w.At); err != nil {
		return fmt.Errorf("record versions of %s.%s: %w", w.Entity, w.Field, err)
	}
	return nil
}

// VersionRecorder records, in a source database's duplex schema, the
// version of every local write to a shared field that its capture reads
// from the WAL: what the sink into that same database compares an incoming
// write with. It has its own session, opened on first use (and Ensure
// run on it). Used by one goroutine.
type VersionRecorder struct {
	system  string
	dsn     string
	mapping *transform.Mapping
	conn    *pgx.Conn
}

// NewVersionRecorder returns a recorder for a system; it connects lazily.
func NewVersionRecorder(system, dsn string, m *transform.Mapping) *VersionRecorder {
	return &VersionRecorder{system: system, dsn: dsn, mapping: m}
}

// Close ends the session.
func (r *VersionRecorder) Close(ctx context.Context) {
	if r.conn != nil {
		_ = r.conn.Close(ctx)
		r.conn = nil
	}
}

// connect opens the session if there is none.
func (r *VersionRecorder) connect(ctx context.Context) error {
	if r.conn != nil && !r.conn.IsClosed() {
		return nil
	}
	c, err := pgx.Connect(ctx, r.dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := Ensure(ctx, c); err != nil {
		_ = c.Close(ctx)
		return err
	}
	r.conn = c
	return nil
}

// Record stores the versions of the shared fields the events carry: the
// newer of what is recorded and the event, per field.
func (r *VersionRecorder) Record(ctx context.Context, events []transform.Event) error {
	var ents, keys, fields, values []string
	var nulls []bool
	var ats []time.Time
	for i := range events {
		ev := &events[i]
		if ev.Op != transform.OpUpsert {
			continue
		}
		e := r.mapping.Entity(ev.Entity)
		for _, f := range e.SharedFields(r.system) {
			v, ok := ev.Data[f]
			if !ok {
				continue
			}
			ents, keys, fields, ats = append(ents, ev.Entity), append(keys, ev.Key), append(fields, f), append(ats, ev.Pos.CommitTime)
			s, _ := v.(string)
			values, nulls = append(values, s), append(nulls, v == nil)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if err := r.connect(ctx); err != nil {
		return fmt.Errorf("record versions %s: %w", r.system, err)
	}
	_, err := r.conn.Exec(ctx, `
INSERT INTO duplex.field_versions AS v (entity, key, field, source, commit_time, value_hash)
SELECT DISTINCT ON (u.e, u.k, u.f) u.e, u.k, u.f, $1, u.at, CASE WHEN u.n THEN NULL ELSE md5(u.val) END
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bool[]) AS u(e, k, f, at, val, n)
ORDER BY u.e, u.k, u.f, u.at DESC
ON CONFLICT (entity, key, field) DO UPDATE SET source = EXCLUDED.source, commit_time = EXCLUDED.commit_time, value_hash = EXCLUDED.value_hash
WHERE v.commit_time <= EXCLUDED.commit_time`, r.system, ents, keys, fields, ats, values, nulls)
	if err != nil {
		r.Close(ctx)
		return fmt.Errorf("record versions %s: %w", r.system, err)
	}
	return nil
}

// Lookup sets, on copied rows (snapshot, backfill) of this system, the
// recorded version of each shared field whose value is still the one
// recorded, so that a copy carries the age of the write it comes from: a
// database restored from a backup and copied again must not pass its old
// values off as new.
func (r *VersionRecorder) Lookup(ctx context.Context, events []transform.Event) error {
	var ents, keys []string
	for i := range events {
		ev := &events[i]
		if ev.Op == transform.OpUpsert && len(r.mapping.Entity(ev.Entity).SharedFields(r.system)) > 0 {
			ents, keys = append(ents, ev.Entity), append(keys, ev.Key)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if err := r.connect(ctx); err != nil {
		return fmt.Errorf("look up versions %s: %w", r.system, err)
	}
	recorded, err := lookupFieldVersions(ctx, r.conn, ents, keys)
	if err != nil {
		r.Close(ctx)
		return fmt.Errorf("look up versions %s: %w", r.system, err)
	}
	known := map[string]FieldVersion{}
	for _, x := range recorded {
		known[x.Entity+"\x00"+x.Key+"\x00"+x.Field] = x
	}
	for i := range events {
		ev := &events[i]
		if ev.Op != transform.OpUpsert {
			continue
		}
		for _, f := range r.mapping.Entity(ev.Entity).SharedFields(r.system) {
			v, ok := ev.Data[f]
			x, recorded := known[ev.Entity+"\x00"+ev.Key+"\x00"+f]
			if !ok || !recorded {
				continue
			}
			var h *string
			if s, isText := v.(string); isText {
				sum := fmt.Sprintf("%x", md5.Sum([]byte(s)))
				h = &sum
			} else if v != nil {
				continue
			}
			if !samePtr(h, x.ValueHash) {
				continue // changed since recorded: the copy's time stands
			}
			if ev.Versions == nil {
				ev.Versions = map[string]transform.FieldVersion{}
			}
			ev.Versions[f] = transform.FieldVersion{Source: x.Source, At: x.CommitTime}
		}
	}
	return nil
}

func samePtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}
