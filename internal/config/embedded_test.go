package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoad_Embedded(t *testing.T) {
	const base = `mapping: mapping.yaml
systems:
  crm: {dsn: postgres://c}
  erp: {dsn: postgres://e}
flows:
  - {name: to-erp, from: crm, to: erp}
`
	tests := []struct {
		name         string
		nats         string
		wantErr      string
		wantAlways   bool
		wantInterval time.Duration
		check        func(e Embedded) bool
	}{
		{name: "defaults", nats: "embedded: {host: 127.0.0.1, port: 4222}", wantAlways: true},
		{name: "sync always", nats: "embedded: {sync: always}", wantAlways: true},
		{name: "sync interval", nats: "embedded: {sync: 30s}", wantInterval: 30 * time.Second},
		{name: "all keys", nats: `embedded:
    store_dir: /var/lib/duplex/js
    sync: always
    max_payload: 1048576
    max_store: 1073741824
    max_memory: 0
    users:
      - {user: duplex, password: pw, publish: {allow: ["$JS.API.>", "duplex.>"]}, subscribe: {deny: [secret]}}
      - {nkey: UCNGL4W5QX66CFX6A6DCBVDH5VOHMI7B2UZZU7TXAUQQSI2JPHULCKBR}`, wantAlways: true,
			check: func(e Embedded) bool {
				return e.StoreDir == "/var/lib/duplex/js" && e.MaxPayload == 1<<20 && e.MaxStore == 1<<30 && len(e.Users) == 2 &&
					e.Users[0].Publish.Allow[1] == "duplex.>" && e.Users[0].Subscribe.Deny[0] == "secret" && e.Users[1].Nkey != ""
			}},
		{name: "bad sync", nats: "embedded: {sync: sometimes}", wantErr: `nats.embedded.sync "sometimes": want always or a positive interval`},
		{name: "zero sync interval", nats: "embedded: {sync: 0s}", wantErr: `nats.embedded.sync "0s"`},
		{name: "negative max payload", nats: "embedded: {max_payload: -1}", wantErr: "nats.embedded.max_payload -1: want 1 to 67108864 bytes"},
		{name: "max payload too large", nats: "embedded: {max_payload: 100000000}", wantErr: "nats.embedded.max_payload 100000000"},
		{name: "negative max store", nats: "embedded: {max_store: -5}", wantErr: "nats.embedded.max_store -5"},
		{name: "negative max memory", nats: "embedded: {max_memory: -5}", wantErr: "nats.embedded.max_memory -5"},
		{name: "user without password", nats: "embedded: {users: [{user: duplex}]}", wantErr: "nats.embedded.users[0]: duplex has no password"},
		{name: "extra user", nats: "embedded: {users: [{user: ops, password: pw}]}", wantAlways: true,
			check: func(e Embedded) bool { return e.Enabled && len(e.Users) == 1 }},
		{name: "embedded true", nats: "embedded: true", wantAlways: true, check: func(e Embedded) bool { return e.Enabled }},
		{name: "encryption key", nats: "embedded: {encryption_key: a-random-secret-of-32-characters}", wantAlways: true,
			check: func(e Embedded) bool { return e.EncryptionKey == "a-random-secret-of-32-characters" }},
		{name: "encryption key from an unset variable", nats: "embedded:\n    encryption_key: ${DUPLEX_JS_KEY}", wantErr: "nats.embedded.encryption_key is empty"},
		{name: "short encryption key", nats: "embedded: {encryption_key: short}", wantErr: "nats.embedded.encryption_key has 5 characters"},
		{name: "external server ignores users", nats: "url: nats://nats:4222\n  embedded: {users: [{user: ops, password: pw}]}", wantAlways: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "duplex.yaml")
			if err := os.WriteFile(path, []byte(base+"nats:\n  "+tt.nats+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path, func(string) string { return "" })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			always, interval := c.NATS.Embedded.SyncPolicy()
			if always != tt.wantAlways || interval != tt.wantInterval {
				t.Errorf("SyncPolicy() = %v, %s, want %v, %s", always, interval, tt.wantAlways, tt.wantInterval)
			}
			if tt.check != nil && !tt.check(c.NATS.Embedded) {
				t.Errorf("embedded = %+v", c.NATS.Embedded)
			}
		})
	}
}
