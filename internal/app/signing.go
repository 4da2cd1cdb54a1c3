package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
)

// SigningDirName is the directory under the data directory that keeps
// each source's signing key: <name>.nk (the nkey seed, mode 0600, in a
// 0700 directory) and <name>.pub (its public key).
const SigningDirName = "signing"

// loadSigner returns the signer of source's capture: the seed of
// systems.<source>.signing_key, or the one in the data directory,
// generated when missing (with its .pub next to it). A seed file others
// may read is refused.
func loadSigner(cfg *config.Config, dataDir, source string) (*pipeline.Signer, error) {
	path := cfg.Systems[source].SigningKey
	if path == "" {
		dir := filepath.Join(dataDir, SigningDirName)
		ids, err := natsembed.LoadIdentities(dir, []string{source}, true)
		if err != nil {
			return nil, fmt.Errorf("signing key of %s: %w", source, err)
		}
		path = ids[source].Path
		pub := filepath.Join(dir, source+".pub")
		if _, err := os.Stat(pub); errors.Is(err, fs.ErrNotExist) {
			if err := os.WriteFile(pub, []byte(ids[source].PublicKey+"\n"), 0o644); err != nil {
				return nil, fmt.Errorf("signing key of %s: write its public key: %w", source, err)
			}
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("signing key of %s (systems.%s.signing_key): %w", source, source, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("signing key of %s: %s has mode %s: others than its owner may read it; chmod 600 it (and consider the key exposed)", source, path, fi.Mode().Perm())
	}
	seed, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key of %s: %w", source, err)
	}
	s, err := pipeline.NewSigner(source, seed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// loadVerifier returns the verifier of the flows from source. With
// systems.<source>.signing_public_keys set it trusts exactly those keys.
// Otherwise it trusts the key in this data directory (<name>.pub, or the
// key of the seed there), if any, and every key the source's captures
// recorded in its database's duplex.signing_keys (recordSigningKey),
// read now and again whenever a message comes signed by a key it does not
// know: an active and a standby with data directories of their own trust
// each other's captures, and nothing on the bus can add a key.
func loadVerifier(ctx context.Context, cfg *config.Config, dataDir, source string) (*pipeline.Verifier, error) {
	if files := cfg.Systems[source].SigningPublicKeys; len(files) > 0 {
		var keys []string
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("signing keys of %s (systems.%s.signing_public_keys): %w", source, source, err)
			}
			keys = append(keys, strings.TrimSpace(string(b)))
		}
		v, err := pipeline.NewVerifier(source, keys)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(files, ", "), err)
		}
		return v, nil
	}
	var keys []string
	pub := filepath.Join(dataDir, SigningDirName, source+".pub")
	if b, err := os.ReadFile(pub); err == nil {
		keys = append(keys, strings.TrimSpace(string(b)))
	} else if _, err := os.Stat(filepath.Join(dataDir, SigningDirName, source+".nk")); err == nil && cfg.Systems[source].SigningKey == "" {
		s, err := loadSigner(cfg, dataDir, source)
		if err != nil {
			return nil, err
		}
		keys = append(keys, s.PublicKey())
	}
	v, err := pipeline.NewRecordedKeysVerifier(source, keys)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pub, err)
	}
	dsn := cfg.Systems[source].DSN
	if err := v.WithLookup(ctx, func(ctx context.Context) ([]string, error) { return recordedKeys(ctx, dsn, source) }); err != nil {
		return nil, err
	}
	return v, nil
}

// recordSigningKey records, in source's database (duplex.signing_keys),
// the public key its capture signs with here, so that flows in other
// instances trust it.
func recordSigningKey(ctx context.Context, dsn, source, publicKey string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("record signing key of %s: connect: %w", source, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgstate.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("record signing key of %s: %w", source, err)
	}
	host, _ := os.Hostname()
	return pgstate.RecordSigningKey(ctx, conn, source, publicKey, host)
}

// recordedKeys reads the public keys recorded for source's captures.
func recordedKeys(ctx context.Context, dsn, source string) ([]string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", source, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('duplex.signing_keys') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return nil, err // no capture of this duplex recorded a key there yet
	}
	return pgstate.SigningKeys(ctx, conn, source)
}
