package postgres

import (
	"context"
	"fmt"
	"slices"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/jackc/pglogrepl"
)

func (ss *session) handle(ctx context.Context, data []byte) error {
	s := ss.src
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("capture %s: parse pgoutput message: %w", s.cfg.System, err)
	}
	switch msg := m.(type) {
	case *pglogrepl.RelationMessage:
		return ss.routeRelation(ctx, msg)
	case *pglogrepl.BeginMessage:
		ss.inTx, ss.skipping = true, false
		ss.tx = capture.TxInfo{System: s.cfg.System, CommitLSN: capture.LSN(msg.FinalLSN), CommitTime: msg.CommitTime.UTC(), Xid: msg.Xid}
		ss.nChunks, ss.nChanges = 0, 0
		ss.chunk, ss.unchanged = nil, nil
	case *pglogrepl.LogicalDecodingMessage:
		ss.backfillMessage(msg)
	case *pglogrepl.OriginMessage:
		ss.tx.Origin = msg.Name
		ss.tx.Applied = slices.Contains(s.cfg.DuplexOrigins, msg.Name)
	case *pglogrepl.InsertMessage:
		row, rel, err := ss.tuple(msg.RelationID, msg.Tuple)
		if err != nil {
			return err
		}
		return ss.add(ctx, capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Insert, New: row, Partition: ss.leaves[msg.RelationID]})
	case *pglogrepl.UpdateMessage:
		row, rel, err := ss.tuple(msg.RelationID, msg.NewTuple)
		if err != nil {
			return err
		}
		ch := capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Update, New: row, Partition: ss.leaves[msg.RelationID]}
		if msg.OldTuple != nil {
			if ch.Old, _, err = ss.tuple(msg.RelationID, msg.OldTuple); err != nil {
				return err
			}
		}
		if fillFromOld(&ch) {
			ss.noteUnchanged(rel, msg.NewTuple)
		}
		return ss.add(ctx, ch)
	case *pglogrepl.DeleteMessage:
		row, rel, err := ss.tuple(msg.RelationID, msg.OldTuple)
		if err != nil {
			return err
		}
		return ss.add(ctx, capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Delete, Old: row, Partition: ss.leaves[msg.RelationID]})
	case *pglogrepl.TruncateMessage:
		ch, err := ss.truncate(ctx, msg)
		if err != nil {
			return err
		}
		return ss.add(ctx, ch)
	case *pglogrepl.CommitMessage:
		ss.tx.EndLSN = capture.LSN(msg.TransactionEndLSN)
		ss.inTx = false
		if ss.bf != nil && ss.bf.emit {
			if err := ss.backfillEmit(ctx, ss.tx.EndLSN); err != nil {
				return err
			}
		}
		if ss.skipping || ss.nChanges == 0 {
			s.mu.Lock()
			s.idleLSN = max(s.idleLSN, ss.tx.EndLSN)
			s.mu.Unlock()
			ss.chunk = nil
			return nil
		}
		c := ss.chunk
		if c == nil {
			c = &capture.Chunk{Index: ss.nChunks, First: ss.nChanges}
		}
		c.Tx, c.Last = ss.tx, true
		ss.chunk = nil
		// Handed on only once visible here (visible.go): what comes
		// back from the other system must find it. Not a transaction of
		// duplex's own sink: what comes back to this database about its
		// rows is applied by that same session, whose commit returned
		// (the rows visible) before it applies anything else.
		if !ss.tx.Applied {
			if err := ss.waitVisible(ctx); err != nil {
				return err
			}
		}
		if err := ss.resolveUnchanged(ctx, c); err != nil {
			return err
		}
		s.mu.Lock()
		s.lastEmitEnd = ss.tx.EndLSN
		s.mu.Unlock()
		if err := ss.h.Chunk(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func (ss *session) add(ctx context.Context, ch capture.Change) error {
	if ss.skipping {
		return nil
	}
	ss.backfillSaw(&ch)
	if ss.chunk == nil {
		ss.chunk = &capture.Chunk{Index: ss.nChunks, First: ss.nChanges, Changes: make([]capture.Change, 0, 16)}
	}
	ss.chunk.Changes = append(ss.chunk.Changes, ch)
	ss.nChanges++
	if len(ss.chunk.Changes) < ss.src.cfg.ChunkSize {
		return nil
	}
	c := ss.chunk
	c.Tx = ss.tx
	ss.chunk = nil
	ss.nChunks++
	if err := ss.resolveUnchanged(ctx, c); err != nil {
		return err
	}
	s := ss.src
	s.mu.Lock()
	s.lastEmitEnd = max(s.lastEmitEnd, ss.tx.CommitLSN+1)
	s.mu.Unlock()
	return ss.h.Chunk(ctx, c)
}

func (ss *session) tuple(relID uint32, td *pglogrepl.TupleData) (capture.Row, *pglogrepl.RelationMessage, error) {
	s := ss.src
	rel, ok := ss.relations[relID]
	if !ok {
		return nil, nil, fmt.Errorf("capture %s: change for unknown relation %d", s.cfg.System, relID)
	}
	if td == nil {
		return nil, rel, nil
	}
	if len(td.Columns) > len(rel.Columns) {
		return nil, nil, fmt.Errorf("capture %s: %s.%s: tuple has %d columns, relation %d", s.cfg.System, rel.Namespace, rel.RelationName, len(td.Columns), len(rel.Columns))
	}
	row := make(capture.Row, len(td.Columns))
	for i, col := range td.Columns {
		rc := rel.Columns[i]
		switch col.DataType {
		case 'n':
			row[rc.Name] = nil
		case 'u':
			row[rc.Name] = capture.Unchanged{}
		case 't':
			v, err := ss.dec.Decode(rc.DataType, col.Data)
			if err != nil {
				return nil, nil, fmt.Errorf("capture %s: %s.%s column %s: %w", s.cfg.System, rel.Namespace, rel.RelationName, rc.Name, err)
			}
			row[rc.Name] = v
		default:
			return nil, nil, fmt.Errorf("capture %s: %s.%s column %s: unsupported tuple format %q", s.cfg.System, rel.Namespace, rel.RelationName, rc.Name, col.DataType)
		}
	}
	return row, rel, nil
}
