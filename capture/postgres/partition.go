package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
)

// Partitioned tables.
//
// A mapped table may be partitioned. Unless the publication publishes via
// the partition root (publish_via_partition_root, off by default and in
// the publications duplex creates), pgoutput sends the changes of each
// leaf partition under the leaf's own Relation message; with it, under
// the root's. Either way the changes belong to the mapped table: a
// Relation message naming a table that is not mapped is resolved against
// the catalog when it arrives (pg_partition_ancestors), so a partition
// created while streaming is routed without a restart, and renamed to its
// nearest mapped ancestor. A relation that resolves to no mapped table is
// passed on as it is; the pipeline reports its changes (log, metric).
//
// An UPDATE that moves a row to another partition arrives as a DELETE and
// an INSERT of the same key, under either setting (PostgreSQL 15's
// pgoutput); both now name the mapped table. A TRUNCATE of some of a
// table's partitions is told from one of all of them by the table's leaf
// partitions at that point (Change.Partitions). With
// publish_via_partition_root, PostgreSQL does not publish a TRUNCATE of a
// single partition at all (pgoutput skips it); Ensure warns of that.

// routeRelation records a Relation message, renamed to the mapped table
// it is a partition of, if it is one.
func (ss *session) routeRelation(ctx context.Context, msg *pglogrepl.RelationMessage) error {
	s := ss.src
	delete(ss.leaves, msg.RelationID)
	name := msg.Namespace + "." + msg.RelationName
	if slices.Contains(s.cfg.Tables, name) {
		ss.relations[msg.RelationID] = msg
		return nil
	}
	root, err := ss.mappedAncestor(ctx, msg.RelationID)
	if err != nil {
		return fmt.Errorf("capture %s: relation %s (oid %d): %w", s.cfg.System, name, msg.RelationID, err)
	}
	if root == "" {
		ss.relations[msg.RelationID] = msg
		return nil
	}
	routed := *msg
	routed.Namespace, routed.RelationName, _ = strings.Cut(root, ".")
	ss.relations[msg.RelationID] = &routed
	ss.leaves[msg.RelationID] = name
	s.log.Debug("changes of a partition go to its mapped table", slog.String("partition", name), slog.String("table", root))
	return nil
}

// mappedAncestor returns the nearest partitioned table of which relid is
// a partition (at any depth) that is a mapped table, as "schema.table", or
// "" when there is none (relid is no partition of a mapped table, or no
// longer exists).
func (ss *session) mappedAncestor(ctx context.Context, relid uint32) (string, error) {
	q, err := ss.decodeConn(ctx)
	if err != nil {
		return "", err
	}
	// pg_partition_ancestors lists the relation itself first, then its
	// parent, up to the root; nothing for a relation that is no partition
	// or does not exist.
	rows, err := q.Query(ctx, `SELECT n.nspname || '.' || c.relname
		FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, i)
		JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		ORDER BY a.i`, relid)
	if err != nil {
		return "", fmt.Errorf("read partition ancestors: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("read partition ancestors: %w", err)
	}
	for _, n := range names {
		if slices.Contains(ss.src.cfg.Tables, n) {
			return n, nil
		}
	}
	return "", nil
}

// truncate turns a Truncate message into one change naming every
// truncated mapped table once; partitions name their mapped table, and a
// table only some of whose partitions were truncated is listed in
// Partitions with them.
func (ss *session) truncate(ctx context.Context, msg *pglogrepl.TruncateMessage) (capture.Change, error) {
	s := ss.src
	ch := capture.Change{Op: capture.Truncate}
	parts := map[string][]uint32{}
	whole := map[string]bool{}
	for _, id := range msg.RelationIDs {
		rel, ok := ss.relations[id]
		if !ok {
			return ch, fmt.Errorf("capture %s: truncate of unknown relation %d", s.cfg.System, id)
		}
		qt := rel.Namespace + "." + rel.RelationName
		if !slices.Contains(ch.Tables, qt) {
			ch.Tables = append(ch.Tables, qt)
		}
		if ch.Schema == "" {
			ch.Schema, ch.Table = rel.Namespace, rel.RelationName
		}
		if _, leaf := ss.leaves[id]; leaf {
			parts[qt] = append(parts[qt], id)
		} else {
			whole[qt] = true
		}
	}
	for _, qt := range ch.Tables {
		ids := parts[qt]
		if len(ids) == 0 || whole[qt] {
			continue
		}
		leaves, err := ss.leafPartitions(ctx, qt)
		if err != nil {
			return ch, fmt.Errorf("capture %s: truncate of partitions of %s: %w", s.cfg.System, qt, err)
		}
		if !slices.ContainsFunc(leaves, func(l uint32) bool { return !slices.Contains(ids, l) }) {
			continue
		}
		if ch.Partitions == nil {
			ch.Partitions = map[string][]string{}
		}
		for _, id := range ids {
			ch.Partitions[qt] = append(ch.Partitions[qt], ss.leaves[id])
		}
	}
	return ch, nil
}

// leafPartitions returns the OIDs of the leaf partitions of a partitioned
// table as the catalog has them now.
func (ss *session) leafPartitions(ctx context.Context, table string) ([]uint32, error) {
	q, err := ss.decodeConn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT relid::oid FROM pg_partition_tree($1::regclass) WHERE isleaf`, quoteQualified(table))
	if err != nil {
		return nil, fmt.Errorf("read partitions: %w", err)
	}
	oids, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		return nil, fmt.Errorf("read partitions: %w", err)
	}
	return oids, nil
}
