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
	Systems map[string]*SystemConfig `yaml:"systems"`
	Flows   []*Flow                  `yaml:"flows"`

	dir string
}

// NATS says how to reach JetStream. Without a URL an embedded server runs.
type NATS struct {
	URL      string   `yaml:"url"`
	User     string   `yaml:"user"`
	Password string   `yaml:"password"`
	Token    string   `yaml:"token"`
	Creds    string   `yaml:"creds"`
	CAFile   string   `yaml:"ca_file"`
	Embedded Embedded `yaml:"embedded"`
}

// Embedded configures the in-process NATS server.
type Embedded struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
}

// Stream configures retention of the DUPLEX stream.
type Stream struct {
	MaxAge     time.Duration `yaml:"max_age"`
	MaxBytes   int64         `yaml:"max_bytes"`
	Duplicates time.Duration `yaml:"duplicates"`
	Replicas   int           `yaml:"replicas"`
}

// SystemConfig is one database.
type SystemConfig struct {
	DSN         string `yaml:"dsn"`
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`
	// ChunkSize is the number of changes per message (default 500).
	ChunkSize int `yaml:"chunk_size"`
	// Snapshot: "initial" (default) copies the existing rows of the
	// mapped tables when the slot is first created; "never" does not.
	Snapshot string `yaml:"snapshot"`
	// WALWarnBytes: duplex warns when the slot retains more WAL than this
	// (default 1 GiB; 0 in the file means the default, -1 never warns).
	WALWarnBytes int64 `yaml:"wal_warn_bytes"`
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
	// LargeTxChunks: a source transaction of at least this many chunks is
	// applied part by part as it arrives, inside one target transaction,
	// so memory stays bounded however large it is (default 8).
	LargeTxChunks int `yaml:"large_tx_chunks"`
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
	for name, s := range c.Systems {
		if s == nil || s.DSN == "" {
			bad("systems.%s: dsn is empty (set it, or the environment variable it names)", name)
			continue
		}
		if s.Slot == "" {
			s.Slot = "duplex_" + name
		}
		if s.Publication == "" {
			s.Publication = "duplex_" + name
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
	}
	return errors.Join(errs...)
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
