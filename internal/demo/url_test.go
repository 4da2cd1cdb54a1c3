package demo

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/config"
)

// TestWithNATSURL: the example configuration with its nats section
// replaced connects to $NATS_URL, and refuses to start without it.
func TestWithNATSURL(t *testing.T) {
	cb, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/duplex.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ub, err := withNATSURL(cb)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "duplex-url.yaml")
	if err := os.WriteFile(path, ub, 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e", "NATS_URL": "nats://127.0.0.1:4222"}
	c, err := config.Load(path, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL != "nats://127.0.0.1:4222" || c.NATS.Embedded.Enabled || len(c.Flows) != 2 {
		t.Errorf("nats = %+v, flows %d", c.NATS, len(c.Flows))
	}
	delete(env, "NATS_URL")
	if _, err := config.Load(path, func(k string) string { return env[k] }); err == nil {
		t.Error("loaded without NATS_URL")
	}
}

// TestWithSigningKeys: the URL configuration names one signing key per
// system, generated once in a directory every process that uses it
// shares, so that an active and a standby instance with data directories
// of their own sign with, and trust, the same keys.
func TestWithSigningKeys(t *testing.T) {
	cb, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/duplex.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ub, err := withSigningKeys(cb, filepath.Join(dir, "signing"), []string{"crm", "erp"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "duplex.yaml")
	if err := os.WriteFile(path, ub, 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}
	c, err := config.Load(path, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"crm", "erp"} {
		sys := c.Systems[s]
		if sys.SigningKey != filepath.Join(dir, "signing", s+".nk") || len(sys.SigningPublicKeys) != 1 {
			t.Fatalf("systems.%s: signing_key %q, signing_public_keys %q", s, sys.SigningKey, sys.SigningPublicKeys)
		}
		if fi, err := os.Stat(sys.SigningKey); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v; want a 0600 seed", sys.SigningKey, fi.Mode().Perm())
		}
		if b, err := os.ReadFile(sys.SigningPublicKeys[0]); err != nil || len(b) < 56 || b[0] != 'U' {
			t.Errorf("%s: %q, %v; want a public nkey", sys.SigningPublicKeys[0], b, err)
		}
	}
}
