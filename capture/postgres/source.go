package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/duplex-cdc/duplex/capture"
)

// Config configures a Source.
type Config struct {
	// System names the source database ("crm"); it is stamped on every
	// transaction.
	System string
	// DSN is a libpq connection string or URL of a role with REPLICATION
	// (and CREATE on the database to create the publication).
	DSN string
	// Slot and Publication are created when absent.
	Slot        string
	Publication string
	// Tables are the "schema.table" names to publish.
	Tables []string
	// DuplexOrigins are the replication origins of duplex's own sinks into
	// this database. Transactions written under them are marked Applied,
	// so that the applied changes never echo back (only values this
	// database generated for them, such as a new key, go on).
	DuplexOrigins []string
	// ChunkSize is the number of changes per chunk (default 500).
	ChunkSize int
	// Snapshot is SnapshotInitial (copy the existing rows of every table
	// when the slot is created) or SnapshotNever.
	Snapshot string
	// Keys names the key column of each table, for the snapshot's keyset
	// pagination ("schema.table" -> column).
	Keys map[string]string
	// SnapshotChunk is the rows per snapshot chunk (default 500).
	SnapshotChunk int
	// StatusInterval is how often a standby status update is sent
	// (default 1s).
	StatusInterval time.Duration
	Logger         *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.System == "" {
		errs = append(errs, errors.New("capture: system is empty"))
	}
	if c.DSN == "" {
		errs = append(errs, fmt.Errorf("capture %s: dsn is empty", c.System))
	}
	if c.Slot == "" || c.Publication == "" {
		errs = append(errs, fmt.Errorf("capture %s: slot and publication must be named", c.System))
	}
	if len(c.Tables) == 0 {
		errs = append(errs, fmt.Errorf("capture %s: no tables to publish", c.System))
	}
	return errors.Join(errs...)
}

// Source reads one database's slot. Stream may be called again after it
// returns; Confirm may be called from any goroutine.
type Source struct {
	cfg Config
	log *slog.Logger

	durable atomic.Uint64 // highest end LSN confirmed durable downstream
	retain  atomic.Uint64 // when set, the slot is not confirmed to this LSN or beyond

	mu           sync.Mutex
	lastEmitEnd  capture.LSN // end LSN of the last transaction handed on
	idleLSN      capture.LSN // a position safe to confirm when nothing is in flight
	receivedLSN  capture.LSN
	lastStatus   capture.LSN
	lastActivity time.Time

	snap     *pendingSnapshot
	progress SnapshotProgress

	// afterBackfillRead, set by tests, runs between the read of a
	// backfill chunk and its high watermark.
	afterBackfillRead func(id int64, chunk int)
}

// New returns a Source for the configuration.
func New(cfg Config) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = 500
	}
	if cfg.SnapshotChunk <= 0 {
		cfg.SnapshotChunk = 500
	}
	if cfg.Snapshot == "" {
		cfg.Snapshot = SnapshotInitial
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: cfg.Logger.With(slog.String("source", cfg.System), slog.String("slot", cfg.Slot))}, nil
}

// System is the configured system name.
func (s *Source) System() string { return s.cfg.System }

// Confirm records that every transaction ending at or before lsn is
// durable downstream; the slot may be advanced that far.
func (s *Source) Confirm(lsn capture.LSN) {
	for {
		cur := s.durable.Load()
		if uint64(lsn) <= cur || s.durable.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// Retain keeps the slot's confirmed position below lsn (0: no limit), so
// that the changes from lsn on are read again by the next session: the
// changes of an entity held because its table no longer fits the mapping.
func (s *Source) Retain(lsn capture.LSN) { s.retain.Store(uint64(lsn)) }

// Durable returns the highest LSN confirmed durable.
func (s *Source) Durable() capture.LSN { return capture.LSN(s.durable.Load()) }

// Ensure creates the publication and slot if absent, and adds missing
// tables to the publication.
func (s *Source) Ensure(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.DSN)
	if err != nil {
		return fmt.Errorf("capture %s: connect: %w", s.cfg.System, redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, s.cfg.Publication)
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, s.cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("capture %s: read publication %s: %w", s.cfg.System, s.cfg.Publication, err)
	}
	var missing []string
	for _, t := range s.cfg.Tables {
		if !slices.Contains(have, t) {
			missing = append(missing, quoteQualified(t))
		}
	}
	switch {
	case !exists:
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgx.Identifier{s.cfg.Publication}.Sanitize(), strings.Join(missing, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("capture %s: create publication %s: %w", s.cfg.System, s.cfg.Publication, err)
		}
		s.log.Info("created publication", slog.String("publication", s.cfg.Publication), slog.Any("tables", s.cfg.Tables))
	case len(missing) > 0:
		sql := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pgx.Identifier{s.cfg.Publication}.Sanitize(), strings.Join(missing, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("capture %s: add tables to publication %s: %w", s.cfg.System, s.cfg.Publication, err)
		}
		s.log.Info("added tables to publication", slog.String("publication", s.cfg.Publication), slog.Any("tables", missing))
	}
	var slotExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, s.cfg.Slot).Scan(&slotExists); err != nil {
		return fmt.Errorf("capture %s: read slot %s: %w", s.cfg.System, s.cfg.Slot, err)
	}
	if slotExists && s.cfg.Snapshot == SnapshotInitial && s.snap == nil {
		done, err := snapshotDone(ctx, conn, s.cfg.Slot)
		if err != nil {
			return fmt.Errorf("capture %s: %w", s.cfg.System, err)
		}
		if !done {
			// The initial snapshot was interrupted: its exported snapshot is
			// gone with the session that made it, so it starts over from a
			// new slot. What was already copied is applied again, harmlessly.
			s.log.Warn("initial snapshot did not complete; dropping the slot and starting it again")
			if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.cfg.Slot); err != nil {
				return fmt.Errorf("capture %s: drop slot %s of an interrupted snapshot: %w", s.cfg.System, s.cfg.Slot, err)
			}
			slotExists = false
		}
	}
	if !slotExists {
		if s.cfg.Snapshot == SnapshotInitial {
			// The snapshot's rows count as written just before the slot
			// existed, by the server's clock, so that every change after
			// the consistent point is newer than them.
			var before time.Time
			if err := conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&before); err != nil {
				return fmt.Errorf("capture %s: read server clock: %w", s.cfg.System, err)
			}
			return s.createWithSnapshot(ctx, before)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s.cfg.Slot); err != nil {
			return fmt.Errorf("capture %s: create slot %s: %w", s.cfg.System, s.cfg.Slot, err)
		}
		s.log.Info("created replication slot")
	}
	return nil
}

// replicationConfig is the connection configuration of a replication
// session.
func (s *Source) replicationConfig() (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("capture %s: parse dsn: %w", s.cfg.System, redact(err))
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "duplex-" + s.cfg.System
	cfg.RuntimeParams["DateStyle"] = "ISO, YMD"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["IntervalStyle"] = "iso_8601"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	return cfg, nil
}

// session is the state of one replication connection.
type session struct {
	src       *Source
	conn      *pgconn.PgConn
	h         capture.Handler
	dec       *Decoder
	relations map[uint32]*pglogrepl.RelationMessage

	inTx     bool
	skipping bool
	tx       capture.TxInfo
	chunk    *capture.Chunk
	nChunks  int
	nChanges int

	// Online backfill (backfill.go): the one being performed, when the
	// requests were last looked for, and a query connection.
	bf       *backfillRun
	bfPolled time.Time
	q        *pgx.Conn
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
	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", strings.ReplaceAll(s.cfg.Publication, "'", "''")), "messages 'true'"}
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("capture %s: start replication on slot %s: %w", s.cfg.System, s.cfg.Slot, err)
	}
	s.log.Info("replication started", slog.String("confirmed", s.Durable().String()))
	ss := &session{src: s, conn: conn, h: h, dec: NewDecoder(), relations: map[uint32]*pglogrepl.RelationMessage{}}
	defer func() {
		if ss.q != nil {
			_ = ss.q.Close(context.WithoutCancel(ctx))
		}
	}()
	err = ss.loop(ctx)
	if ctx.Err() != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		h.Drain(dctx)
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
	pos := pglogrepl.LSN(s.flushLSN(ss.inTx))
	err := pglogrepl.SendStandbyStatusUpdate(ctx, ss.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ClientTime: time.Now()})
	if err != nil {
		return fmt.Errorf("capture %s: send status: %w", s.cfg.System, err)
	}
	s.mu.Lock()
	s.lastStatus = capture.LSN(pos)
	s.mu.Unlock()
	return nil
}

func (ss *session) handle(ctx context.Context, data []byte) error {
	s := ss.src
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("capture %s: parse pgoutput message: %w", s.cfg.System, err)
	}
	switch msg := m.(type) {
	case *pglogrepl.RelationMessage:
		ss.relations[msg.RelationID] = msg
	case *pglogrepl.BeginMessage:
		ss.inTx, ss.skipping = true, false
		ss.tx = capture.TxInfo{System: s.cfg.System, CommitLSN: capture.LSN(msg.FinalLSN), CommitTime: msg.CommitTime.UTC(), Xid: msg.Xid}
		ss.nChunks, ss.nChanges = 0, 0
		ss.chunk = nil
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
		return ss.add(ctx, capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Insert, New: row})
	case *pglogrepl.UpdateMessage:
		row, rel, err := ss.tuple(msg.RelationID, msg.NewTuple)
		if err != nil {
			return err
		}
		ch := capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Update, New: row}
		if msg.OldTuple != nil {
			if ch.Old, _, err = ss.tuple(msg.RelationID, msg.OldTuple); err != nil {
				return err
			}
		}
		return ss.add(ctx, ch)
	case *pglogrepl.DeleteMessage:
		row, rel, err := ss.tuple(msg.RelationID, msg.OldTuple)
		if err != nil {
			return err
		}
		return ss.add(ctx, capture.Change{Schema: rel.Namespace, Table: rel.RelationName, Op: capture.Delete, Old: row})
	case *pglogrepl.TruncateMessage:
		ch := capture.Change{Op: capture.Truncate}
		for _, id := range msg.RelationIDs {
			rel, ok := ss.relations[id]
			if !ok {
				return fmt.Errorf("capture %s: truncate of unknown relation %d", s.cfg.System, id)
			}
			ch.Tables = append(ch.Tables, rel.Namespace+"."+rel.RelationName)
			if ch.Schema == "" {
				ch.Schema, ch.Table = rel.Namespace, rel.RelationName
			}
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

// Stats is a snapshot of the source's positions.
type Stats struct {
	Received     capture.LSN
	Durable      capture.LSN
	Reported     capture.LSN
	LastActivity time.Time
}

// Stats returns the current positions.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Received: s.receivedLSN, Durable: s.Durable(), Reported: s.lastStatus, LastActivity: s.lastActivity}
}

func quoteQualified(t string) string {
	if i := strings.IndexByte(t, '.'); i >= 0 {
		return pgx.Identifier{t[:i], t[i+1:]}.Sanitize()
	}
	return pgx.Identifier{t}.Sanitize()
}

// redact removes a password from a connection error.
func redact(err error) error {
	var pe *pgconn.ConnectError
	if errors.As(err, &pe) && pe.Config != nil && pe.Config.Password != "" {
		return errors.New(strings.ReplaceAll(err.Error(), pe.Config.Password, "xxxxx"))
	}
	return err
}
