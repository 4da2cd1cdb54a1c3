// The Sink: its configuration, construction, Apply and Close.

package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// Where the sink meets the pipeline's interfaces.
var (
	_ pipeline.Sink        = (*Sink)(nil)
	_ pipeline.PartSink    = (*Sink)(nil)
	_ pipeline.PartSession = (*partSession)(nil)
)

// Config configures a Sink.
type Config struct {
	// Flow names the flow; the applied position is kept per flow.
	Flow string
	// Source is the system the flow reads from.
	Source string
	// System is the target system's name in the mapping ("erp").
	System string
	DSN    string
	// Origin is the replication origin the session is bound to
	// ("duplex_to_erp"). The capture of this database skips it.
	Origin  string
	Mapping *transform.Mapping
	// FieldHash hashes the values of shared fields recorded in
	// duplex.field_versions; it must be the one the capture of this
	// database records with (nil: the unkeyed md5 of older versions, for
	// tests).
	FieldHash *pgstate.FieldHasher
	Logger    *slog.Logger
	// Slot is the replication slot of this database's own capture (it is
	// also a source), "" when it is none: rows whose owned fields the
	// other system edited are re-read through it (enforce: owner).
	Slot string
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Flow == "" || c.System == "" || c.Source == "" {
		errs = append(errs, errors.New("sink: flow, source and system are required"))
	}
	if c.DSN == "" {
		errs = append(errs, fmt.Errorf("sink %s: dsn is empty", c.System))
	}
	if c.Origin == "" {
		errs = append(errs, fmt.Errorf("sink %s: replication origin is empty", c.System))
	}
	if c.Mapping == nil {
		errs = append(errs, fmt.Errorf("sink %s: no mapping", c.System))
	}
	return errors.Join(errs...)
}

// Sink writes into one PostgreSQL database. It is used by one goroutine.
type Sink struct {
	cfg     Config
	log     *slog.Logger
	conn    *pgx.Conn
	catalog *transform.Catalog
	order   []*transform.Entity // parents before children
	stmts   map[string]string
	// release: entities whose source-assigned unique values were seen to
	// move (a unique violation); from then on stale holders are cleared
	// before each write (releaseUnique).
	release map[string]bool
	// isolate: write row by row under savepoints, to name the event a
	// set-based statement failed on (only after such a failure).
	isolate bool
	// mode: how write applies a batch (mode.go); set but while a batch
	// is applied again after a unique violation.
	mode   writeMode
	shared map[string]map[string]string // entity -> column -> shared field
	// sequences: entity -> the sequence of its key column here (""
	// when none), for sequence: follow.
	sequences map[string]string
	// fks: the foreign keys of and into the mapped tables, read at
	// connect; checked by duplex since it applies with
	// session_replication_role = replica (fkcheck.go).
	fks []foreignKey
	// stale: the catalog is out of date (staleNotNull); the next Apply
	// starts a new session, which reads it again. reread holds what the
	// catalog said of a column when it was last re-read for it.
	stale  bool
	reread map[string]transform.ColumnInfo
}

// New returns a Sink. It connects lazily, on the first Apply.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sink{cfg: cfg, log: cfg.Logger.With(slog.String("sink", cfg.System), slog.String("flow", cfg.Flow)), stmts: map[string]string{}}
	order, _, err := s.writeOrder(nil)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", cfg.System, err)
	}
	s.order = order
	s.shared = map[string]map[string]string{}
	for _, e := range order {
		cols := map[string]string{}
		for _, f := range e.SharedFields(cfg.System) {
			cols[e.Tables[cfg.System].Columns[f].Column] = f
		}
		s.shared[e.Name] = cols
	}
	return s, nil
}

// Close ends the session.
func (s *Sink) Close(ctx context.Context) {
	if s.conn != nil {
		_ = s.conn.Close(ctx)
		s.conn = nil
	}
}

// Apply implements pipeline.Sink.
func (s *Sink) Apply(ctx context.Context, txs []*transform.Tx) (pipeline.ApplyResult, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.conn = nil
		if err := s.connect(ctx); err != nil {
			return pipeline.ApplyResult{}, classify(err, -1, -1)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	res, err := s.apply(actx, txs)
	if err != nil {
		s.afterFailure(ctx)
		return pipeline.ApplyResult{}, err
	}
	return res, nil
}

// afterFailure drops a session that is closed, or whose catalog is out of
// date (the next Apply connects again and reads it).
func (s *Sink) afterFailure(ctx context.Context) {
	if s.stale && s.conn != nil {
		s.stale = false
		_ = s.conn.Close(ctx)
	}
	if s.conn != nil && s.conn.IsClosed() {
		s.conn = nil
	}
}
