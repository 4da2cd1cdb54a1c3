package config

import (
	"strings"
	"testing"
)

func TestPostgresTLS(t *testing.T) {
	tests := []struct {
		name, dsn    string
		wantVerified bool
		wantHow      string
		wantErr      string
	}{
		{name: "pgx default is prefer", dsn: "postgres://u:pw@db.example:5432/crm", wantHow: "sslmode=prefer"},
		{name: "disable", dsn: "postgres://u:pw@db.example/crm?sslmode=disable", wantHow: "sslmode=disable"},
		{name: "allow", dsn: "host=db.example user=u password=pw sslmode=allow", wantHow: "sslmode=allow"},
		{name: "require", dsn: "postgres://u:pw@db.example/crm?sslmode=require", wantHow: "sslmode=require"},
		{name: "verify-full with the system's roots", dsn: "postgres://u:pw@db.example/crm?sslmode=verify-full", wantVerified: true},
		{name: "verify-ca", dsn: "postgres://u:pw@db.example/crm?sslmode=verify-ca", wantVerified: true},
		{name: "unix socket", dsn: "host=/var/run/postgresql user=u dbname=crm sslmode=disable", wantVerified: true},
		{name: "several hosts", dsn: "postgres://u:pw@a.example,b.example/crm?sslmode=verify-full", wantVerified: true},
		{name: "missing CA file", dsn: "postgres://u:secretpw@db.example/crm?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", wantErr: "nonexistent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PGSSLMODE", "")
			t.Setenv("PGSSLROOTCERT", "")
			ok, how, err := PostgresTLS(tt.dsn)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "secretpw") {
					t.Fatalf("err %v, want one naming %q without the password", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.wantVerified || !strings.Contains(how, tt.wantHow) {
				t.Errorf("verified %v, how %q; want %v, %q", ok, how, tt.wantVerified, tt.wantHow)
			}
			if strings.Contains(how, "pw") && !tt.wantVerified {
				t.Errorf("how %q shows part of the dsn", how)
			}
		})
	}
}

func TestValidate_RequireTLS(t *testing.T) {
	t.Setenv("PGSSLMODE", "")
	base := func(dsn string) *Config {
		return &Config{Mapping: "m.yaml", Systems: map[string]*SystemConfig{
			"crm": {DSN: dsn, RequireTLS: true},
			"erp": {DSN: "postgres://u@erp.example/erp?sslmode=verify-full"},
		}, Flows: []*Flow{{Name: "to-erp", From: "crm", To: "erp"}}}
	}
	err := base("postgres://u:topsecret@crm.example/crm?sslmode=prefer").Validate()
	if err == nil || !strings.Contains(err.Error(), "systems.crm: require_tls is set") || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("require_tls with sslmode=prefer: %v", err)
	}
	if err := base("postgres://u:topsecret@crm.example/crm?sslmode=verify-full").Validate(); err != nil {
		t.Errorf("require_tls with verify-full: %v", err)
	}
}
