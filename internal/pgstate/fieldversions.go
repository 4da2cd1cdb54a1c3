package pgstate

import (
	"context"
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // reads hashes recorded by older versions; not for security
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// FieldVersion is who wrote a shared (owner both) field's value and when
// (duplex.field_versions): Source's commit at CommitTime, while the field
// holds the value whose hash is ValueHash (nil: NULL; see HashCanonical).
type FieldVersion struct {
	Entity     string
	Key        string
	Field      string
	Source     string
	CommitTime time.Time
	ValueHash  *string
}

// Recorded values are compared by their canonical value, hashed
// (HashCanonical), on both sides of the comparison: the capture records
// the canonical value of a local write (VersionRecorder), and the sink
// canonicalizes the column's text before comparing (and before recording
// what it wrote). Canonical rather than column text, because it is right
// for every converter a shared field may use (text, currency, enum with or
// without a value map): the capture only publishes, and so only records, a
// write that changed the canonical value (an 'eur' rewritten as 'EUR' is
// no write of the field), and the recorder sees the canonical value only;
// a column-text hash would leave such a value forever different from the
// one recorded. Two column texts that mean the same canonical value are
// the same value for the rule.
//
// A hash is "hmac:<key id>:" followed by the HMAC-SHA256 (hex) of the
// canonical text under the key of a FieldHasher, whose id is a fingerprint
// of the key (FieldHasher.Hash): a hash of an e-mail cannot be looked up
// in a table of hashes of known addresses without the key. Hashes recorded
// by older versions are still read, so that an upgrade of a running system
// keeps its versions: "canonical:" followed by the md5 of the canonical
// text (HashCanonical), and, before that, no prefix (the md5 of the
// canonical value by the capture, of the column text by the sink); each
// is replaced by a keyed hash at the next write of its field. Hashes under
// another key (an instance given another key) are read as Legacy too.
const canonicalPrefix = "canonical:"

// hmacPrefix starts a keyed hash.
const hmacPrefix = "hmac:"

// FieldHasher computes value_hash as HMAC-SHA256 under a secret key. The
// capture's VersionRecorder and the sink into the same database must use
// the same key, or each reads the other's hashes as Legacy. A nil
// *FieldHasher hashes as older versions did (HashCanonical, md5), for
// tests that do not care; duplex always configures a key.
type FieldHasher struct {
	key    []byte
	prefix string
}

// NewFieldHasher returns a hasher with key (at least 16 bytes).
func NewFieldHasher(key []byte) (*FieldHasher, error) {
	if len(key) < 16 {
		return nil, fmt.Errorf("field version hash key has %d bytes, want at least 16", len(key))
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("duplex field version key id"))
	return &FieldHasher{key: key, prefix: hmacPrefix + hex.EncodeToString(m.Sum(nil))[:8] + ":"}, nil
}

// KeyID is the fingerprint of the key that hashes carry.
func (h *FieldHasher) KeyID() string {
	if h == nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimPrefix(h.prefix, hmacPrefix), ":")
}

// Hash is the value_hash of a canonical value of a shared field: nil for
// NULL.
func (h *FieldHasher) Hash(v any) *string {
	if h == nil {
		return HashCanonical(v)
	}
	if v == nil {
		return nil
	}
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(canonicalText(v)))
	out := h.prefix + hex.EncodeToString(m.Sum(nil))
	return &out
}

// Legacy says whether v was recorded with another hash than h's (an older
// duplex, or another key): such a version can be matched only by
// Holds's older rules, and a value that does not match it is as old as
// its row's last commit.
func (h *FieldHasher) Legacy(v FieldVersion) bool {
	if h == nil {
		return v.Legacy()
	}
	return v.ValueHash != nil && !strings.HasPrefix(*v.ValueHash, h.prefix)
}

// Holds says whether the recorded version v is the one of a value whose
// canonical value is canonical (nil: NULL) and whose column text is text:
// h's keyed hash, or an older md5 (FieldVersion.Holds).
func (h *FieldHasher) Holds(v FieldVersion, canonical any, text *string) bool {
	if h == nil || v.ValueHash == nil {
		return v.Holds(canonical, text)
	}
	if strings.HasPrefix(*v.ValueHash, h.prefix) {
		return samePtr(h.Hash(canonical), v.ValueHash)
	}
	if strings.HasPrefix(*v.ValueHash, hmacPrefix) {
		return false // another key: cannot tell
	}
	return v.Holds(canonical, text)
}

func canonicalText(v any) string {
	s, ok := v.(string)
	if !ok {
		s = fmt.Sprint(v)
	}
	return s
}

// HashCanonical is the value_hash older versions recorded for a canonical
// value of a shared field ("canonical:" and an unkeyed md5): nil for NULL.
// Kept to read and test what they recorded; duplex records FieldHasher's.
func HashCanonical(v any) *string {
	if v == nil {
		return nil
	}
	s, ok := v.(string)
	if !ok {
		s = fmt.Sprint(v)
	}
	h := canonicalPrefix + md5hex(s)
	return &h
}

// Legacy says whether the version was recorded by a duplex that hashed
// values without the canonical prefix (by canonical value in the capture,
// by column text in the sink).
func (v FieldVersion) Legacy() bool {
	return v.ValueHash != nil && !strings.HasPrefix(*v.ValueHash, canonicalPrefix)
}

// Holds says whether the recorded version is the one of a value whose
// canonical value is canonical (nil: NULL) and whose column text is text:
// a version recorded by this duplex matches the canonical hash; a legacy
// one either the md5 of the canonical value or of the column text.
func (v FieldVersion) Holds(canonical any, text *string) bool {
	if !v.Legacy() {
		return samePtr(HashCanonical(canonical), v.ValueHash)
	}
	if s, ok := canonical.(string); ok && md5hex(s) == *v.ValueHash {
		return true
	}
	return text != nil && md5hex(*text) == *v.ValueHash
}

func md5hex(s string) string {
	return fmt.Sprintf("%x", md5.Sum([]byte(s))) //nolint:gosec // a change detector, not for security
}

// ReadFieldVersions returns the recorded versions of entity's fields for
// keys, in any order.
func ReadFieldVersions(ctx context.Context, q Querier, entity string, keys []string) ([]FieldVersion, error) {
	rows, err := q.Query(ctx, `SELECT v.entity, v.key, v.field, v.source, v.commit_time, v.value_hash
		FROM unnest($2::text[]) AS u(k) CROSS JOIN LATERAL (`+versionsOf(`$1`, `u.k`)+`) v`, entity, keys)
	if err != nil {
		return nil, fmt.Errorf("read field versions of %s: %w", entity, err)
	}
	out, err := collectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("read field versions of %s: %w", entity, err)
	}
	return out, nil
}

// versionsOf is the subquery of the versions of one entity's key, for a
// LATERAL join from the keys looked up: one probe of the primary key
// (entity, key, field) per key, whatever the table's statistics say.
//
// The plain forms (key = ANY($2), or a join with the keys) are planned
// from statistics gathered when the table was small (it grows from empty
// during an initial load, faster than autovacuum analyzes it): PostgreSQL
// then scans every version of the entity and filters the keys, or hashes
// them all, per lookup; measured at 20-90 ms a lookup of 85 keys among
// 40,000 versions, the bulk of the database's time in the bench's small
// shape. OFFSET 0 keeps the subquery from being flattened into such a
// join, so only a parameterized scan of the index can serve it.
func versionsOf(entity, key string) string {
	return `SELECT f.entity, f.key, f.field, f.source, f.commit_time, f.value_hash FROM duplex.field_versions f
		WHERE f.entity = ` + entity + ` AND f.key = ` + key + ` OFFSET 0`
}

// lookupFieldVersions returns the recorded versions of the fields of the
// pairs (entities[i], keys[i]).
func lookupFieldVersions(ctx context.Context, q Querier, entities, keys []string) ([]FieldVersion, error) {
	rows, err := q.Query(ctx, `SELECT v.entity, v.key, v.field, v.source, v.commit_time, v.value_hash
		FROM unnest($1::text[], $2::text[]) AS u(e, k) CROSS JOIN LATERAL (`+versionsOf(`u.e`, `u.k`)+`) v`, entities, keys)
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

// Written is what a sink just wrote into one shared field of a target
// table: per row the key's text, the system whose write the value is,
// that write's commit time and the hash (HashCanonical) of the value now
// in the row (parallel slices).
type Written struct {
	Entity string
	Field  string
	Keys   []string
	// Sources, At and Hashes are parallel to Keys.
	Sources []string
	At      []time.Time
	Hashes  []*string
}

// RecordWritten records, in one statement on q (the sink's apply
// transaction), the version of each written value. A recorded version is
// replaced when the value changed or the new version is not older.
func RecordWritten(ctx context.Context, q Querier, w Written) error {
	if _, err := q.Exec(ctx, `
INSERT INTO duplex.field_versions (entity, key, field, source, commit_time, value_hash)
SELECT $1, u.k, $2, u.s, u.at, u.h
FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::text[]) AS u(k, s, at, h)
ON CONFLICT (entity, key, field) DO UPDATE SET source = EXCLUDED.source, commit_time = EXCLUDED.commit_time, value_hash = EXCLUDED.value_hash
WHERE field_versions.value_hash IS DISTINCT FROM EXCLUDED.value_hash OR field_versions.commit_time <= EXCLUDED.commit_time`,
		w.Entity, w.Field, w.Keys, w.Sources, w.At, w.Hashes); err != nil {
		return fmt.Errorf("record versions of %s.%s: %w", w.Entity, w.Field, err)
	}
	return nil
}

// VersionRecorder records, in a source database's duplex schema, the
// version of every local write to a shared field that its capture reads
// from the WAL: what the sink into that same database compares an incoming
// write with. It has its own session, opened on first use (and Ensure
// run on it). Safe for concurrent use (the capture adds, the tracker of
// acknowledgements flushes).
type VersionRecorder struct {
	// Hasher hashes recorded values; it must be the one the sink into
	// this database uses (nil: HashCanonical, for tests).
	Hasher  *FieldHasher
	system  string
	dsn     string
	mapping *transform.Mapping

	mu   sync.Mutex
	conn *pgx.Conn
	// pending holds what Add collected and Flush has not written yet.
	pending recording
}

// NewVersionRecorder returns a recorder for a system; it connects lazily.
func NewVersionRecorder(system, dsn string, m *transform.Mapping) *VersionRecorder {
	return &VersionRecorder{system: system, dsn: dsn, mapping: m}
}

// Close ends the session.
func (r *VersionRecorder) Close(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.close(ctx)
}

func (r *VersionRecorder) close(ctx context.Context) {
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
	r.Add(events)
	return r.Flush(ctx)
}

// Add collects the versions of the shared fields the events carry, for the
// next Flush, and returns how many field versions are pending. A capture
// adds each transaction's and flushes before it confirms the transaction's
// LSN to the slot: one statement for every transaction acknowledged
// meanwhile, rather than one round trip per transaction on the capture's
// path (measured: a seventh of duplex's CPU and most of the database's in
// the bench's small shape). Until then the sink into this database waits
// for the record, as it does for any local write not recorded yet.
func (r *VersionRecorder) Add(events []transform.Event) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := &r.pending
	for i := range events {
		ev := &events[i]
		if ev.Op != transform.OpUpsert {
			continue
		}
		e := r.mapping.Entity(ev.Entity)
		for _, f := range e.SharedFields(r.system) {
			if v, ok := ev.Data[f]; ok {
				w.add(r.Hasher, ev, f, v)
			}
		}
	}
	return len(w.keys)
}

// Flush writes the versions Add collected, in one statement. On an error
// they stay pending, for the next Flush (the capture reads their
// transactions again too, and adds them again: harmless).
func (r *VersionRecorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flush(ctx)
}

func (r *VersionRecorder) flush(ctx context.Context) error {
	if err := r.record(ctx, &r.pending); err != nil {
		// Kept for the next flush: the error may have been returned to
		// the capture's goroutine (Lookup, or many pending) while the
		// tracker goes on confirming; its next flush must write them
		// before it confirms past them.
		return fmt.Errorf("record versions %s: %w", r.system, err)
	}
	r.pending = recording{}
	return nil
}

// recording is what record writes: per field, entity, key, field name,
// commit time and value hash (parallel slices).
type recording struct {
	ents, keys, fields []string
	ats                []time.Time
	hashes             []*string
}

func (w *recording) add(h *FieldHasher, ev *transform.Event, field string, v any) {
	w.ents, w.keys, w.fields, w.ats = append(w.ents, ev.Entity), append(w.keys, ev.Key), append(w.fields, field), append(w.ats, ev.Pos.CommitTime)
	w.hashes = append(w.hashes, h.Hash(v))
}

// record writes w as this system's versions, each replacing a recorded
// version that is not newer. Of two versions of one field with the same
// commit time (two statements of one transaction, an INSERT then an
// UPDATE), the one added last is the row's value and wins.
func (r *VersionRecorder) record(ctx context.Context, w *recording) error {
	if len(w.keys) == 0 {
		return nil
	}
	if err := r.connect(ctx); err != nil {
		return err
	}
	_, err := r.conn.Exec(ctx, `
INSERT INTO duplex.field_versions AS v (entity, key, field, source, commit_time, value_hash)
SELECT DISTINCT ON (u.e, u.k, u.f) u.e, u.k, u.f, $1, u.at, u.h
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) WITH ORDINALITY AS u(e, k, f, at, h, n)
ORDER BY u.e, u.k, u.f, u.at DESC, u.n DESC
ON CONFLICT (entity, key, field) DO UPDATE SET source = EXCLUDED.source, commit_time = EXCLUDED.commit_time, value_hash = EXCLUDED.value_hash
WHERE v.commit_time <= EXCLUDED.commit_time`, r.system, w.ents, w.keys, w.fields, w.ats, w.hashes)
	if err != nil {
		r.close(ctx)
		return err
	}
	return nil
}

// Lookup sets, on copied rows (snapshot, backfill) of this system, the
// recorded version of each shared field whose value is still the one
// recorded, so that a copy carries the age of the write it comes from: a
// database restored from a backup and copied again must not pass its old
// values off as new.
//
// snapshot names the exported snapshot the rows were read in (the initial
// snapshot; "" for a backfill, read live). The versions are then read in
// that same snapshot: the copy is compared with what was recorded when it
// was taken, not with what the sink into this database recorded since.
// Read live, a value the sink overwrote after the snapshot's moment (the
// other flow applies while the snapshot copies) no longer matched the
// record, was taken for a local write never read, and went out with the
// copy's time: it overwrote the newer value in the other system, and its
// version here, silently.
//
// A copied value that is not the one recorded comes from a local write
// this capture never read from the WAL, or it would have recorded it: one
// made before the slot existed, or lost with a slot that was dropped or
// invalidated (the copy is the backfill of `duplex resync`). The copy
// carries it with the copy's time, and Lookup records that version here
// too, unless the record changed since it was read: otherwise the sink
// into this database, which never overwrites a local write the capture
// has not recorded, would wait for a record that never comes, up to
// max_wait, and then dead-letter the other system's write.
//
// A shared field without any recorded version when the rows were read is
// left unrecorded (the sink takes its age from the row's last commit).
// The copy carries that same age when the capture read it with the row
// (normalizing sets it in Event.Versions; capture.Change.RowCommitTime).
// Without it, when a version was recorded since (the sink wrote the row
// after the snapshot), the copy carries that version if it is of the
// copied value, and otherwise one microsecond less, with its source: the
// copy is older than that write and must lose to it wherever it arrives.
func (r *VersionRecorder) Lookup(ctx context.Context, snapshot string, events []transform.Event) error {
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
	r.mu.Lock()
	defer r.mu.Unlock()
	// What streamed local writes added is written first: a copied value
	// compared with an older version would be taken for a write never
	// read, and recorded with the copy's time.
	if err := r.flush(ctx); err != nil {
		return err
	}
	if err := r.connect(ctx); err != nil {
		return fmt.Errorf("look up versions %s: %w", r.system, err)
	}
	then, err := r.lookupAt(ctx, snapshot, ents, keys)
	if err != nil {
		r.close(ctx)
		return fmt.Errorf("look up versions %s: %w", r.system, err)
	}
	now := then
	if snapshot != "" {
		if now, err = lookupFieldVersions(ctx, r.conn, ents, keys); err != nil {
			r.close(ctx)
			return fmt.Errorf("look up versions %s: %w", r.system, err)
		}
	}
	index := func(vs []FieldVersion) map[string]FieldVersion {
		m := make(map[string]FieldVersion, len(vs))
		for _, x := range vs {
			m[x.Entity+"\x00"+x.Key+"\x00"+x.Field] = x
		}
		return m
	}
	known, since := index(then), index(now)
	var unread recording
	var was []FieldVersion // parallel to unread: the record the copy was compared with
	for i := range events {
		ev := &events[i]
		if ev.Op != transform.OpUpsert {
			continue
		}
		for _, f := range r.mapping.Entity(ev.Entity).SharedFields(r.system) {
			v, ok := ev.Data[f]
			if !ok {
				continue
			}
			id := ev.Entity + "\x00" + ev.Key + "\x00" + f
			x, recorded := known[id]
			if !recorded {
				if _, ok := ev.Versions[f]; ok {
					// Never versioned, and as old as its row's last write
					// (the capture read that commit time with the row).
					// Not recorded here: the sink into this database gives
					// the value that same age, and records it before it
					// writes anything else into the row (resolveShared).
					continue
				}
				y, later := since[id]
				if !later {
					continue
				}
				at := y.CommitTime
				if !r.Hasher.Holds(y, v, nil) {
					at = at.Add(-time.Microsecond)
				}
				if ev.Versions == nil {
					ev.Versions = map[string]transform.FieldVersion{}
				}
				ev.Versions[f] = transform.FieldVersion{Source: y.Source, At: at}
				continue
			}
			if !r.Hasher.Holds(x, v, nil) {
				// Changed since recorded, by a write never read: the
				// copy's time stands, here as on the other side.
				delete(ev.Versions, f)
				unread.add(r.Hasher, ev, f, v)
				was = append(was, x)
				continue
			}
			if ev.Versions == nil {
				ev.Versions = map[string]transform.FieldVersion{}
			}
			ev.Versions[f] = transform.FieldVersion{Source: x.Source, At: x.CommitTime}
		}
	}
	if err := r.recordUnread(ctx, &unread, was, snapshot != ""); err != nil {
		return fmt.Errorf("record versions of copied values %s: %w", r.system, err)
	}
	return nil
}

// lookupAt reads the recorded versions of the pairs (ents[i], keys[i]) as
// they were in the exported snapshot (live when snapshot is "").
func (r *VersionRecorder) lookupAt(ctx context.Context, snapshot string, ents, keys []string) ([]FieldVersion, error) {
	if snapshot == "" {
		return lookupFieldVersions(ctx, r.conn, ents, keys)
	}
	// An exported snapshot's name is hex digits and dashes
	// (00000004-00000138-1); it comes from the server, and is checked
	// anyway before it is put into the statement.
	if strings.Trim(snapshot, "0123456789ABCDEFabcdef-") != "" {
		return nil, fmt.Errorf("exported snapshot %q: not a snapshot name", snapshot)
	}
	tx, err := r.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read only
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		return nil, fmt.Errorf("import exported snapshot %s: %w", snapshot, err)
	}
	return lookupFieldVersions(ctx, tx, ents, keys)
}

// recordUnread records w (copied values of writes never read, with the
// copy's time) where the record is still was[i], the one the copy was
// compared with (a version recorded since is newer than the copy).
//
// For a backfill (inSnapshot false) the record must also not be newer
// than the copy, as before 755879c: a backfill reads its rows live and
// looks their versions up later (at the chunk's high watermark), so the
// record it compared with may be the sink's write after the read, which
// the row now holds. Replaced by the copy's stale value, that record no
// longer matched the row, and the sink into this database waited for a
// local write never made until max_wait dead-lettered the other system's
// write. The rows of an initial snapshot were compared with the versions
// of their own snapshot, so there a record newer than the copy's time is
// one that the write never read replaced (between the slot's creation
// and its consistent point), and it is replaced.
func (r *VersionRecorder) recordUnread(ctx context.Context, w *recording, was []FieldVersion, inSnapshot bool) error {
	if len(w.keys) == 0 {
		return nil
	}
	wasAt := make([]time.Time, len(was))
	wasHash := make([]*string, len(was))
	for i, x := range was {
		wasAt[i], wasHash[i] = x.CommitTime, x.ValueHash
	}
	_, err := r.conn.Exec(ctx, `
UPDATE duplex.field_versions AS v SET source = $1, commit_time = u.at, value_hash = u.h
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::timestamptz[], $8::text[]) AS u(e, k, f, at, h, was_at, was_h)
WHERE v.entity = u.e AND v.key = u.k AND v.field = u.f AND v.commit_time = u.was_at AND v.value_hash IS NOT DISTINCT FROM u.was_h
	AND ($9 OR v.commit_time <= u.at)`,
		r.system, w.ents, w.keys, w.fields, w.ats, w.hashes, wasAt, wasHash, inSnapshot)
	if err != nil {
		r.close(ctx)
		return err
	}
	return nil
}

func samePtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}
