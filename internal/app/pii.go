package app

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/internal/pii"
	"github.com/duplex-cdc/duplex/transform"
)

// personal sets up what an instance does with personal data: the cipher of
// pii: true fields (keys from pii.keys_file and pii.key_env) and the keyed
// hash of duplex.field_versions. A mapping with personal fields and no key,
// a current_key or hash_key the keys lack, or a key file others may read,
// is refused, naming the key id and where the keys were read from (never a
// key).
func personal(ctx context.Context, cfg *config.Config, m *transform.Mapping) (*pii.Cipher, *pgstate.FieldHasher, error) {
	ring, err := checkKeys(cfg, m)
	if err != nil {
		return nil, nil, err
	}
	c, err := pii.NewCipher(m, ring)
	if err != nil {
		return nil, nil, err
	}
	var hashKey []byte
	if id := cfg.PII.HashKey; id != "" {
		hashKey = ring.Key(id)
	} else if hashKey, err = fieldHashKey(ctx, cfg); err != nil {
		return nil, nil, err
	}
	h, err := pgstate.NewFieldHasher(hashKey)
	if err != nil {
		return nil, nil, err
	}
	return c, h, nil
}

// checkKeys reads the keys of personal fields and checks them against the
// configuration and the mapping (what personal refuses, without touching
// the data directory): run by preflight, so duplex check reports it too.
func checkKeys(cfg *config.Config, m *transform.Mapping) (*pii.Keyring, error) {
	ring, from, err := loadKeys(cfg)
	if err != nil {
		return nil, err
	}
	switch {
	case ring.Len() > 0:
		if err := ring.SetCurrent(cfg.PII.CurrentKey); err != nil {
			return nil, fmt.Errorf("pii.current_key: %w, read from %s", err, from)
		}
	case m.HasPII():
		return nil, fmt.Errorf("the mapping marks fields pii: true (%s) but no key is configured: set pii.keys_file or pii.key_env", strings.Join(piiFields(m), ", "))
	case cfg.PII.CurrentKey != "":
		return nil, fmt.Errorf("pii.current_key %s: no keys configured (%s)", cfg.PII.CurrentKey, from)
	}
	if id := cfg.PII.HashKey; id != "" && ring.Key(id) == nil {
		return nil, fmt.Errorf("pii.hash_key %s is not among the keys (%s), read from %s", id, strings.Join(ring.IDs(), ", "), from)
	}
	return ring, nil
}

func piiFields(m *transform.Mapping) []string {
	var out []string
	for _, e := range m.Entities {
		for _, f := range e.Fields {
			if f.PII {
				out = append(out, e.Name+"."+f.Name)
			}
		}
	}
	return out
}

// loadKeys reads the keys of pii.keys_file and pii.key_env; from says
// where, for errors.
func loadKeys(cfg *config.Config) (*pii.Keyring, string, error) {
	ring, _ := pii.ParseKeys("", "")
	var from []string
	if path := cfg.KeysFilePath(); path != "" {
		from = append(from, "pii.keys_file "+path)
		st, err := os.Stat(path)
		if err != nil {
			return nil, "", fmt.Errorf("pii.keys_file: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, "", fmt.Errorf("pii.keys_file %s: mode %04o lets others read the keys; chmod 600 it", path, st.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, "", fmt.Errorf("pii.keys_file: %w", err)
		}
		if ring, err = pii.ParseKeys("pii.keys_file "+path, string(b)); err != nil {
			return nil, "", err
		}
	}
	if name := cfg.PII.KeyEnv; name != "" {
		from = append(from, "pii.key_env "+name)
		env, err := pii.ParseKeys("pii.key_env "+name, cfg.PII.EnvKeys())
		if err != nil {
			return nil, "", err
		}
		if err := ring.Merge(env); err != nil {
			return nil, "", fmt.Errorf("pii: %w (pii.keys_file and pii.key_env)", err)
		}
		if env.Len() == 0 && ring.Len() == 0 {
			return nil, "", fmt.Errorf("pii.key_env %s is unset or empty", name)
		}
	}
	if len(from) == 0 {
		from = append(from, "no pii.keys_file or pii.key_env")
	}
	return ring, strings.Join(from, " and "), nil
}

// fieldHashKey returns the key of duplex.field_versions' hashes kept in
// the database of the configuration's first system (by name): every
// instance of one configuration reads the same key, wherever its data
// directory is. (A key per data directory made an active and a standby on
// two hosts hash differently, and after a failover the sink took a newer
// local write for an older one.) pgstate.FieldHashKey creates it.
func fieldHashKey(ctx context.Context, cfg *config.Config) ([]byte, error) {
	names := sortedSystems(cfg)
	if len(names) == 0 {
		return nil, fmt.Errorf("field hash key: no system configured")
	}
	conn, err := pgx.Connect(ctx, cfg.Systems[names[0]].DSN)
	if err != nil {
		return nil, fmt.Errorf("field hash key: connect to %s: %w", names[0], err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return nil, fmt.Errorf("field hash key: %s: %w", names[0], err)
	}
	key, err := pgstate.FieldHashKey(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", names[0], err)
	}
	return key, nil
}
