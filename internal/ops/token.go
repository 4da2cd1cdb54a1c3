package ops

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/duplex-cdc/duplex/internal/config"
)

// TokenFile is the name of the generated bearer token's file in the data
// directory.
const TokenFile = "http.token"

// DefaultDataDir is the data directory when none is configured (relative
// to the working directory, as the embedded NATS store's).
const DefaultDataDir = "data"

// Token is the listener's bearer token and where it comes from.
type Token struct {
	Value string
	// Source names where it was found, for messages: "http.token of the
	// configuration" or the file's path. Never the token itself.
	Source string
}

// ResolveToken returns the bearer token of the listener: http.token of the
// configuration when set, otherwise the one kept in <dataDir>/http.token.
// With create (duplex run), a missing file is created with a new random
// token (32 bytes from crypto/rand, base64url: 43 characters), mode 0600,
// in a data directory created with mode 0700; without it (the
// command-line tools) a missing file gives an empty Value and no error.
// A token file that others may read (any group or other permission bit)
// is refused, as ssh refuses such a key, naming the file and its mode.
func ResolveToken(h config.HTTP, dataDir string, create bool) (Token, error) {
	if h.Token != "" {
		return Token{Value: h.Token, Source: "http.token of the configuration"}, nil
	}
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	path := filepath.Join(dataDir, TokenFile)
	t, err := readToken(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return t, err
	}
	if !create {
		return Token{Source: path}, nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return Token{}, fmt.Errorf("http token: create data directory: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return Token{}, fmt.Errorf("http token: %w", err)
	}
	value := base64.RawURLEncoding.EncodeToString(raw)
	// Written beside it and linked into place: a second instance starting
	// on the same data directory reads either nothing or the whole token,
	// and the first one linked wins.
	tmp, err := os.CreateTemp(dataDir, TokenFile+".*")
	if err != nil {
		return Token{}, fmt.Errorf("http token: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return Token{}, fmt.Errorf("http token: %w", err)
	}
	if _, err := tmp.WriteString(value + "\n"); err != nil {
		tmp.Close()
		return Token{}, fmt.Errorf("http token: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return Token{}, fmt.Errorf("http token: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return Token{}, fmt.Errorf("http token: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return Token{}, fmt.Errorf("http token: create %s: %w", path, err)
	}
	return readToken(path)
}

func readToken(path string) (Token, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Token{}, fmt.Errorf("http token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Token{}, fmt.Errorf("http token: %s is accessible by others (mode %04o): chmod 600 it, or delete it for a new token", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Token{}, fmt.Errorf("http token: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if len(v) < 16 || strings.ContainsAny(v, " \t\r\n") {
		return Token{}, fmt.Errorf("http token: %s does not hold a token (one line of at least 16 characters); delete it for a new one", path)
	}
	return Token{Value: v, Source: path}, nil
}
