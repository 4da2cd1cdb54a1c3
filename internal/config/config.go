// Package config reads duplex's configuration file: plain structs with
// Validate, ${ENV_VAR} expansion, and paths relative to the file. Only
// cmd-level code reads configuration; library packages take structs.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config is the whole configuration file.
type Config struct {
	// Mapping is the path of the mapping file, relative to the config file.
	Mapping string                   `yaml:"mapping"`
	DataDir string                   `yaml:"data_dir"`
	NATS    NATS                     `yaml:"nats"`
	Stream  Stream                   `yaml:"stream"`
	HA      HA                       `yaml:"ha"`
	HTTP    HTTP                     `yaml:"http"`
	PII     PII                      `yaml:"pii"`
	Systems map[string]*SystemConfig `yaml:"systems"`
	Flows   []*Flow                  `yaml:"flows"`

	dir string
}

// HA is how instances started with one configuration share the work:
// each flow and each source's capture runs in one instance at a time, the
// holder of its lease in the DUPLEX_LEASES key-value bucket; the others
// wait as standbys.
type HA struct {
	// LeaseTTL is how long a lease outlives its holder's last renewal,
	// hence how long a standby takes at most to take over from an
	// instance that died (default 10s, at least 2s). Every instance of a
	// configuration must use the same value: the bucket's TTL is set from
	// it.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Stream configures the streams DUPLEX and DUPLEX_DLQ.
//
// The rule of retention: a change that a flow reading it has not applied
// yet is never removed, however old it is or however much is stored.
// MaxAge and MaxBytes bound only what is kept after every flow reading it
// applied it (for replay). When DUPLEX reaches MaxStoreBytes full of
// unapplied changes, publishing waits (the source's slot keeps its WAL,
// duplex_stream_full is 1) rather than anything being discarded.
type Stream struct {
	// MaxAge: changes every reading flow applied are removed once stored
	// longer ago than this (0: kept whatever their age).
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes: while DUPLEX holds more than this many bytes, the oldest
	// changes every reading flow applied are removed (0: no bound but
	// max_store_bytes).
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxStoreBytes is the hard ceiling of DUPLEX in bytes, at which
	// JetStream refuses new messages (0: none of its own; JetStream's
	// store, nats.embedded.max_store or the server's account limit, is
	// the ceiling). Publishing waits from 90% of it; applied changes are
	// removed down to 80% of it whatever max_age says.
	MaxStoreBytes int64 `yaml:"max_store_bytes"`
	// DLQMaxAge is how long dead letters are kept in DUPLEX_DLQ (0: the
	// default, 720h = 30 days; negative: forever).
	DLQMaxAge  time.Duration `yaml:"dlq_max_age"`
	Duplicates time.Duration `yaml:"duplicates"`
	Replicas   int           `yaml:"replicas"`
	// MaxChangeBytes is the largest single change (encoded event) duplex
	// carries; one larger than a message travels through the object
	// store, one above this is dead-lettered at capture (default 64 MiB).
	MaxChangeBytes int64 `yaml:"max_change_bytes"`
}

func (s *Stream) validate(bad func(format string, args ...any)) {
	if s.MaxAge < 0 {
		bad("stream.max_age %s: want a positive duration (0 keeps applied changes whatever their age)", s.MaxAge)
	}
	if s.MaxBytes < 0 {
		bad("stream.max_bytes %d: want a positive number of bytes (0 for no bound)", s.MaxBytes)
	}
	if s.MaxStoreBytes < 0 {
		bad("stream.max_store_bytes %d: want a positive number of bytes (0 for JetStream's own limit)", s.MaxStoreBytes)
	}
	if s.MaxStoreBytes > 0 && s.MaxBytes > s.MaxStoreBytes {
		bad("stream.max_bytes %d is above stream.max_store_bytes %d, the stream's ceiling", s.MaxBytes, s.MaxStoreBytes)
	}
}

// SystemConfig is one database.
type SystemConfig struct {
	DSN         string `yaml:"dsn"`
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`
	// ChunkSize is the number of changes per message (default 500).
	ChunkSize int `yaml:"chunk_size"`
	// SnapshotChunk is the number of rows per chunk of the initial
	// snapshot (default 500); each chunk is one message.
	SnapshotChunk int `yaml:"snapshot_chunk"`
	// Snapshot: "initial" (default) copies the existing rows of the
	// mapped tables when the slot is first created; "never" does not.
	Snapshot string `yaml:"snapshot"`
	// WALWarnBytes: duplex warns when the slot retains more WAL than this
	// (default 1 GiB; 0 in the file means the default, -1 never warns).
	WALWarnBytes int64 `yaml:"wal_warn_bytes"`
	// SigningKey is the file holding the nkey seed ("SU…") with which this
	// system's capture signs every message it publishes (default
	// <data dir>/signing/<name>.nk, generated at the first start, mode
	// 0600). Relative to the working directory.
	SigningKey string `yaml:"signing_key"`
	// SigningPublicKeys are files, each holding a public nkey ("U…"),
	// that flows from this system trust (several during a rotation).
	// Default: <data dir>/signing/<name>.pub, written next to the
	// generated seed. Set it where a flow runs in another process than
	// the capture.
	SigningPublicKeys []string `yaml:"signing_public_keys"`
	// RequireTLS refuses a dsn that is not verified TLS (sslmode=verify-full
	// or verify-ca; see PostgresTLS) instead of warning at start.
	RequireTLS bool `yaml:"require_tls"`
}

// Flow is one direction.
type Flow struct {
	Name   string `yaml:"name"`
	From   string `yaml:"from"`
	To     string `yaml:"to"`
	Origin string `yaml:"origin"`
	Batch  int    `yaml:"batch"`
	// MaxWaitAttempts bounds retries of an event waiting for a referenced
	// row before it is dead-lettered (default 8).
	MaxWaitAttempts int `yaml:"max_wait_attempts"`
	// MaxWait bounds how long an event waits for the capture of the
	// target to record a local write of a shared field before it is
	// dead-lettered with the reason (default 5m).
	MaxWait time.Duration `yaml:"max_wait"`
	// WaitAlertAfter: a flow waiting longer than this fails /readyz,
	// naming entity, key and field (default 30s).
	WaitAlertAfter time.Duration `yaml:"wait_alert_after"`
	// LargeTxChunks: a source transaction of at least this many chunks is
	// applied part by part as it arrives, inside one target transaction,
	// so memory stays bounded however large it is (default 8).
	LargeTxChunks int `yaml:"large_tx_chunks"`
	// MaxClockSkew: a shared field whose version (source commit time) is
	// later than the flow's clock plus this is refused, a dead letter
	// (default 1m).
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
}

// Load reads, expands and validates a configuration file.
func Load(path string, getenv func(string) string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := parse(b, getenv)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.dir = filepath.Dir(path)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Flow returns the flow of that name, or nil.
func (c *Config) Flow(name string) *Flow {
	for _, f := range c.Flows {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// MappingPath resolves the mapping file relative to the config file.
func (c *Config) MappingPath() string {
	if filepath.IsAbs(c.Mapping) {
		return c.Mapping
	}
	return filepath.Join(c.dir, c.Mapping)
}

// Validate checks the configuration and fills defaults.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Mapping == "" {
		bad("mapping: no mapping file named")
	}
	if len(c.Flows) == 0 {
		bad("flows: no flow configured")
	}
	var flows []string
	for _, f := range c.Flows {
		flows = append(flows, f.Name)
	}
	c.NATS.validate(c.Sources(), flows, bad)
	if c.Stream.MaxChangeBytes < 0 || c.Stream.MaxChangeBytes > 1<<30 {
		bad("stream.max_change_bytes %d: want 1 to %d bytes (0 for the default, 64 MiB)", c.Stream.MaxChangeBytes, 1<<30)
	}
	c.Stream.validate(bad)
	c.HTTP.validate(bad)
	c.PII.validate(bad)
	switch {
	case c.HA.LeaseTTL == 0:
		c.HA.LeaseTTL = 10 * time.Second
	case c.HA.LeaseTTL < 2*time.Second:
		bad("ha.lease_ttl: %s is below the minimum of 2s", c.HA.LeaseTTL)
	}
	for name, s := range c.Systems {
		if s == nil || s.DSN == "" {
			bad("systems.%s: dsn is empty (set it, or the environment variable it names)", name)
			continue
		}
		if err := s.checkTLS(name); err != nil {
			errs = append(errs, err)
		}
		if s.Slot == "" {
			s.Slot = "duplex_" + name
		}
		if s.Publication == "" {
			s.Publication = "duplex_" + name
		}
		if err := CheckSlotName(s.Slot); err != nil {
			bad("systems.%s: %w", name, err)
		}
		if n := len(s.Publication); n > MaxIdentifierBytes {
			bad("systems.%s: publication %q is %d bytes; PostgreSQL keeps only the first %d bytes of a name (NAMEDATALEN), so duplex could not find it again: choose a shorter name", name, s.Publication, n, MaxIdentifierBytes)
		}
		if s.WALWarnBytes == 0 {
			s.WALWarnBytes = 1 << 30
		}
		switch s.Snapshot {
		case "":
			s.Snapshot = "initial"
		case "initial", "never":
		default:
			bad("systems.%s: snapshot %q: want initial or never", name, s.Snapshot)
		}
	}
	seen := map[string]bool{}
	for i, f := range c.Flows {
		if f.Name == "" {
			bad("flows[%d]: no name", i)
			continue
		}
		if seen[f.Name] {
			bad("flows: %s is defined twice", f.Name)
		}
		if strings.ContainsAny(f.Name, ".*>$ \t\r\n") {
			bad("flows.%s: a flow name must be one NATS subject token (no dots, wildcards, $ or spaces): it names the flow's consumer and subjects", f.Name)
		}
		seen[f.Name] = true
		if c.Systems[f.From] == nil {
			bad("flows.%s: from %q is not a configured system", f.Name, f.From)
		}
		if c.Systems[f.To] == nil {
			bad("flows.%s: to %q is not a configured system", f.Name, f.To)
		}
		if f.From == f.To {
			bad("flows.%s: from and to are the same system", f.Name)
		}
		if f.Origin == "" {
			f.Origin = "duplex_" + strings.ReplaceAll(f.Name, "-", "_")
		}
		if f.MaxWait < 0 || f.WaitAlertAfter < 0 {
			bad("flows.%s: max_wait and wait_alert_after must not be negative", f.Name)
		}
		if f.MaxWait == 0 {
			f.MaxWait = 5 * time.Minute
		}
		if f.WaitAlertAfter == 0 {
			f.WaitAlertAfter = 30 * time.Second
		}
		switch {
		case f.MaxClockSkew < 0:
			bad("flows.%s: max_clock_skew must not be negative", f.Name)
		case f.MaxClockSkew == 0:
			f.MaxClockSkew = time.Minute
		}
	}
	return errors.Join(errs...)
}

// MaxIdentifierBytes is the longest name PostgreSQL keeps: NAMEDATALEN
// (64) less the terminating byte. A longer identifier is truncated.
const MaxIdentifierBytes = 63

// CheckSlotName returns an error naming the rule when name cannot be a
// replication slot's: PostgreSQL allows only lower-case letters, digits
// and underscores, at most 63 bytes (ReplicationSlotValidateName in
// src/backend/replication/slot.c), and quoting does not lift the rule.
func CheckSlotName(name string) error {
	ok := name != "" && len(name) <= MaxIdentifierBytes
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("slot %q: a replication slot name may contain only lower-case letters, digits and underscores, at most %d characters (PostgreSQL's rule for slot names; unlike a publication name it cannot be quoted)", name, MaxIdentifierBytes)
	}
	return nil
}

// Sources returns the systems some flow reads from, in flow order.
func (c *Config) Sources() []string {
	var out []string
	for _, f := range c.Flows {
		if !slices.Contains(out, f.From) {
			out = append(out, f.From)
		}
	}
	return out
}

// OriginsInto returns the replication origins of flows that write into a
// system: what its capture must skip.
func (c *Config) OriginsInto(system string) []string {
	var out []string
	for _, f := range c.Flows {
		if f.To == system {
			out = append(out, f.Origin, f.ToolOrigin())
		}
	}
	return out
}

// ToolOrigin is the replication origin the command-line tools (dlq retry)
// apply under while the flow itself may be running under Origin: a
// session holds its origin exclusively.
func (f *Flow) ToolOrigin() string { return f.Origin + "_tool" }
