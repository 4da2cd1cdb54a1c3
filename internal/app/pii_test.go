package app

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/transform"
)

// TestCheckKeys: a mapping with pii: true fields is refused without a key,
// with a current_key the keys lack (naming it), and with a key file others
// may read; with keys it passes, and no error shows a key.
func TestCheckKeys(t *testing.T) {
	b, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := transform.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !m.HasPII() {
		t.Fatal("the example mapping marks no field pii: true")
	}
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	dir := t.TempDir()
	for _, tc := range []struct {
		name             string
		file             string
		mode             os.FileMode
		env, current     string
		wantErr, notWant string
	}{
		{name: "no key", wantErr: "customer.email"},
		{name: "missing current", file: "k1 " + key, mode: 0o600, current: "k9", wantErr: "current key k9 is not among the keys (k1)"},
		{name: "readable file", file: "k1 " + key, mode: 0o644, wantErr: "chmod 600"},
		{name: "file", file: "k1 " + key, mode: 0o600},
		{name: "env", env: "k1 " + key + "; k2 " + key, current: "k1"},
		{name: "env unset", env: "", wantErr: "DUPLEX_PII_KEYS is unset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := "mapping: m.yaml\nflows: [{name: to-erp, from: crm, to: erp}]\nsystems: {crm: {dsn: x}, erp: {dsn: y}}\npii:\n"
			if tc.file != "" {
				p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".keys")
				if err := os.WriteFile(p, []byte(tc.file+"\n"), tc.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, tc.mode); err != nil {
					t.Fatal(err)
				}
				y += "  keys_file: " + p + "\n"
			}
			if tc.name == "env" || tc.name == "env unset" {
				y += "  key_env: DUPLEX_PII_KEYS\n"
			}
			if tc.current != "" {
				y += "  current_key: " + tc.current + "\n"
			}
			cp := filepath.Join(dir, "c.yaml")
			if err := os.WriteFile(cp, []byte(y), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(cp, func(k string) string {
				if k == "DUPLEX_PII_KEYS" {
					return tc.env
				}
				return ""
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = checkKeys(cfg, m)
			if (err != nil) != (tc.wantErr != "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("checkKeys: %v, want %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), key) {
				t.Fatalf("error shows a key: %v", err)
			}
		})
	}
}
