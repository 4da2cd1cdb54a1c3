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
