package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
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

func TestExpand_Escape(t *testing.T) {
	get := func(k string) string { return "v" + k }
	tests := []struct{ name, in, want string }{
		{name: "escaped", in: "$${X}", want: "${X}"},
		{name: "escaped then expanded", in: "$${X}${Y}", want: "${X}vY"},
		{name: "escaped default", in: "$${X:-d}", want: "${X:-d}"},
		{name: "dollar before a reference", in: "a$b${X}", want: "a$bvX"},
		{name: "unterminated", in: "${X", want: "${X"},
		{name: "not a name", in: "${1X} ${} ${X-y}", want: "${1X} ${} ${X-y}"},
		{name: "value not expanded again", in: "${R}", want: "vR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Expand(tt.in, get); got != tt.want {
				t.Errorf("Expand(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	if got := Expand("${R}", func(string) string { return "${X}" }); got != "${X}" {
		t.Errorf("Expand expanded a value again: %q", got)
	}
}

// TestLoad_Expansion: references are expanded after the YAML is parsed, in
// string values only, so a value with YAML syntax in it arrives as it is
// and changes nothing else.
func TestLoad_Expansion(t *testing.T) {
	src, err := os.ReadFile("../../examples/order-to-cash/duplex.yaml")
	if err != nil {
		t.Fatal(err)
	}
	secret := "postgres://duplex:p#ss \"q\" 'r': s\n  t: u\n- v@crm/crm # not a comment"
	load := func(t *testing.T, text string, env map[string]string) (*Config, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "duplex.yaml")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(path, func(k string) string { return env[k] })
	}
	tests := []struct {
		name    string
		edit    func(string) string
		env     map[string]string
		want    func(*Config) // base edited to what the load should give
		wantErr string
	}{
		{name: "secret with YAML syntax, plain", env: map[string]string{"CRM_DSN": secret, "ERP_DSN": "postgres://e"},
			want: func(c *Config) { c.Systems["crm"].DSN = secret }},
		{name: "secret with YAML syntax, double quoted", edit: func(s string) string { return strings.Replace(s, "dsn: ${CRM_DSN}", `dsn: "${CRM_DSN}"`, 1) },
			env: map[string]string{"CRM_DSN": secret, "ERP_DSN": "postgres://e"}, want: func(c *Config) { c.Systems["crm"].DSN = secret }},
		{name: "secret with YAML syntax, single quoted", edit: func(s string) string { return strings.Replace(s, "dsn: ${CRM_DSN}", `dsn: '${CRM_DSN}'`, 1) },
			env: map[string]string{"CRM_DSN": secret, "ERP_DSN": "postgres://e"}, want: func(c *Config) { c.Systems["crm"].DSN = secret }},
		{name: "secret that reads as null or a number stays text", env: map[string]string{"CRM_DSN": "null", "ERP_DSN": "0x1F"},
			want: func(c *Config) { c.Systems["crm"].DSN, c.Systems["erp"].DSN = "null", "0x1F" }},
		{name: "escaped reference", edit: func(s string) string {
			return strings.Replace(s, "publication: duplex_crm", "publication: $${CRM_PUB}", 1)
		},
			env:  map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e", "CRM_PUB": "expanded"},
			want: func(c *Config) { c.Systems["crm"].Publication = "${CRM_PUB}" }},
		{name: "slot name PostgreSQL refuses", edit: func(s string) string { return strings.Replace(s, "slot: duplex_crm", "slot: Duplex-CRM", 1) },
			env: map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}, wantErr: `systems.crm: slot "Duplex-CRM": a replication slot name may contain only lower-case letters`},
		{name: "number from the environment", edit: func(s string) string { return strings.Replace(s, "port: 4222", "port: ${NATS_PORT}", 1) },
			env:  map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e", "NATS_PORT": "4333"},
			want: func(c *Config) { c.NATS.Embedded.Port = 4333 }},
		{name: "unset number is empty", edit: func(s string) string { return strings.Replace(s, "port: 4222", "port: ${NATS_PORT}", 1) },
			env: map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}, want: func(c *Config) { c.NATS.Embedded.Port = 0 }},
		{name: "keys are not expanded", edit: func(s string) string { return strings.Replace(s, "  crm:\n", "  ${SYS}:\n", 1) },
			env: map[string]string{"SYS": "crm", "CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}, wantErr: `from "crm" is not a configured system`},
		{name: "unknown nested key", edit: func(s string) string {
			return strings.Replace(s, "slot: duplex_crm", "slot: duplex_crm\n    bogus_nested: 1", 1)
		},
			env: map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"}, wantErr: "field bogus_nested not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := string(src)
			if tt.edit != nil {
				text = tt.edit(text)
			}
			got, err := load(t, text, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want, err := load(t, string(src), map[string]string{"CRM_DSN": "postgres://c", "ERP_DSN": "postgres://e"})
			if err != nil {
				t.Fatal(err)
			}
			tt.want(want)
			got.dir, want.dir = "", ""
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load =\n%s\nwant\n%s", dump(got), dump(want))
			}
		})
	}
}

func dump(c *Config) string {
	b, _ := json.MarshalIndent(c, "", "  ")
	return string(b)
}
