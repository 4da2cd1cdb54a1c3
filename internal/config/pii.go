package config

import (
	"path/filepath"
	"regexp"
)

// PII configures the keys of personal fields (pii: true in the mapping):
// their values are encrypted on the bus with AES-256-GCM under the current
// key, and opened by the flow that applies them with the key whose id the
// value names (internal/pii). Keys come from a file, an environment
// variable, or both; each entry is "<key id> <key>", the key 32 random
// bytes in base64 or hex (`openssl rand -base64 32`), one a line (or
// separated by ';' in the variable). Rotation: add a key, make it
// current_key, and keep the old ones as long as the stream (or a dead
// letter) holds events sealed with them.
type PII struct {
	// KeysFile is the path of the key file (relative to the
	// configuration file); it must not be readable by group or others.
	KeysFile string `yaml:"keys_file"`
	// KeyEnv names the environment variable holding keys (its name, not
	// ${...}: the keys never pass through the configuration's text).
	KeyEnv string `yaml:"key_env"`
	// CurrentKey is the id of the key new values are sealed with
	// (default: the last key listed, the variable's after the file's).
	CurrentKey string `yaml:"current_key"`
	// HashKey names the key (by id) whose bytes key the hash recorded in
	// duplex.field_versions (HMAC-SHA256). Never rotate it: hashes
	// recorded under another key are read as unknown. Default: a key kept
	// in the database of the first system (duplex.field_hash_key), the
	// same for every instance of the configuration.
	HashKey string `yaml:"hash_key"`

	// envKeys is the value of KeyEnv when the configuration was loaded.
	envKeys string
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// EnvKeys is the text of the variable KeyEnv names ("" when unset).
func (p *PII) EnvKeys() string { return p.envKeys }

// KeysFilePath is KeysFile relative to the configuration file's directory
// ("" when unset).
func (c *Config) KeysFilePath() string {
	f := c.PII.KeysFile
	if f == "" || filepath.IsAbs(f) {
		return f
	}
	return filepath.Join(c.dir, f)
}

func (p *PII) validate(bad func(format string, args ...any)) {
	if p.KeyEnv != "" && !envNameRE.MatchString(p.KeyEnv) {
		bad("pii.key_env %q: want the name of an environment variable (DUPLEX_PII_KEYS), not its value", p.KeyEnv)
	}
}
