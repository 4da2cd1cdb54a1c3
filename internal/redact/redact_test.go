package redact

import (
	"errors"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
	}{
		{"plain", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"user and password", "nats://duplex:s3cret@nats.example:4222", "nats://nats.example:4222"},
		{"token", "nats://t0ken@nats.example:4222", "nats://nats.example:4222"},
		{"tls and path", "tls://u:p@h:4443/x?token=q", "tls://h:4443"},
		{"list", "nats://a:pw@h1:4222, nats://tok@h2:4222", "nats://h1:4222,nats://h2:4222"},
		{"no scheme", "u:pw@h:4222", "nats://h:4222"},
		{"ipv6", "nats://u:pw@[::1]:4222", "nats://[::1]:4222"},
		{"no port", "wss://u:pw@h", "wss://h"},
		{"unparsable", "nats://u:p%zz@h:4222", unknown},
		{"empty", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := URL(c.in); got != c.want {
				t.Errorf("URL(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestDSN(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
	}{
		{"url", "postgres://duplex:s3cret@db.example:5433/crm?sslmode=verify-full&application_name=x", "postgres://db.example:5433"},
		{"prefer adds no host", "postgres://duplex:s3cret@db.example/crm", "postgres://db.example:5432"},
		{"key value", "host=db.example port=6000 user=duplex password=s3cret dbname=crm sslmode=disable", "postgres://db.example:6000"},
		{"multi host", "postgres://u:s3cret@h1:5432,h2:5433/crm?sslmode=disable", "postgres://h1:5432+1"},
		{"password parameter", "postgres://u@h:5432/crm?password=s3cret&sslmode=disable", "postgres://h:5432"},
		{"unparsable", "postgres://u:s3cret@h:notaport/crm", unknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := DSN(c.in)
			if got != c.want {
				t.Errorf("DSN(%q) = %q, want %q", c.in, got, c.want)
			}
			if strings.Contains(got, "s3cret") {
				t.Errorf("DSN(%q) = %q shows the password", c.in, got)
			}
		})
	}
}

func TestError(t *testing.T) {
	cause := errors.New(`parse "nats://duplex:s3cret@h:4222": invalid port`)
	err := Error(cause, "nats://duplex:s3cret@h:4222", "s3cret", "")
	if strings.Contains(err.Error(), "s3cret") || !errors.Is(err, cause) {
		t.Errorf("Error = %q (is cause %v), want the secret out and the cause kept", err, errors.Is(err, cause))
	}
	if plain := errors.New("nothing secret"); Error(plain, "s3cret") != plain {
		t.Error("an error without secrets was replaced")
	}
	if Error(nil, "x") != nil {
		t.Error("Error(nil) != nil")
	}
}
