package transform_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/duplex-cdc/duplex/transform"
)

func TestMapping_CheckIncoming(t *testing.T) {
	m := loadExample(t)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	key := "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01"
	ev := func(source, entity string, op transform.Op, data map[string]any) *transform.Event {
		return &transform.Event{Version: 1, ID: source + ":0/10:0", Source: source, Entity: entity, Op: op, Key: key,
			Pos: transform.Position{LSN: 16, CommitTime: now.Add(-time.Second)}, Data: data}
	}
	future := ev("crm", "customer", transform.OpUpsert, map[string]any{"account_id": key, "email": "a@example.com"})
	future.Pos.CommitTime = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	futureVersion := ev("crm", "customer", transform.OpUpsert, map[string]any{"account_id": key, "email": "a@example.com"})
	futureVersion.Versions = map[string]transform.FieldVersion{"email": {Source: "crm", At: now.Add(2 * time.Minute)}}
	unknownVersion := ev("crm", "customer", transform.OpUpsert, map[string]any{"name": "x"})
	unknownVersion.Version = 2
	tests := []struct {
		name         string
		ev           *transform.Event
		source, to   string
		wantField    string
		wantContains string
	}{
		{"crm fields to erp", ev("crm", "customer", transform.OpUpsert, map[string]any{"account_id": key, "name": "ACME", "email": "a@example.com"}), "crm", "erp", "", ""},
		{"erp write-back to crm", ev("erp", "customer", transform.OpUpsert, map[string]any{"account_id": key, "customer_no": "7"}), "erp", "crm", "", ""},
		{"delete by the key's owner", ev("crm", "customer", transform.OpDelete, nil), "crm", "erp", "", ""},
		{"shared field within the skew", ev("crm", "customer", transform.OpUpsert, map[string]any{"email": "a@example.com"}), "crm", "erp", "", ""},
		{"forged source", ev("erp", "customer", transform.OpUpsert, map[string]any{"payment_terms": "net 90"}), "crm", "erp", "", "names source \"erp\""},
		{"field the target owns", ev("crm", "customer", transform.OpUpsert, map[string]any{"account_id": key, "payment_terms": "net 90"}), "crm", "erp", "payment_terms", "owned by erp"},
		{"delete by a system that does not own the key", ev("erp", "customer", transform.OpDelete, nil), "erp", "crm", "", "crm owns the entity's key"},
		{"truncate refused by the mapping", ev("crm", "order", transform.OpTruncate, nil), "crm", "erp", "", "does not propagate truncates"},
		{"shared field dated 2099", future, "crm", "erp", "email", "2099-01-01T00:00:00Z"},
		{"recorded version beyond the skew", futureVersion, "crm", "erp", "email", "recorded version"},
		{"unknown entity", ev("crm", "nothing", transform.OpUpsert, nil), "crm", "erp", "", "no such entity"},
		{"entity the source does not publish", ev("crm", "invoice", transform.OpUpsert, map[string]any{"amount": "1"}), "crm", "erp", "", "does not carry this entity"},
		{"unknown schema version", unknownVersion, "crm", "erp", "", "schema version 2"},
		{"unknown operation", ev("crm", "customer", transform.Op("drop"), nil), "crm", "erp", "", "unknown operation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := m.CheckIncoming(tt.ev, tt.source, tt.to, now, time.Minute)
			if tt.wantContains == "" {
				if err != nil {
					t.Fatalf("CheckIncoming = %v, want nil", err)
				}
				return
			}
			var re *transform.RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("CheckIncoming = %v, want a *RefusedError", err)
			}
			if re.Field != tt.wantField || re.Entity != tt.ev.Entity || re.System != tt.to || !strings.Contains(err.Error(), tt.wantContains) || !strings.Contains(err.Error(), "key") {
				t.Fatalf("CheckIncoming = %v (field %q), want field %q and %q", err, re.Field, tt.wantField, tt.wantContains)
			}
		})
	}
}
