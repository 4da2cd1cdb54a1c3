package postgres

// Unchanged TOASTed values: PostgreSQL does not send a value stored out of
// line that an UPDATE left as it was (pgoutput's 'u'). A change still has
// to say what such a column holds, for the target that lacks the row (its
// insert was dead-lettered, it was restored from an older backup) and must
// create it from this change. The capture finds the value here:
//
//  1. from the old row, when the change carries it (REPLICA IDENTITY FULL
//     logs the whole old row, out-of-line values included);
//  2. otherwise from the source: the row read again by its replica
//     identity key (the mapping's key columns under FULL), with one query
//     per table per chunk, after the transaction committed;
//  3. otherwise (no key, the row gone, the read refused) the value stays
//     unknown, and the sink refuses to create a row from the change (a
//     dead letter naming the column), never writing NULL.
//
// Why reading the current row is safe although it is not the change's
// snapshot: the row read is the row at or after the change. If a later
// transaction changed the column, that change was committed after this
// one and comes after it in the slot, with its value (a changed value is
// always sent), so the target ends with the source's value. If the row is
// gone or has another key, the later delete or key change comes the same
// way, and the value stays unknown meanwhile. The value is only ever used
// to create a row the target lacks, never written over an existing row:
// an existing row keeps what it holds, as PostgreSQL's own apply does.
// Transactions applied by duplex itself (Applied) are not read for: their
// updates are not published.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duplex-cdc/duplex/capture"
)

// pendingUnchanged is a change of the chunk being built whose unchanged
// values are still unknown.
type pendingUnchanged struct {
	index int // in ss.chunk.Changes
	rel   *pglogrepl.RelationMessage
	// key holds the text of each key column (keyColumns) as sent.
	key []string
}

// fillFromOld takes unchanged values from the old row when it has them;
// it reports whether any stays unknown.
func fillFromOld(ch *capture.Change) bool {
	unknown := false
	for col, v := range ch.New {
		u, ok := v.(capture.Unchanged)
		if !ok || u.Known {
			continue
		}
		if old, has := ch.Old[col]; has {
			if _, oldU := old.(capture.Unchanged); !oldU {
				ch.New[col] = capture.Unchanged{Known: true, Value: old}
				continue
			}
		}
		unknown = true
	}
	return unknown
}

// keyColumns returns the indexes of the columns a row of rel is read back
// by: the replica identity's (pgoutput flags them), or under REPLICA
// IDENTITY FULL (every column flagged) the mapping's key columns. Nil
// when there is none.
func (ss *session) keyColumns(rel *pglogrepl.RelationMessage) []int {
	var out []int
	if rel.ReplicaIdentity == 'f' {
		for _, key := range ss.src.cfg.Keys[rel.Namespace+"."+rel.RelationName] {
			i := slices.IndexFunc(rel.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == key })
			if i < 0 {
				return nil
			}
			out = append(out, i)
		}
		return out
	}
	for i, c := range rel.Columns {
		if c.Flags&1 != 0 {
			out = append(out, i)
		}
	}
	return out
}

// noteUnchanged records that the update about to be added to the chunk
// has unchanged values that are unknown, for resolveUnchanged.
func (ss *session) noteUnchanged(rel *pglogrepl.RelationMessage, newTuple *pglogrepl.TupleData) {
	if ss.tx.Applied || ss.skipping {
		return
	}
	idx := ss.keyColumns(rel)
	if len(idx) == 0 {
		return // unknown: nothing to read the row by
	}
	key := make([]string, len(idx))
	for i, ci := range idx {
		if ci >= len(newTuple.Columns) || newTuple.Columns[ci].DataType != 't' {
			return // the key itself was not sent
		}
		key[i] = string(newTuple.Columns[ci].Data)
	}
	n := 0
	if ss.chunk != nil {
		n = len(ss.chunk.Changes)
	}
	ss.unchanged = append(ss.unchanged, pendingUnchanged{index: n, rel: rel, key: key})
}

// resolveUnchanged reads from the source the unknown unchanged values of
// the chunk's changes noted by noteUnchanged, one query per table, and
// forgets the notes. A row not found leaves its values unknown. A refused
// read (the table dropped since, a permission) is logged and leaves them
// unknown too, so that the capture never loops on it; only a lost
// connection is an error (the session starts again).
func (ss *session) resolveUnchanged(ctx context.Context, c *capture.Chunk) error {
	pend := ss.unchanged
	ss.unchanged = nil
	if len(pend) == 0 {
		return nil
	}
	byRel := map[uint32][]pendingUnchanged{}
	var order []uint32
	for _, p := range pend {
		if byRel[p.rel.RelationID] == nil {
			order = append(order, p.rel.RelationID)
		}
		byRel[p.rel.RelationID] = append(byRel[p.rel.RelationID], p)
	}
	for _, id := range order {
		ps := byRel[id]
		if err := ss.readUnchanged(ctx, c, ps); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				return err
			}
			ss.src.log.Warn("unchanged TOAST values could not be read from the source; a target that lacks these rows will not create them from these changes",
				slog.String("table", ps[0].rel.Namespace+"."+ps[0].rel.RelationName), slog.Int("rows", len(ps)), slog.Any("error", err))
		}
	}
	return nil
}

func (ss *session) readUnchanged(ctx context.Context, c *capture.Chunk, ps []pendingUnchanged) error {
	rel := ps[0].rel
	q, err := ss.decodeConn(ctx)
	if err != nil {
		return err
	}
	keyIdx := ss.keyColumns(rel)
	// The columns to read: every column some change left unknown.
	var cols []string
	seen := map[string]bool{}
	for _, p := range ps {
		for col, v := range c.Changes[p.index].New {
			if u, ok := v.(capture.Unchanged); ok && !u.Known && !seen[col] {
				seen[col] = true
				cols = append(cols, col)
			}
		}
	}
	if len(cols) == 0 {
		return nil
	}
	types, err := ss.typeNames(ctx, q, rel, keyIdx)
	if err != nil {
		return err
	}
	var sel, alias, on []string
	args := make([]any, len(keyIdx))
	for i, ci := range keyIdx {
		alias = append(alias, fmt.Sprintf("k%d", i))
		on = append(on, fmt.Sprintf("t.%s = u.k%d::%s", pgx.Identifier{rel.Columns[ci].Name}.Sanitize(), i, types[i]))
		keys := make([]string, len(ps))
		for j, p := range ps {
			keys[j] = p.key[i]
		}
		args[i] = keys
	}
	for _, col := range cols {
		sel = append(sel, "t."+pgx.Identifier{col}.Sanitize())
	}
	var unnest []string
	for i := range keyIdx {
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
	}
	sql := fmt.Sprintf("SELECT u.n, %s FROM unnest(%s) WITH ORDINALITY AS u(%s, n) JOIN %s AS t ON %s",
		strings.Join(sel, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "),
		pgx.Identifier{rel.Namespace, rel.RelationName}.Sanitize(), strings.Join(on, " AND "))
	rows, err := q.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return fmt.Errorf("capture %s: read unchanged values of %s.%s: %w", ss.src.cfg.System, rel.Namespace, rel.RelationName, err)
	}
	defer rows.Close()
	for rows.Next() {
		raw := rows.RawValues()
		fds := rows.FieldDescriptions()
		n, err := strconv.Atoi(string(raw[0]))
		if err != nil || n < 1 || n > len(ps) {
			return fmt.Errorf("capture %s: read unchanged values of %s.%s: bad row number %q", ss.src.cfg.System, rel.Namespace, rel.RelationName, raw[0])
		}
		ch := &c.Changes[ps[n-1].index]
		for i, col := range cols {
			u, ok := ch.New[col].(capture.Unchanged)
			if !ok || u.Known {
				continue
			}
			var v any
			if raw[i+1] != nil {
				if v, err = ss.dec.Decode(fds[i+1].DataTypeOID, raw[i+1]); err != nil {
					return fmt.Errorf("capture %s: %s.%s column %s: %w", ss.src.cfg.System, rel.Namespace, rel.RelationName, col, err)
				}
			}
			ch.New[col] = capture.Unchanged{Known: true, Value: v}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("capture %s: read unchanged values of %s.%s: %w", ss.src.cfg.System, rel.Namespace, rel.RelationName, err)
	}
	return nil
}

// typeNames returns the SQL names of the types of rel's columns idx (what
// a key's text is cast to), cached for the session by type OID.
func (ss *session) typeNames(ctx context.Context, q *pgx.Conn, rel *pglogrepl.RelationMessage, idx []int) ([]string, error) {
	if ss.typeName == nil {
		ss.typeName = map[uint32]string{}
	}
	out := make([]string, len(idx))
	for i, ci := range idx {
		oid := rel.Columns[ci].DataType
		name, ok := ss.typeName[oid]
		if !ok {
			if err := q.QueryRow(ctx, `SELECT $1::oid::regtype::text`, oid).Scan(&name); err != nil {
				return nil, fmt.Errorf("capture %s: type of %s.%s column %s: %w", ss.src.cfg.System, rel.Namespace, rel.RelationName, rel.Columns[ci].Name, err)
			}
			ss.typeName[oid] = name
		}
		out[i] = name
	}
	return out, nil
}
