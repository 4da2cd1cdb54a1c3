package config

import (
	"strings"
	"testing"
)

func TestConfig_ValidateNames(t *testing.T) {
	tests := []struct {
		name        string
		slot, pub   string
		wantErr     string
		wantSlot    string
		wantPublish string
	}{
		{name: "defaults", wantSlot: "duplex_crm", wantPublish: "duplex_crm"},
		{name: "quoted publication", slot: "duplex_crm_1", pub: `DuplexPub "EU"`, wantSlot: "duplex_crm_1", wantPublish: `DuplexPub "EU"`},
		{name: "upper-case slot", slot: "DuplexSlot", wantErr: `systems.crm: slot "DuplexSlot": a replication slot name may contain only lower-case letters, digits and underscores`},
		{name: "slot with a space", slot: "duplex slot", wantErr: `slot "duplex slot"`},
		{name: "slot with a hyphen", slot: "duplex-crm", wantErr: `slot "duplex-crm"`},
		{name: "slot of 63 characters", slot: strings.Repeat("s", 63), wantSlot: strings.Repeat("s", 63), wantPublish: "duplex_crm"},
		{name: "slot of 64 characters", slot: strings.Repeat("s", 64), wantErr: "at most 63 characters"},
		{name: "publication of 64 bytes", pub: strings.Repeat("p", 64), wantErr: "systems.crm: publication \"" + strings.Repeat("p", 64) + "\" is 64 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Mapping: "m.yaml", Systems: map[string]*SystemConfig{"crm": {DSN: "postgres://x", Slot: tt.slot, Publication: tt.pub}, "erp": {DSN: "postgres://y"}},
				Flows: []*Flow{{Name: "to-erp", From: "crm", To: "erp"}}}
			err := c.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := c.Systems["crm"]; s.Slot != tt.wantSlot || s.Publication != tt.wantPublish {
				t.Errorf("slot %q publication %q, want %q %q", s.Slot, s.Publication, tt.wantSlot, tt.wantPublish)
			}
		})
	}
}
