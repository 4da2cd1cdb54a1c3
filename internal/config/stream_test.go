package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestStream_validate(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    Stream
		wantErr string
	}{
		{name: "retention keys", yaml: "max_age: 20s\nmax_bytes: 1000\nmax_store_bytes: 4000\ndlq_max_age: 48h\n",
			want: Stream{MaxAge: 20 * time.Second, MaxBytes: 1000, MaxStoreBytes: 4000, DLQMaxAge: 48 * time.Hour}},
		{name: "defaults", yaml: "{}\n"},
		{name: "dlq kept forever", yaml: "dlq_max_age: -1s\n", want: Stream{DLQMaxAge: -time.Second}},
		{name: "negative max age", yaml: "max_age: -1s\n", wantErr: "stream.max_age -1s"},
		{name: "negative ceiling", yaml: "max_store_bytes: -1\n", wantErr: "stream.max_store_bytes -1"},
		{name: "max bytes above ceiling", yaml: "max_bytes: 5000\nmax_store_bytes: 4000\n", wantErr: "stream.max_bytes 5000 is above stream.max_store_bytes 4000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Stream
			if err := yaml.Unmarshal([]byte(tt.yaml), &s); err != nil {
				t.Fatal(err)
			}
			var errs []error
			s.validate(func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) })
			err := errors.Join(errs...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("validate error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s != tt.want {
				t.Errorf("stream = %+v, want %+v", s, tt.want)
			}
		})
	}
}
