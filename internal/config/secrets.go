package config

import (
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Secrets returns every secret value of the configuration: each
// system's dsn and the password pgx reads from it, the NATS URLs and the
// user information in them, the NATS credentials (passwords, tokens,
// nkey seeds) of the operator, captures and flows, and http.token. A
// caller replaces them in text it shows (audit records, errors of
// libraries that quote what they were given). Empty values are left out.
func (c *Config) Secrets() []string {
	var out []string
	add := func(vs ...string) {
		for _, v := range vs {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, v)
			}
		}
	}
	for _, s := range c.Systems {
		if s == nil {
			continue
		}
		add(s.DSN)
		if pc, err := pgconn.ParseConfig(s.DSN); err == nil {
			add(pc.Password)
		}
	}
	add(c.NATS.URL)
	for _, u := range strings.Split(c.NATS.URL, ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); err == nil && pu.User != nil {
			p, _ := pu.User.Password()
			add(p, pu.User.Username())
		}
	}
	creds := []*Credentials{&c.NATS.Credentials}
	for _, cr := range c.NATS.Captures {
		creds = append(creds, cr)
	}
	for _, cr := range c.NATS.Flows {
		creds = append(creds, cr)
	}
	for _, cr := range creds {
		if cr != nil {
			add(cr.Password, cr.Token, cr.NkeySeed)
		}
	}
	add(c.HTTP.Token)
	return out
}
