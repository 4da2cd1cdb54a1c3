package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoad_HTTP: the listener's section expands its token from the
// environment, refuses a short one or half a TLS pair, and never quotes
// the token in an error.
func TestLoad_HTTP(t *testing.T) {
	src, err := os.ReadFile("../../examples/order-to-cash/duplex.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, section, token, wantErr string
	}{
		{name: "none"},
		{name: "token from the environment", section: "http:\n  token: ${DUPLEX_HTTP_TOKEN}\n", token: "a-long-enough-token-0123"},
		{name: "short token", section: "http:\n  token: ${DUPLEX_HTTP_TOKEN}\n", token: "short-tok", wantErr: "http.token: 9 characters; want at least 16"},
		{name: "token with a space", section: "http:\n  token: ${DUPLEX_HTTP_TOKEN}\n", token: "a long enough token 0123", wantErr: "printable ASCII"},
		{name: "half a TLS pair", section: "http:\n  tls_cert: cert.pem\n", wantErr: "set both"},
		{name: "TLS pair", section: "http:\n  tls_cert: cert.pem\n  tls_key: key.pem\n"},
		{name: "unknown key", section: "http:\n  tokn: x\n", wantErr: "tokn"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e", "DUPLEX_HTTP_TOKEN": tt.token}
			path := filepath.Join(t.TempDir(), "duplex.yaml")
			if err := os.WriteFile(path, append(src, []byte("\n"+tt.section)...), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path, func(k string) string { return env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load: %v, want an error containing %q", err, tt.wantErr)
				}
				if tt.token != "" && strings.Contains(err.Error(), tt.token) {
					t.Errorf("the error quotes the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.HTTP.Token != tt.token {
				t.Errorf("http.token = %q, want %q", c.HTTP.Token, tt.token)
			}
		})
	}
}
