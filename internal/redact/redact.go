package redact

import (
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// unknown stands for an address that cannot be parsed with certainty.
const unknown = "(address not shown)"

// URL returns each URL of a comma-separated list (as NATS accepts) as
// scheme://host:port, dropping user, password or token, path and query.
// A URL without a scheme is read as host:port. What cannot be parsed is
// replaced by "(address not shown)": it may hold a secret in a place the
// parser did not recognise.
func URL(s string) string {
	if s == "" {
		return ""
	}
	parts := strings.Split(s, ",")
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		out = append(out, oneURL(strings.TrimSpace(p)))
	}
	return strings.Join(out, ",")
}

func oneURL(s string) string {
	if s == "" {
		return unknown
	}
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return unknown
	}
	host := u.Hostname()
	if host == "" || strings.ContainsAny(host, "@/?#") {
		return unknown
	}
	if port := u.Port(); port != "" {
		return u.Scheme + "://" + net.JoinHostPort(host, port)
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return u.Scheme + "://" + host
}

// DSN returns a PostgreSQL connection string (URL or key=value form) as
// postgres://host:port, the first host of a multi-host string followed by
// "+N" for the N others. The user, password, database and every parameter
// are dropped. What pgx cannot parse is replaced by "(address not shown)".
func DSN(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return unknown
	}
	addr := func(host string, port uint16) string {
		if strings.HasPrefix(host, "/") {
			host = "unix:" + host
		}
		return net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	first := addr(cfg.Host, cfg.Port)
	others := map[string]bool{}
	for _, f := range cfg.Fallbacks { // sslmode=prefer adds the same host without TLS
		if a := addr(f.Host, f.Port); a != first {
			others[a] = true
		}
	}
	out := "postgres://" + first
	if len(others) > 0 {
		out += "+" + strconv.Itoa(len(others))
	}
	return out
}

// Error returns err with every occurrence of the given secrets (URLs,
// passwords, tokens; empty ones are skipped) replaced by "xxxxx", for an
// error from a library that may quote what it was given. It keeps err's
// chain for errors.Is and errors.As when nothing is replaced.
func Error(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	out := msg
	for _, s := range secrets {
		if s != "" {
			out = strings.ReplaceAll(out, s, "xxxxx")
		}
	}
	if out == msg {
		return err
	}
	return redacted{msg: out, err: err}
}

// redacted is an error whose text has secrets removed; Unwrap keeps the
// cause for errors.Is and errors.As (whose own text may hold them).
type redacted struct {
	msg string
	err error
}

func (r redacted) Error() string { return r.msg }
func (r redacted) Unwrap() error { return r.err }
