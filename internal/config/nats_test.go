package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSeed is a user nkey seed for tests.
const testSeed = "SUAPM67TC4RHQLKBX55NIQXSMATZDOZK6FNEOSS36CAYA7F7TY66LP4BOM"

func TestLoad_NATS(t *testing.T) {
	const base = `mapping: mapping.yaml
systems:
  crm: {dsn: postgres://c}
  erp: {dsn: postgres://e}
flows:
  - {name: to-erp, from: crm, to: erp}
  - {name: to-crm, from: erp, to: crm}
`
	tests := []struct {
		name string
		nats string // the nats section, "" for none
		env  map[string]string
		// wantErr are parts of the error; none: the load succeeds.
		wantErr []string
		// notInErr must not appear in the error (a secret).
		notInErr     string
		wantEmbedded bool
	}{
		{name: "no nats section: embedded", wantEmbedded: true},
		{name: "embedded true", nats: "nats:\n  embedded: true", wantEmbedded: true},
		{name: "embedded settings", nats: "nats:\n  embedded: {port: 4222}", wantEmbedded: true},
		{name: "unset NATS_URL is refused", nats: "nats:\n  url: ${NATS_URL}",
			wantErr: []string{"nats.url is empty", "${NATS_URL}", "NATS_URL is unset or empty", "nats.embedded: true"}},
		{name: "unset NATS_URL with embedded settings is refused", nats: "nats:\n  url: ${NATS_URL}\n  embedded: {port: 4222}",
			wantErr: []string{"nats.url is empty", "NATS_URL is unset"}},
		{name: "unset NATS_URL with a default that is empty", nats: "nats:\n  url: ${NATS_URL:-}", wantErr: []string{"nats.url is empty", "NATS_URL"}},
		{name: "empty url", nats: "nats:\n  url: \"\"", wantErr: []string{"nats.url is empty; set it"}},
		{name: "embedded false", nats: "nats:\n  embedded: false", wantErr: []string{"nats.embedded is false and nats.url is not set"}},
		{name: "section without url or embedded", nats: "nats:\n  nkey_seed: " + testSeed, wantErr: []string{"nats: no url"}},
		{name: "credentials with embedded", nats: "nats:\n  embedded: true\n  user: duplex\n  password: pw",
			wantErr: []string{"nats.user/password: these are for a server at nats.url"}},
		{name: "captures with embedded", nats: "nats:\n  embedded: true\n  captures: {crm: {nkey_seed: " + testSeed + "}}", wantErr: []string{"nats.captures"}},
		{name: "url and embedded true", nats: "nats:\n  url: nats://127.0.0.1:4222\n  embedded: true", wantErr: []string{"set one of them"}},
		{name: "url from the environment", nats: "nats:\n  url: ${NATS_URL}", env: map[string]string{"NATS_URL": "nats://127.0.0.1:4222"}},

		// Secrets in clear to another host.
		{name: "password over plain nats to another host", nats: "nats:\n  url: nats://nats.example:4222\n  user: duplex\n  password: s3cret",
			wantErr: []string{"nats: the user and password would be sent in clear to nats://nats.example:4222", "tls://"}, notInErr: "s3cret"},
		{name: "token of a flow over plain nats", nats: "nats:\n  url: nats://10.0.0.5:4222\n  flows: {to-erp: {token: t0ken}}",
			wantErr: []string{"nats.flows.to-erp: the token would be sent in clear to nats://10.0.0.5:4222"}, notInErr: "t0ken"},
		{name: "creds over plain ws", nats: "nats:\n  url: ws://nats.example:8080\n  creds: /etc/duplex/duplex.creds",
			wantErr: []string{"nats: the creds would be sent in clear"}},
		{name: "password in the url", nats: "nats:\n  url: nats://duplex:s3cret@nats.example:4222",
			wantErr: []string{"nats.url nats://nats.example:4222 carries credentials in the URL"}, notInErr: "s3cret"},
		{name: "one plain url of a cluster", nats: "nats:\n  url: tls://a.example:4222,nats://b.example:4222\n  user: duplex\n  password: pw",
			wantErr: []string{"sent in clear to nats://b.example:4222"}},
		{name: "password to loopback", nats: "nats:\n  url: nats://127.0.0.1:4222,nats://localhost:4223,nats://[::1]:4224\n  user: duplex\n  password: pw"},
		{name: "password over tls", nats: "nats:\n  url: tls://nats.example:4222\n  user: duplex\n  password: pw"},
		{name: "password with a CA file", nats: "nats:\n  url: nats://nats.example:4222\n  ca_file: ca.pem\n  user: duplex\n  password: pw"},
		{name: "nkey seed over plain nats", nats: "nats:\n  url: nats://nats.example:4222\n  nkey_seed: " + testSeed},
		{name: "mutual tls", nats: "nats:\n  url: tls://nats.example:4222\n  ca_file: ca.pem\n  cert_file: c.pem\n  key_file: c.key\n  nkey_seed: " + testSeed},
		{name: "client certificate without key", nats: "nats:\n  url: tls://nats.example:4222\n  cert_file: c.pem", wantErr: []string{"nats.cert_file and nats.key_file: set both"}},
		{name: "unknown scheme", nats: "nats:\n  url: http://nats.example:4222", wantErr: []string{`scheme "http"`}},

		// Per-identity credentials.
		{name: "identities", nats: "nats:\n  url: nats://nats.example:4222\n  nkey_seed: " + testSeed + "\n  captures: {crm: {nkey_seed: \"${CRM_SEED}\"}}\n  flows: {to-erp: {nkey_seed_file: /etc/duplex/to-erp.nk}}",
			env: map[string]string{"CRM_SEED": testSeed}},
		{name: "capture of an unknown source", nats: "nats:\n  url: nats://127.0.0.1:4222\n  captures: {billing: {nkey_seed: " + testSeed + "}}",
			wantErr: []string{"nats.captures.billing: there is no capture named billing (configured: crm, erp)"}},
		{name: "identity whose variable is unset", nats: "nats:\n  url: nats://127.0.0.1:4222\n  flows: {to-crm: {nkey_seed: \"${TO_CRM_SEED}\"}}",
			wantErr: []string{"nats.flows.to-crm: no credentials"}},
		{name: "bad seed", nats: "nats:\n  url: nats://127.0.0.1:4222\n  nkey_seed: SUnotaseedatall", wantErr: []string{"nats.nkey_seed: not a nkey seed"}, notInErr: "SUnotaseedatall"},
		{name: "two kinds of credentials", nats: "nats:\n  url: nats://127.0.0.1:4222\n  token: t\n  nkey_seed: " + testSeed, wantErr: []string{"nats: set one of user and password, token"}},
		{name: "password without user", nats: "nats:\n  url: nats://127.0.0.1:4222\n  password: pw", wantErr: []string{"nats.user is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "duplex.yaml")
			if err := os.WriteFile(path, []byte(base+tt.nats+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path, func(k string) string { return tt.env[k] })
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Load succeeded, want an error with %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Load error = %v, want it to contain %q", err, w)
					}
				}
				if tt.notInErr != "" && strings.Contains(err.Error(), tt.notInErr) {
					t.Errorf("Load error shows the secret %q: %v", tt.notInErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.NATS.UsesEmbedded() != tt.wantEmbedded {
				t.Errorf("UsesEmbedded = %v, want %v", c.NATS.UsesEmbedded(), tt.wantEmbedded)
			}
		})
	}
}

func TestLoad_FlowName(t *testing.T) {
	path := filepath.Join(t.TempDir(), "duplex.yaml")
	text := "mapping: m.yaml\nsystems:\n  crm: {dsn: c}\n  erp: {dsn: e}\nflows:\n  - {name: to.erp, from: crm, to: erp}\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "flows.to.erp: a flow name must be one NATS subject token") {
		t.Fatalf("Load error = %v, want the flow name refused", err)
	}
}

// TestLoad_ExampleNATS: the example for a NATS server loads with its
// variables set, and refuses to start without NATS_URL rather than run an
// embedded server.
func TestLoad_ExampleNATS(t *testing.T) {
	for _, file := range []string{"duplex-nats.yaml", "duplex-cluster.yaml"} {
		t.Run(file, func(t *testing.T) {
			path := filepath.Join("..", "..", "examples", "order-to-cash", file)
			env := map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e", "NATS_URL": "nats://nats:4222"}
			for _, v := range []string{"OPERATOR", "CAPTURE_CRM", "CAPTURE_ERP", "FLOW_TO_ERP", "FLOW_TO_CRM"} {
				env["DUPLEX_NATS_"+v+"_SEED"] = testSeed
			}
			c, err := Load(path, func(k string) string { return env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if c.NATS.UsesEmbedded() || len(c.NATS.Captures) != 2 || len(c.NATS.Flows) != 2 || c.NATS.NkeySeed != testSeed {
				t.Errorf("nats = %+v", c.NATS)
			}
			delete(env, "NATS_URL")
			if _, err := Load(path, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "NATS_URL is unset or empty") {
				t.Errorf("without NATS_URL: Load error = %v, want a refusal naming NATS_URL", err)
			}
		})
	}
}
