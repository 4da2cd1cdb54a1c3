package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duplex-cdc/duplex/capture"
)

// Config configures a Source.
type Config struct {
	// System names the source database ("crm"); it is stamped on every
	// transaction.
	System string
	// DSN is a libpq connection string or URL of a role with REPLICATION
	// and SELECT on the tables; the publication is best created
	// beforehand by the tables' owner, with every table (creating or
	// completing it needs their ownership; CheckPrivileges).
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
	// Flows names the flows that read this source; they appear in the
	// recovery hint of a SlotLostError.
	Flows []string
	// ChunkSize is the number of changes per chunk (default 500).
	ChunkSize int
	// Snapshot is SnapshotInitial (copy the existing rows of every table
	// when the slot is created) or SnapshotNever.
	Snapshot string
	// Keys names the key columns of each table, in key order, for the
	// keyset pagination of snapshots and backfills ("schema.table" ->
	// columns; one for a simple key).
	Keys map[string][]string
	// CommitTimes are the tables ("schema.table") whose copied rows
	// (snapshot, backfill) carry the commit time of their last write
	// (capture.Change.RowCommitTime): the tables of shared fields, whose
	// never-versioned values are as old as that write, as the sink into
	// this database takes them. Read only when the database has
	// track_commit_timestamp on.
	CommitTimes map[string]bool
	// SnapshotChunk is the rows per snapshot chunk (default 500).
	SnapshotChunk int
	// StatusInterval is how often a standby status update is sent
	// (default 1s).
	StatusInterval time.Duration
	Logger         *slog.Logger
}

// slotName is PostgreSQL's rule for replication slot names
// (ReplicationSlotValidateName): quoting does not lift it.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

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
	} else if !slotName.MatchString(c.Slot) {
		errs = append(errs, fmt.Errorf("capture %s: slot %q: a replication slot name may contain only lower-case letters, digits and underscores, at most 63 characters", c.System, c.Slot))
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

	// recorded is the confirmed position last recorded in duplex.slots,
	// at recordedAt; ownEnd the WAL position of that write (slotcheck.go).
	recorded   capture.LSN
	ownEnd     capture.LSN
	recordedAt time.Time

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
