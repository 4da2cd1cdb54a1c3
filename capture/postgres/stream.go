package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// session is the state of one replication connection.
type session struct {
	src       *Source
	conn      *pgconn.PgConn
	h         capture.Handler
	dec       *Decoder
	relations map[uint32]*pglogrepl.RelationMessage
	// leaves names the partitions ("schema.table") whose relations were
	// renamed to their mapped table (partition.go), by relation OID.
	leaves map[uint32]string

	inTx     bool
	skipping bool
	tx       capture.TxInfo
	chunk    *capture.Chunk
	nChunks  int
	nChanges int
	// unchanged: changes of chunk with unchanged TOASTed values still to
	// read from the source (unchanged.go); typeName caches type names.
	unchanged []pendingUnchanged
	typeName  map[uint32]string

	// Online backfill (backfill.go): the one being performed, when the
	// requests were last looked for, and a query connection.
	bf       *backfillRun
	bfPolled time.Time
	q        *pgx.Conn
	// visibleXid is the transaction waitVisible last found visible to
	// other sessions, seen the last snapshot it read (visible.go).
	visibleXid uint32
	seen       *txSnapshot
}

// Stream runs one replication session until ctx ends or the connection
// fails. When ctx ends it drains the handler and sends a last status update
// before it returns ctx's error.
func (s *Source) Stream(ctx context.Context, h capture.Handler) error {
	if err := s.Ensure(ctx); err != nil {
		return err
	}
	if s.snap != nil {
		err := s.runSnapshot(ctx, h)
		s.snap.close()
		s.snap = nil
		if err != nil {
			return err
		}
	}
	cfg, err := s.replicationConfig()
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("capture %s: connect for replication: %w", s.cfg.System, redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	args := []string{"proto_version '1'", "publication_names " + publicationNamesOption(s.cfg.Publication), "messages 'true'"}
	if err := pglogrepl.StartReplication(ctx, conn, quoteIdent(s.cfg.Slot), 0, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("capture %s: start replication on slot %s: %w", s.cfg.System, s.cfg.Slot, err)
	}
	s.log.Info("replication started", slog.String("confirmed", s.Durable().String()))
	ss := &session{src: s, conn: conn, h: h, dec: NewDecoder(), relations: map[uint32]*pglogrepl.RelationMessage{}, leaves: map[uint32]string{}}
	defer func() {
		if ss.q != nil {
			_ = ss.q.Close(context.WithoutCancel(ctx))
		}
	}()
	err = ss.loop(ctx)
	if ctx.Err() != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := h.Drain(dctx); err != nil {
			s.log.Warn("stopping before everything captured was durable; the slot re-sends the rest", slog.Any("error", err))
		}
		cancel()
		if serr := ss.sendStatus(context.WithoutCancel(ctx)); serr != nil {
			s.log.Warn("last status update", slog.Any("error", serr))
		}
		return ctx.Err()
	}
	return err
}

func (ss *session) loop(ctx context.Context) error {
	s := ss.src
	next := time.Now().Add(s.cfg.StatusInterval)
	for {
		if err := ss.backfillStep(ctx); err != nil {
			return err
		}
		if !time.Now().Before(next) {
			if err := ss.sendStatus(ctx); err != nil {
				return err
			}
			next = time.Now().Add(s.cfg.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, next)
		raw, err := ss.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("capture %s: receive: %w", s.cfg.System, err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("capture %s: server: %w", s.cfg.System, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("capture %s: parse keepalive: %w", s.cfg.System, err)
				}
				if !ss.inTx {
					s.mu.Lock()
					s.idleLSN = max(s.idleLSN, capture.LSN(ka.ServerWALEnd))
					s.mu.Unlock()
				}
				if ka.ReplyRequested {
					next = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("capture %s: parse xlogdata: %w", s.cfg.System, err)
				}
				s.mu.Lock()
				s.receivedLSN = max(s.receivedLSN, capture.LSN(xld.WALStart)+capture.LSN(len(xld.WALData)))
				s.lastActivity = time.Now()
				s.mu.Unlock()
				if err := ss.handle(ctx, xld.WALData); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("capture %s: unexpected message %T", s.cfg.System, raw)
		}
	}
}

// flushLSN is what may be reported to the server as flushed: the durable
// position, or, when nothing is in flight, the position the server last
// reported as sent.
func (s *Source) flushLSN(inTx bool) capture.LSN {
	d := s.Durable()
	s.mu.Lock()
	pos := d
	if !inTx && d >= s.lastEmitEnd && s.idleLSN > d {
		pos = s.idleLSN
	}
	s.mu.Unlock()
	if r := capture.LSN(s.retain.Load()); r > 0 && pos >= r {
		pos = r - 1
	}
	return pos
}

func (ss *session) sendStatus(ctx context.Context) error {
	s := ss.src
	safe, err := ss.recordConfirmed(ctx, s.flushLSN(ss.inTx))
	if err != nil {
		return err
	}
	pos := pglogrepl.LSN(safe)
	err = pglogrepl.SendStandbyStatusUpdate(ctx, ss.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ClientTime: time.Now()})
	if err != nil {
		return fmt.Errorf("capture %s: send status: %w", s.cfg.System, err)
	}
	s.mu.Lock()
	s.lastStatus = capture.LSN(pos)
	s.mu.Unlock()
	return nil
}
