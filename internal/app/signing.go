package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
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

// loadVerifier returns the verifier of the flows from source: the public
// keys of systems.<source>.signing_public_keys, or the one in the data
// directory (<name>.pub, or derived from the seed there).
func loadVerifier(cfg *config.Config, dataDir, source string) (*pipeline.Verifier, error) {
	files := cfg.Systems[source].SigningPublicKeys
	if len(files) == 0 {
		files = []string{filepath.Join(dataDir, SigningDirName, source+".pub")}
		if _, err := os.Stat(files[0]); errors.Is(err, fs.ErrNotExist) {
			// The capture runs elsewhere or has not started yet: the seed
			// may be here all the same.
			seed := filepath.Join(dataDir, SigningDirName, source+".nk")
			if _, err := os.Stat(seed); err == nil && cfg.Systems[source].SigningKey == "" {
				s, err := loadSigner(cfg, dataDir, source)
				if err != nil {
					return nil, err
				}
				return pipeline.NewVerifier(source, []string{s.PublicKey()})
			}
			return nil, fmt.Errorf("signing keys of %s: %s does not exist: start the capture of %s once with this data directory, or set systems.%s.signing_public_keys", source, files[0], source, source)
		}
	}
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
