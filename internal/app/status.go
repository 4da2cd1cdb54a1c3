package app

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/redact"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
)

// Status is what duplex shows of itself: from a running instance (Live),
// or read from PostgreSQL and JetStream when none runs.
type Status struct {
	Live bool      `json:"live"`
	At   time.Time `json:"at"`
	// Instance is the answering instance's id, Role whether it is
	// "active", "standby" or "partly active" (it holds some leases);
	// both empty when no instance answered.
	Instance string         `json:"instance,omitempty"`
	Role     string         `json:"role,omitempty"`
	NATS     NATSStatus     `json:"nats"`
	Sources  []SourceStatus `json:"sources"`
	Flows    []FlowStatus   `json:"flows"`
	// DeadLetters are the newest dead letters (at most 10), as
	// references: never their events or error texts.
	DeadLetters []DeadLetterRef `json:"recent_dead_letters"`
	Errors      []string        `json:"errors,omitempty"`
}

// NATSStatus is the connection to JetStream.
type NATSStatus struct {
	// URL is the server connected to, as scheme://host:port (no user,
	// password or token).
	URL        string `json:"url"`
	Connected  bool   `json:"connected"`
	Reconnects uint64 `json:"reconnects"`
}

// SourceStatus is one captured database.
type SourceStatus struct {
	System           string            `json:"system"`
	Slot             pgcapture.SlotLag `json:"slot"`
	Events           int64             `json:"events"`
	Transactions     int64             `json:"transactions"`
	InFlight         int               `json:"in_flight"`
	LastEvent        *time.Time        `json:"last_event,omitempty"`
	SecondsSinceLast float64           `json:"seconds_since_last_event"`
	Held             map[string]string `json:"held,omitempty"`
	// OwnershipViolations counts local changes to what another system
	// owns, by "entity/kind" (insert, field); see pipeline.SourceCounts.
	OwnershipViolations map[string]int64 `json:"ownership_violations,omitempty"`
	Snapshot            string           `json:"snapshot,omitempty"`
	LastError           string           `json:"last_error,omitempty"`
	// Stopped says the capture stopped on a permanent error (LastError).
	Stopped bool `json:"stopped,omitempty"`
	// ActiveInstance is the instance that captures the source (the
	// holder of its lease), "" when none does.
	ActiveInstance string `json:"active_instance,omitempty"`
}

// FlowStatus is one direction.
type FlowStatus struct {
	Name          string     `json:"name"`
	From          string     `json:"from"`
	To            string     `json:"to"`
	State         string     `json:"state"`
	WALBehind     int64      `json:"wal_behind_bytes"`
	Pending       uint64     `json:"pending"`
	SecondsBehind float64    `json:"seconds_behind"`
	LastLSN       string     `json:"last_applied_lsn"`
	LastCommit    *time.Time `json:"last_applied_commit_time,omitempty"`
	LastApplied   *time.Time `json:"last_applied_at,omitempty"`
	Applied       int64      `json:"applied"`
	Skipped       int64      `json:"skipped"`
	Conflicts     int64      `json:"conflicts"`
	DeadLetters   uint64     `json:"dead_letters"`
	StreamSeq     uint64     `json:"stream_seq"`
	LastError     string     `json:"last_error,omitempty"`
	// ActiveInstance is the instance that applies the flow (the holder
	// of its lease), "" when none does; State is "standby" in an
	// instance that does not.
	ActiveInstance string `json:"active_instance,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// Status reports the running instance.
func (a *App) Status(ctx context.Context) Status {
	cfg := a.opts.Config
	st := Status{Live: true, At: time.Now().UTC(), Instance: a.Instance(), Role: a.Role(), NATS: NATSStatus{URL: redact.URL(a.nc.ConnectedUrl()), Connected: a.nc.IsConnected(), Reconnects: a.nc.Stats().Reconnects}}
	slots := a.Slots()
	for _, name := range cfg.Sources() {
		ss := SourceStatus{System: name, Slot: slots[name], ActiveInstance: a.CaptureLease(name).Holder}
		if s := a.SrcStat[name]; s != nil {
			c := s.Snapshot()
			ss.Events, ss.Transactions, ss.InFlight, ss.Held, ss.LastError, ss.Stopped = c.Events, c.Transactions, c.InFlight, c.Held, c.LastError, c.Stopped
			ss.OwnershipViolations = c.OwnershipViolations
			ss.LastEvent = timePtr(c.LastEvent)
			if !c.LastEvent.IsZero() {
				ss.SecondsSinceLast = time.Since(c.LastEvent).Seconds()
			}
		}
		if src := a.Sources[name]; src != nil {
			if p := src.Progress(); p.Running {
				ss.Snapshot = fmt.Sprintf("table %s: %d of about %d rows (%d in all)", p.Table, p.Rows, p.Estimate, p.Total)
			}
		}
		st.Sources = append(st.Sources, ss)
	}
	dl, err := pipeline.CountDeadLetters(ctx, a.js)
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	for _, l := range a.Lag(ctx) {
		f := cfg.Flow(l.Flow)
		fs := FlowStatus{Name: l.Flow, From: f.From, To: f.To, State: l.State, Pending: l.Pending, SecondsBehind: l.SecondsBehind,
			Applied: l.Applied, Skipped: l.Skipped, Conflicts: l.Conflicts, DeadLetters: dl[l.Flow] + dl["capture-"+f.From],
			WALBehind: slots[f.From].BehindBytes, LastError: l.LastError, StreamSeq: l.StreamSeq, ActiveInstance: a.FlowLease(l.Flow).Holder}
		if !l.LastPosition.CommitTime.IsZero() {
			fs.LastLSN = l.LastPosition.LSN.String()
			fs.LastCommit = timePtr(l.LastPosition.CommitTime)
		}
		fs.LastApplied = timePtr(l.LastApplied)
		st.Flows = append(st.Flows, fs)
	}
	recent, err := pipeline.RecentDeadLetters(ctx, a.js, 10)
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	st.DeadLetters = deadLetterRefs(recent)
	return st
}

// Inspect reads the status of a configuration without a running instance:
// slots from the sources, applied positions from the targets' duplex
// schema, pending messages and dead letters from JetStream.
func Inspect(ctx context.Context, cfg *config.Config, js jetstream.JetStream) Status {
	st := Status{At: time.Now().UTC()}
	if js != nil {
		st.NATS = NATSStatus{URL: redact.URL(js.Conn().ConnectedUrl()), Connected: js.Conn().IsConnected()}
	}
	slots := map[string]pgcapture.SlotLag{}
	for _, name := range cfg.Sources() {
		sys := cfg.Systems[name]
		l := pgcapture.SlotLag{System: name, Slot: sys.Slot, At: time.Now().UTC()}
		err := withConn(ctx, sys.DSN, func(c *pgx.Conn) error {
			var err error
			l, err = pgcapture.ReadSlot(ctx, c, name, sys.Slot)
			return err
		})
		if err != nil {
			l.Error = err.Error()
		}
		slots[name] = l
		ss := SourceStatus{System: name, Slot: l}
		if js != nil {
			h, ok, err := pipeline.ReadLease(ctx, js, pipeline.CaptureLeaseKey(name))
			if err != nil {
				st.Errors = append(st.Errors, err.Error())
			} else if ok {
				ss.ActiveInstance = h.ID
			}
		}
		st.Sources = append(st.Sources, ss)
	}
	var dl map[string]uint64
	if js != nil {
		var err error
		if dl, err = pipeline.CountDeadLetters(ctx, js); err != nil {
			st.Errors = append(st.Errors, err.Error())
		}
		recent, err := pipeline.RecentDeadLetters(ctx, js, 10)
		if err != nil {
			st.Errors = append(st.Errors, err.Error())
		}
		st.DeadLetters = deadLetterRefs(recent)
	}
	for _, f := range cfg.Flows {
		fs := FlowStatus{Name: f.Name, From: f.From, To: f.To, State: "not running", WALBehind: slots[f.From].BehindBytes,
			DeadLetters: dl[f.Name] + dl["capture-"+f.From]}
		err := withConn(ctx, cfg.Systems[f.To].DSN, func(c *pgx.Conn) error {
			pos, err := pgsink.Position(ctx, c, f.Name)
			if err != nil {
				return err
			}
			if pos.LSN > 0 {
				fs.LastLSN = pos.LSN.String()
				fs.LastCommit = timePtr(pos.CommitTime)
			}
			return nil
		})
		if err != nil {
			fs.LastError = err.Error()
		}
		if js != nil {
			if h, ok, err := pipeline.ReadLease(ctx, js, pipeline.FlowLeaseKey(f.Name)); err != nil {
				st.Errors = append(st.Errors, err.Error())
			} else if ok {
				fs.ActiveInstance, fs.State = h.ID, "running elsewhere"
				if h.Role == "replay" {
					fs.State = "replaying elsewhere"
				}
			}
			if c, err := js.Consumer(ctx, pipeline.StreamName, f.Name); err == nil {
				info := c.CachedInfo()
				fs.Pending = info.NumPending + uint64(info.NumAckPending)
				fs.StreamSeq = info.AckFloor.Stream
			} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				fs.LastError = err.Error()
			}
		}
		if fs.Pending > 0 && fs.LastCommit != nil {
			fs.SecondsBehind = time.Since(*fs.LastCommit).Seconds()
		}
		st.Flows = append(st.Flows, fs)
	}
	sort.Slice(st.Flows, func(i, j int) bool { return st.Flows[i].Name < st.Flows[j].Name })
	return st
}

func withConn(ctx context.Context, dsn string, f func(*pgx.Conn) error) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	return f(c)
}
