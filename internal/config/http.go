package config

import "unicode"

// HTTP configures the listener of `duplex run --listen` (package ops):
// /metrics, /healthz and /readyz answer anyone who reaches it; /api/* and
// the status page need the bearer token.
type HTTP struct {
	// Token is the bearer token of /api/* and the status page (at least
	// 16 characters; put it in the environment: token: ${DUPLEX_HTTP_TOKEN}).
	// Empty: duplex generates one at its first start and keeps it in
	// <data dir>/http.token (mode 0600), where the command-line tools of
	// the same data directory read it.
	Token string `yaml:"token"`
	// TLSCert and TLSKey are PEM files (relative to the working
	// directory): set both to serve HTTPS; the command-line tools then
	// connect with https:// and trust the system's roots and the
	// certificates of TLSCert.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
}

// minTokenLength is the shortest configured token accepted.
const minTokenLength = 16

func (h *HTTP) validate(bad func(format string, args ...any)) {
	if h.Token != "" && len(h.Token) < minTokenLength {
		bad("http.token: %d characters; want at least %d (or leave it empty for a generated one)", len(h.Token), minTokenLength)
	}
	for _, r := range h.Token {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || r == ' ' {
			bad("http.token: only printable ASCII without spaces can travel in an Authorization header")
			break
		}
	}
	if (h.TLSCert == "") != (h.TLSKey == "") {
		bad("http.tls_cert and http.tls_key: set both to serve HTTPS, or neither")
	}
}

// TLS says whether the listener serves HTTPS.
func (h *HTTP) TLS() bool { return h.TLSCert != "" }
