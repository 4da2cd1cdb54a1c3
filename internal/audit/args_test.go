package audit

import (
	"slices"
	"testing"
)

func TestRedactArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		secrets []string
		want    []string
	}{
		{name: "nothing secret", args: []string{"dlq", "retry", "12", "--config", "duplex.yaml"}, want: []string{"dlq", "retry", "12", "--config", "duplex.yaml"}},
		{name: "flag value after", args: []string{"replay", "--token", "s3cr3t", "--flow", "to-erp"}, want: []string{"replay", "--token", "xxxxx", "--flow", "to-erp"}},
		{name: "flag value joined", args: []string{"--nats-password=pw", "--nkey-seed=SUAB", "--crm-dsn=postgres://u:pw@h/db"}, want: []string{"--nats-password=xxxxx", "--nkey-seed=xxxxx", "--crm-dsn=xxxxx"}},
		{name: "a URL with user information", args: []string{"nats://u:pw@nats.example:4222"}, want: []string{"nats://nats.example:4222"}},
		{name: "configured secrets anywhere", args: []string{"backfill", "--where", "note = 'hunter2hunter2'"}, secrets: []string{"hunter2hunter2"}, want: []string{"backfill", "--where", "note = 'xxxxx'"}},
		{name: "the longer secret first", args: []string{"a=pwXYZ"}, secrets: []string{"pw", "pwXYZ"}, want: []string{"a=xxxxx"}},
		{name: "an unreadable URL", args: []string{"x=postgres://u:pw@h/db"}, want: []string{"(address not shown)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RedactArgs(tt.args, tt.secrets...); !slices.Equal(got, tt.want) {
				t.Errorf("RedactArgs(%q) = %q, want %q", tt.args, got, tt.want)
			}
		})
	}
}
