package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"CRM_DSN": "postgres://crm", "EMPTY": ""}
	get := func(k string) string { return env[k] }
	tests := []struct{ name, in, want string }{
		{name: "set", in: "dsn: ${CRM_DSN}", want: "dsn: postgres://crm"},
		{name: "unset", in: "dsn: ${NOPE}", want: "dsn: "},
		{name: "default", in: "url: ${EMPTY:-nats://x:4222}", want: "url: nats://x:4222"},
		{name: "no reference", in: "a: $b {c}", want: "a: $b {c}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Expand(tt.in, get); got != tt.want {
				t.Errorf("Expand(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		edit    func(string) string
		wantErr string
	}{
		{name: "example", env: map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}},
		{name: "missing dsn", env: map[string]string{"CRM_DSN": "postgres://c"}, wantErr: "systems.erp: dsn is empty"},
		{name: "unknown key", env: map[string]string{"CRM_DSN": "c", "ERP_DSN": "e"}, edit: func(s string) string { return s + "\nbogus: 1\n" }, wantErr: "bogus"},
		{name: "flow to unknown system", env: map[string]string{"CRM_DSN": "c", "ERP_DSN": "e"},
			edit: func(s string) string { return strings.Replace(s, "to: erp", "to: billing", 1) }, wantErr: `flows.to-erp: to "billing" is not a configured system`},
		{name: "negative max_wait", env: map[string]string{"CRM_DSN": "c", "ERP_DSN": "e"},
			edit: func(s string) string { return strings.Replace(s, "max_wait: 5m", "max_wait: -1s", 1) }, wantErr: "flows.to-crm: max_wait and wait_alert_after must not be negative"},
	}
	src, err := os.ReadFile("../../examples/order-to-cash/duplex.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := string(src)
			if tt.edit != nil {
				text = tt.edit(text)
			}
			path := filepath.Join(t.TempDir(), "duplex.yaml")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Systems["crm"].DSN != "postgres://c" || c.NATS.URL != "" || c.Flows[0].Origin != "duplex_to_erp" {
				t.Errorf("config = %+v", c)
			}
			// to-erp takes the defaults, to-crm names them.
			for _, f := range c.Flows {
				if f.MaxWait != 5*time.Minute || f.WaitAlertAfter != 30*time.Second {
					t.Errorf("flow %s: max_wait %s, wait_alert_after %s, want 5m0s and 30s", f.Name, f.MaxWait, f.WaitAlertAfter)
				}
			}
			if got := c.MappingPath(); got != filepath.Join(filepath.Dir(path), "mapping.yaml") {
				t.Errorf("MappingPath = %s", got)
			}
			if got := c.OriginsInto("crm"); len(got) != 2 || got[0] != "duplex_to_crm" || got[1] != "duplex_to_crm_tool" {
				t.Errorf("OriginsInto(crm) = %v, want [duplex_to_crm duplex_to_crm_tool]", got)
			}
			if got := c.Sources(); len(got) != 2 || got[0] != "crm" || got[1] != "erp" {
				t.Errorf("Sources = %v, want [crm erp]", got)
			}
		})
	}
}
