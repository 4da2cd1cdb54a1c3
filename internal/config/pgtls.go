package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresTLS says how a connection made with dsn protects itself, as
// pgx reads it (the sslmode, sslrootcert, … parameters, and the PGSSLMODE,
// PGSSLROOTCERT environment variables libpq also reads; pgx's default is
// sslmode=prefer): verified is true when every TCP host of dsn is reached
// over TLS with the server's certificate checked against a CA
// (sslmode=verify-full, verify-ca, or require with sslrootcert, which
// libpq treats as verify-ca). A Unix-domain socket counts as verified:
// PostgreSQL offers no TLS there and the connection does not leave the
// machine. how describes the other cases in a few words naming the
// sslmode, for a warning; it never holds any part of dsn. err is set
// when pgx cannot read dsn (its text holds no part of dsn either).
func PostgresTLS(dsn string) (verified bool, how string, err error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		// pgx quotes the connection string in its error, password
		// masked at best effort; give only what went wrong beneath.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			if inner := errors.Unwrap(pe); inner != nil {
				return false, "", fmt.Errorf("dsn cannot be read: %w", inner)
			}
		}
		return false, "", errors.New("dsn cannot be read by pgx (not shown: it may hold a password)")
	}
	type hostTLS struct {
		unix, plain, unchecked bool
	}
	var hosts []hostTLS
	add := func(host string, port uint16, t *tls.Config) {
		network, _ := pgconn.NetworkAddress(host, port)
		hosts = append(hosts, hostTLS{unix: network == "unix", plain: t == nil,
			// verify-ca checks the chain itself in VerifyPeerCertificate
			unchecked: t != nil && t.InsecureSkipVerify && t.VerifyPeerCertificate == nil})
	}
	add(cfg.Host, cfg.Port, cfg.TLSConfig)
	for _, f := range cfg.Fallbacks {
		add(f.Host, f.Port, f.TLSConfig)
	}
	var plain, unchecked bool
	firstPlain := false
	for i, h := range hosts {
		if h.unix {
			continue
		}
		plain = plain || h.plain
		unchecked = unchecked || h.unchecked
		if i == 0 {
			firstPlain = h.plain
		}
	}
	switch {
	case !plain && !unchecked:
		return true, "", nil
	case plain && unchecked && firstPlain:
		how = "plaintext unless the server insists on TLS, whose certificate is then not checked (sslmode=allow)"
	case plain && unchecked:
		how = "TLS when the server offers it, without checking its certificate, and plaintext otherwise (sslmode=prefer, pgx's default)"
	case plain:
		how = "no TLS (sslmode=disable): the password and every row travel in clear"
	default:
		how = "TLS without checking the server's certificate (sslmode=require without sslrootcert): anyone on the path can pose as the server"
	}
	return false, how, nil
}

// tlsAdvice is what a warning or refusal about a system's TLS tells the
// operator to do.
const tlsAdvice = "set sslmode=verify-full and sslrootcert=<file of the CA that signed the server's certificate> in its dsn"

// checkTLS refuses a system with require_tls whose dsn is not verified
// TLS (PostgresTLS).
func (s *SystemConfig) checkTLS(name string) error {
	if !s.RequireTLS {
		return nil
	}
	ok, how, err := PostgresTLS(s.DSN)
	if err != nil {
		return fmt.Errorf("systems.%s: require_tls: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("systems.%s: require_tls is set, but its dsn asks for %s; %s", name, how, tlsAdvice)
	}
	return nil
}

// TLSWarning returns a warning naming the system when its dsn is not
// verified TLS (PostgresTLS), "" when it is. With require_tls such a
// configuration is refused by Validate instead.
func (s *SystemConfig) TLSWarning(name string) string {
	ok, how, err := PostgresTLS(s.DSN)
	switch {
	case err != nil:
		return fmt.Sprintf("system %s: %s", name, strings.TrimSpace(err.Error()))
	case ok:
		return ""
	}
	return fmt.Sprintf("system %s: the connection to PostgreSQL is not verified TLS: its dsn asks for %s; %s, and require_tls: true to refuse to start without it", name, how, tlsAdvice)
}
