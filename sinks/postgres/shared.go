package postgres

import (
	"context"
	"crypto/md5" //nolint:gosec // matches PostgreSQL's md5() of recorded values; not for security
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// version is who wrote a field's current value, and when (source commit
// time).
type version struct {
	source string
	at     time.Time
}

// newer says whether v wins over w: the later commit, ties broken by the
// systems' order in the mapping (earlier wins).
func (s *Sink) newer(v, w version) bool {
	if !v.at.Equal(w.at) {
		return v.at.After(w.at)
	}
	return slices.Index(s.cfg.Mapping.Systems, v.source) < slices.Index(s.cfg.Mapping.Systems, w.source)
}

// resolveShared decides, field by field, whether the incoming values of
// shared fields are newer than what the target holds, and drops those that
// lose (a conflict, logged and counted). What the target holds was written
// either by duplex (its version is in duplex.field_versions, as long as the
// value is still the one duplex wrote) or by a local user (then it is as
// old as the commit of the row's last write, pg_xact_commit_timestamp).
func (s *Sink) resolveShared(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) (int, error) {
	shared := s.sharedColumns(e)
	if len(shared) == 0 {
		return 0, nil
	}
	t := e.Tables[s.cfg.System]
	// Every row the batch writes: a row whose shared value was written
	// locally gets that local version recorded before duplex touches the
	// row (and its xmin) for anything else.
	var keys []string
	for _, k := range b.keys {
		if p := b.rows[k]; !p.deleted {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return 0, nil
	}
	kt, err := s.castType(t, t.KeyColumn)
	if err != nil {
		return 0, err
	}
	cols := sortedKeys(shared)
	sel := ""
	for _, c := range cols {
		id := pgx.Identifier{c}.Sanitize()
		sel += fmt.Sprintf(", t.%s::text, md5(t.%s::text)", id, id)
	}
	// FOR UPDATE: a local write committing between this read and the
	// write below would otherwise be overwritten on a stale decision.
	q := fmt.Sprintf(`SELECT u.k, pg_xact_commit_timestamp(t.xmin)%s FROM unnest($1::text[]) AS u(k) JOIN %s AS t ON t.%s = u.k::%s FOR UPDATE OF t`,
		sel, quoteTable(t), pgx.Identifier{t.KeyColumn}.Sanitize(), kt)
	type current struct {
		local  *time.Time
		values []*string
		hashes []*string
	}
	have := map[string]*current{}
	rows, err := tx.Query(ctx, q, keys)
	if err != nil {
		return 0, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	for rows.Next() {
		var k string
		c := &current{values: make([]*string, len(cols)), hashes: make([]*string, len(cols))}
		dest := []any{&k, &c.local}
		for i := range cols {
			dest = append(dest, &c.values[i], &c.hashes[i])
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return 0, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
		}
		have[k] = c
	}
	if err := rows.Err(); err != nil {
		return 0, classify(fmt.Errorf("sink %s: read shared fields of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	type recorded struct {
		v    version
		hash *string
	}
	known := map[string]recorded{}
	vr, err := tx.Query(ctx, `SELECT key, field, source, commit_time, value_hash FROM duplex.field_versions WHERE entity = $1 AND key = ANY($2)`, e.Name, keys)
	if err != nil {
		return 0, classify(fmt.Errorf("sink %s: read field versions of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	for vr.Next() {
		var k, f string
		var r recorded
		if err := vr.Scan(&k, &f, &r.v.source, &r.v.at, &r.hash); err != nil {
			vr.Close()
			return 0, classify(fmt.Errorf("sink %s: read field versions of %s: %w", s.cfg.System, e.Name, err), -1, -1)
		}
		known[k+"\x00"+f] = r
	}
	if err := vr.Err(); err != nil {
		return 0, classify(fmt.Errorf("sink %s: read field versions of %s: %w", s.cfg.System, e.Name, err), -1, -1)
	}
	conflicts := 0
	for _, k := range keys {
		p := b.rows[k]
		cur := have[k]
		if cur == nil {
			// A new row: every incoming value stands.
			for col, at := range p.at {
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = version{source: p.sourceOf(col), at: at}
			}
			continue
		}
		for i, col := range cols {
			field := shared[col]
			var held version
			r, recorded := known[k+"\x00"+field]
			switch {
			case recorded && eqPtr(r.hash, cur.hashes[i]):
				held = r.v
			case recorded:
				// Changed here since the last recorded version: the capture
				// of this database records that write's version as it reads
				// it from the WAL. Until then its age is unknown, and
				// nothing may overwrite it.
				return conflicts, &pipeline.ApplyError{Kind: pipeline.Transient, Tx: p.tx, Event: p.ev, RetryAfter: 20 * time.Millisecond,
					Err: fmt.Errorf("entity %s key %s field %s: waiting for the capture of %s to record a local write", e.Name, k, field, s.cfg.System)}
			case cur.local != nil && !p.redo:
				// Never versioned (the row predates duplex): as old as the
				// row's last commit. A late change (p.redo) is not compared
				// with it: the row's last commit may be duplex's own write
				// of a newer change that did not carry this field.
				held = version{source: s.cfg.System, at: *cur.local}
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = held
			default:
				// Without a commit timestamp the local value's age is
				// unknown; the incoming write is the newest known.
				continue
			}
			at, ok := p.at[col]
			if !ok {
				continue
			}
			in := version{source: p.sourceOf(col), at: at}
			vi := slices.IndexFunc(p.row.Values, func(v transform.ColValue) bool { return v.Column == col })
			incoming := p.row.Values[vi]
			if s.newer(in, held) {
				if p.ver == nil {
					p.ver = map[string]version{}
				}
				p.ver[col] = in
				continue
			}
			same := (incoming.Null && cur.values[i] == nil) || (!incoming.Null && cur.values[i] != nil && *cur.values[i] == incoming.Text)
			if same {
				continue // the held version stands for the value both agree on
			}
			conflicts++
			s.log.Info("conflict: the target holds a later write of a shared field; incoming value dropped",
				slog.String("entity", e.Name), slog.String("key", k), slog.String("field", field),
				slog.String("kept", deref(cur.values[i])), slog.String("kept_from", held.source), slog.Time("kept_at", held.at),
				slog.String("dropped", textOf(incoming)), slog.String("dropped_from", in.source), slog.Time("dropped_at", in.at))
			row := *p.row
			row.Values = slices.Delete(slices.Clone(row.Values), vi, vi+1)
			p.row = &row
			delete(p.at, col)
		}
	}
	return conflicts, nil
}

// recordVersions stores the version of every shared field the batch wrote,
// with the hash of the value now in the row.
func (s *Sink) recordVersions(ctx context.Context, tx pgx.Tx, e *transform.Entity, b *entityBatch) error {
	shared := s.sharedColumns(e)
	if len(shared) == 0 {
		return nil
	}
	t := e.Tables[s.cfg.System]
	kt, err := s.castType(t, t.KeyColumn)
	if err != nil {
		return err
	}
	for _, col := range sortedKeys(shared) {
		var keys, sources []string
		var ats []time.Time
		for _, k := range b.keys {
			p := b.rows[k]
			if v, ok := p.ver[col]; ok && !p.deleted {
				keys, sources, ats = append(keys, k), append(sources, v.source), append(ats, v.at)
			}
		}
		if len(keys) == 0 {
			continue
		}
		q := fmt.Sprintf(`
INSERT INTO duplex.field_versions (entity, key, field, source, commit_time, value_hash)
SELECT $1, u.k, $2, u.s, u.at, md5(t.%s::text)
FROM unnest($3::text[], $4::text[], $5::timestamptz[]) AS u(k, s, at) JOIN %s AS t ON t.%s = u.k::%s
ON CONFLICT (entity, key, field) DO UPDATE SET source = EXCLUDED.source, commit_time = EXCLUDED.commit_time, value_hash = EXCLUDED.value_hash
WHERE field_versions.value_hash IS DISTINCT FROM EXCLUDED.value_hash OR field_versions.commit_time <= EXCLUDED.commit_time`,
			pgx.Identifier{col}.Sanitize(), quoteTable(t), pgx.Identifier{t.KeyColumn}.Sanitize(), kt)
		if _, err := tx.Exec(ctx, q, e.Name, shared[col], keys, sources, ats); err != nil {
			return classify(fmt.Errorf("sink %s: record versions of %s.%s: %w", s.cfg.System, e.Name, shared[col], err), -1, -1)
		}
	}
	return nil
}

// VersionRecorder records, in a source database's duplex schema, the
// version of every local write to a shared field that its capture reads
// from the WAL: what the sink into that same database compares an incoming
// write with. Used by one goroutine.
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
	if err := EnsureSchema(ctx, c); err != nil {
		c.Close(ctx)
		return err
	}
	r.conn = c
	return nil
}

// Record stores the versions of the shared fields the events carry: the
// newer of what is recorded and the event, per field.
func (r *VersionRecorder) Record(ctx context.Context, events []transform.Event) error {
	var ents, keys, fields, hashes []string
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
			hashes, nulls = append(hashes, s), append(nulls, v == nil)
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
WHERE v.commit_time <= EXCLUDED.commit_time`, r.system, ents, keys, fields, ats, hashes, nulls)
	if err != nil {
		r.Close(ctx)
		return fmt.Errorf("record versions %s: %w", r.system, err)
	}
	return nil
}

func eqPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func deref(p *string) string {
	if p == nil {
		return "NULL"
	}
	return *p
}

func textOf(v transform.ColValue) string {
	if v.Null {
		return "NULL"
	}
	return v.Text
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
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
	rows, err := r.conn.Query(ctx, `SELECT v.entity, v.key, v.field, v.source, v.commit_time, v.value_hash
		FROM unnest($1::text[], $2::text[]) AS u(e, k) JOIN duplex.field_versions v ON v.entity = u.e AND v.key = u.k`, ents, keys)
	if err != nil {
		r.Close(ctx)
		return fmt.Errorf("look up versions %s: %w", r.system, err)
	}
	type rec struct {
		v    transform.FieldVersion
		hash *string
	}
	known := map[string]rec{}
	for rows.Next() {
		var e, k, f string
		var x rec
		if err := rows.Scan(&e, &k, &f, &x.v.Source, &x.v.At, &x.hash); err != nil {
			rows.Close()
			return fmt.Errorf("look up versions %s: %w", r.system, err)
		}
		known[e+"\x00"+k+"\x00"+f] = x
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("look up versions %s: %w", r.system, err)
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
			if !eqPtr(h, x.hash) {
				continue // changed since recorded: the copy's time stands
			}
			if ev.Versions == nil {
				ev.Versions = map[string]transform.FieldVersion{}
			}
			ev.Versions[f] = x.v
		}
	}
	return nil
}
