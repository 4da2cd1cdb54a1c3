package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"
)

// NATS says how to reach JetStream: a server or cluster at URL, or the
// embedded server. The embedded server runs only when the file asks for
// it (nats.embedded: true, or the embedded server's settings under
// nats.embedded) or has no nats section at all; a nats.url that is
// present but empty (an unset ${NATS_URL}) is refused, so that a missing
// variable never turns a production deployment into a local,
// unreplicated JetStream.
type NATS struct {
	// URL is the server or cluster to connect to: one URL or several,
	// comma-separated (nats://, tls://, ws:// or wss://).
	URL string `yaml:"url"`
	// Credentials are the operator identity's: it creates the streams and
	// buckets, runs retention and leases, and is what the command-line
	// tools connect as. A capture or flow without an entry in Captures or
	// Flows connects with these too.
	Credentials `yaml:",inline"`
	// CAFile is the PEM file of the certificate authorities that sign the
	// server's certificate; setting it (or CertFile) makes every
	// connection TLS.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate and its key (PEM)
	// for servers that verify clients (mutual TLS); set both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Captures are the credentials each source's capture connects with,
	// by source name: it may publish only that source's transactions.
	Captures map[string]*Credentials `yaml:"captures"`
	// Flows are the credentials each flow connects with, by flow name: it
	// may read only its own durable consumer.
	Flows map[string]*Credentials `yaml:"flows"`
	// Embedded configures the embedded server.
	Embedded Embedded `yaml:"embedded"`

	// section, urlKey and urlRaw record what the file said before
	// ${ENV} expansion (parse sets them): whether it has a nats section,
	// whether that sets url, and url as written.
	section bool
	urlKey  bool
	urlRaw  string
}

// Credentials identify a client to a NATS server: one of user and
// password, a token, a creds file (JWT and nkey), or a user nkey seed
// (in the file, usually as ${ENV}, or in a file of its own).
type Credentials struct {
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"`
	// Creds is the path of a .creds file (decentralized JWT
	// authentication).
	Creds string `yaml:"creds"`
	// NkeySeed is a user nkey seed ("SU…"); NkeySeedFile the path of a
	// file holding one (as `nk -gen user` writes it). The server knows
	// only the public key, and the client signs the server's nonce with
	// the seed: nothing secret crosses the connection.
	NkeySeed     string `yaml:"nkey_seed"`
	NkeySeedFile string `yaml:"nkey_seed_file"`
}

// Set reports whether any credential is given.
func (c *Credentials) Set() bool {
	return c != nil && (c.User != "" || c.Password != "" || c.Token != "" || c.Creds != "" || c.NkeySeed != "" || c.NkeySeedFile != "")
}

// sendsSecret reports whether authenticating sends something that lets
// whoever reads it connect as this identity: a password, a token, or a
// creds file's JWT. A nkey seed never leaves the process.
func (c *Credentials) sendsSecret() bool {
	return c != nil && (c.Password != "" || c.Token != "" || c.Creds != "")
}

// kind names the credential given, for messages; never its value.
func (c *Credentials) kind() string {
	switch {
	case c.User != "" || c.Password != "":
		return "user and password"
	case c.Token != "":
		return "token"
	case c.Creds != "":
		return "creds"
	}
	return "nkey seed"
}

func (c *Credentials) validate(key string, bad func(format string, args ...any)) {
	n := 0
	for _, set := range []bool{c.User != "" || c.Password != "", c.Token != "", c.Creds != "", c.NkeySeed != "", c.NkeySeedFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		bad("%s: set one of user and password, token, creds, nkey_seed and nkey_seed_file", key)
	}
	if c.User != "" && c.Password == "" {
		bad("%s.password is empty for user %s (set it, or the environment variable it names)", key, c.User)
	}
	if c.Password != "" && c.User == "" {
		bad("%s.user is empty, but a password is set", key)
	}
	if c.NkeySeed != "" {
		if kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(c.NkeySeed))); err != nil {
			bad("%s.nkey_seed: not a nkey seed (%s)", key, nkeyError(err))
		} else if pub, _ := kp.PublicKey(); !strings.HasPrefix(pub, "U") {
			bad("%s.nkey_seed: not a user nkey seed (SU…)", key)
		}
	}
}

// nkeyError is the message of an nkeys error, which never holds the seed.
func nkeyError(err error) string { return err.Error() }

// Embedded configures the in-process NATS server (package natsembed).
// Zero values take natsembed's defaults. In the file it is either a
// boolean (nats.embedded: true) or these settings, which also ask for the
// embedded server.
type Embedded struct {
	// Enabled asks for the embedded server (nats.embedded: true, or any
	// settings under nats.embedded).
	Enabled bool `yaml:"-"`
	// disabled records nats.embedded: false.
	disabled bool

	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// StoreDir is the JetStream store directory (default
	// <data dir>/jetstream); relative to the working directory, as data_dir.
	StoreDir string `yaml:"store_dir"`
	// Sync is when JetStream writes to disk: "always" (every message is
	// fsynced before it is acknowledged: a power loss loses nothing
	// acknowledged) or an interval such as "30s" (acknowledged once written
	// to the operating system, flushed every interval: a crash of duplex
	// alone loses nothing, a power loss or kernel crash up to one interval
	// of acknowledged changes). Default: always, because duplex confirms a
	// source's slot on JetStream's acknowledgement: with an interval, a
	// power loss can lose changes the slot no longer holds.
	Sync string `yaml:"sync"`
	// MaxPayload is the largest message the server accepts, in bytes
	// (default 8 MiB, at most 64 MiB).
	MaxPayload int64 `yaml:"max_payload"`
	// MaxStore bounds the bytes JetStream may keep on disk (default 1 TiB).
	MaxStore int64 `yaml:"max_store"`
	// MaxMemory bounds the bytes of memory-backed streams (default 256 MiB).
	MaxMemory int64 `yaml:"max_memory"`
	// EncryptionKey, when set, encrypts the JetStream store at rest
	// (AES-256-GCM, nats-server's jetstream cipher and key): personal data
	// in the stream files is unreadable without it. Give it as
	// ${ENV_VAR}; every start must use the same key, or JetStream cannot
	// read its store. Empty: the store is in clear.
	EncryptionKey string `yaml:"encryption_key"`
	// encryptionKeySet records that the file names encryption_key: an
	// empty value (an unset ${VAR}) is then refused rather than leaving
	// the store in clear.
	encryptionKeySet bool
	// Users are identities the server accepts besides duplex's own (which
	// duplex generates into <data dir>/nkeys at the first start), for
	// instance a reader for the nats CLI with subject permissions.
	Users []EmbeddedUser `yaml:"users"`
}

// UnmarshalYAML takes nats.embedded as a boolean or as the settings.
func (e *Embedded) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var on bool
		if err := n.Decode(&on); err != nil {
			return fmt.Errorf("line %d: nats.embedded %q: want true, false or the embedded server's settings", n.Line, n.Value)
		}
		e.Enabled, e.disabled = on, !on
		return nil
	}
	type settings Embedded
	if err := n.Decode((*settings)(e)); err != nil {
		return err
	}
	e.Enabled = true
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "encryption_key" {
			e.encryptionKeySet = true
		}
	}
	return nil
}

// EmbeddedUser is an identity the embedded server accepts: user and
// password (in clear or a bcrypt hash), or a public user nkey.
type EmbeddedUser struct {
	User      string   `yaml:"user"`
	Password  string   `yaml:"password"`
	Nkey      string   `yaml:"nkey"`
	Publish   Subjects `yaml:"publish"`
	Subscribe Subjects `yaml:"subscribe"`
}

// Subjects allows and denies subjects; an empty allow list allows all
// that deny does not name.
type Subjects struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// maxPayloadLimit is nats-server's max_pending, above which it refuses a
// max_payload.
const maxPayloadLimit = 64 << 20

// SyncPolicy returns Sync as "always" (the default, when Sync is empty) or
// an interval. Call it after Validate.
func (e *Embedded) SyncPolicy() (always bool, interval time.Duration) {
	always, interval, _ = parseSync(e.Sync)
	return always, interval
}

func parseSync(s string) (bool, time.Duration, error) {
	switch s {
	case "", "always":
		return true, 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return false, 0, fmt.Errorf("sync %q: want always or a positive interval such as 30s", s)
	}
	return false, d, nil
}

// validate checks the embedded server's settings, also when a URL makes
// them unused.
func (e *Embedded) validate(bad func(format string, args ...any)) {
	if _, _, err := parseSync(e.Sync); err != nil {
		bad("nats.embedded.%w", err)
	}
	if e.MaxPayload < 0 || e.MaxPayload > maxPayloadLimit {
		bad("nats.embedded.max_payload %d: want 1 to %d bytes (0 for the default)", e.MaxPayload, maxPayloadLimit)
	}
	if e.MaxStore < 0 {
		bad("nats.embedded.max_store %d: want a positive number of bytes (0 for the default)", e.MaxStore)
	}
	if e.MaxMemory < 0 {
		bad("nats.embedded.max_memory %d: want a positive number of bytes (0 for the default)", e.MaxMemory)
	}
	if e.Port < 0 || e.Port > 65535 {
		bad("nats.embedded.port %d: want 0 to 65535", e.Port)
	}
	switch {
	case e.encryptionKeySet && e.EncryptionKey == "":
		bad("nats.embedded.encryption_key is empty (set it, or the environment variable it names; remove the key to keep the store in clear)")
	case e.EncryptionKey != "" && len(e.EncryptionKey) < 16:
		bad("nats.embedded.encryption_key has %d characters: want at least 16 (a random secret)", len(e.EncryptionKey))
	}
	for i, u := range e.Users {
		switch {
		case u.Nkey != "" && (u.User != "" || u.Password != ""):
			bad("nats.embedded.users[%d]: set nkey, or user and password, not both", i)
		case u.Nkey != "":
		case u.User == "":
			bad("nats.embedded.users[%d]: no user or nkey", i)
		case u.Password == "":
			bad("nats.embedded.users[%d]: %s has no password (set it, or the environment variable it names)", i, u.User)
		}
	}
}

// UsesEmbedded reports whether duplex runs the embedded server (no URL).
// Call it after Validate.
func (n *NATS) UsesEmbedded() bool { return n.URL == "" }

// IsTLS reports whether every connection to URL is TLS: the client
// requires it when a CA or client certificate is configured, or when
// each URL's scheme is tls:// or wss://.
func (n *NATS) IsTLS() bool {
	if n.CAFile != "" || n.CertFile != "" {
		return true
	}
	for _, u := range n.urls() {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "tls" && p.Scheme != "wss") {
			return false
		}
	}
	return n.URL != ""
}

func (n *NATS) urls() []string {
	var out []string
	for _, u := range strings.Split(n.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// validate checks how duplex reaches NATS: sources and flows are the
// configured ones (for nats.captures and nats.flows).
func (n *NATS) validate(sources, flows []string, bad func(format string, args ...any)) {
	n.Embedded.validate(bad)
	if n.URL == "" {
		n.validateEmbedded(bad)
		return
	}
	if n.Embedded.Enabled && !n.Embedded.hasSettings() {
		bad("nats.url and nats.embedded: true: set one of them (the embedded server runs only without nats.url)")
	}
	if (n.CertFile == "") != (n.KeyFile == "") {
		bad("nats.cert_file and nats.key_file: set both (the client certificate and its key) or neither")
	}
	n.Credentials.validate("nats", bad)
	for _, m := range []struct {
		key   string
		names []string
		creds map[string]*Credentials
	}{{"captures", sources, n.Captures}, {"flows", flows, n.Flows}} {
		for _, name := range sortedKeys(m.creds) {
			key := "nats." + m.key + "." + name
			c := m.creds[name]
			if !slices.Contains(m.names, name) {
				bad("%s: there is no %s named %s (configured: %s)", key, strings.TrimSuffix(m.key, "s"), name, strings.Join(m.names, ", "))
			}
			if !c.Set() {
				bad("%s: no credentials (its values are empty: set the environment variables they name, or remove the entry to connect with the operator's)", key)
				continue
			}
			c.validate(key, bad)
		}
	}
	n.validateTransport(bad)
}

// validateTransport refuses credentials that would cross the network in
// clear: a password, token or creds file sent over a plain connection to
// a server that is not on this machine. A loopback address is allowed
// (nothing leaves the host); an nkey seed is allowed (only a signature of
// the server's nonce is sent); anything else needs TLS.
func (n *NATS) validateTransport(bad func(format string, args ...any)) {
	type secret struct{ key, what string }
	var secrets []secret
	if n.Credentials.sendsSecret() {
		secrets = append(secrets, secret{"nats", n.Credentials.kind()})
	}
	for _, m := range []struct {
		key   string
		creds map[string]*Credentials
	}{{"captures", n.Captures}, {"flows", n.Flows}} {
		for _, name := range sortedKeys(m.creds) {
			if c := m.creds[name]; c.sendsSecret() {
				secrets = append(secrets, secret{"nats." + m.key + "." + name, c.kind()})
			}
		}
	}
	for _, raw := range n.urls() {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			bad("nats.url: %q is not a URL (want nats://host:port, tls://host:port or a comma-separated list)", redactURL(raw))
			continue
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			bad("nats.url %s: scheme %q: want nats, tls, ws or wss", redactURL(raw), u.Scheme)
			continue
		}
		tlsOn := n.CAFile != "" || n.CertFile != "" || u.Scheme == "tls" || u.Scheme == "wss"
		if tlsOn || isLoopback(u.Hostname()) {
			continue
		}
		where := u.Scheme + "://" + u.Host
		if u.User != nil {
			bad("nats.url %s carries credentials in the URL, which would cross the network in clear: use a tls:// URL (or set nats.ca_file), and put them in nats.user/nats.password or nats.token", where)
		}
		for _, s := range secrets {
			bad("%s: the %s would be sent in clear to %s, which is not on this machine: use a tls:// URL (or set nats.ca_file), or nkey seeds (nkey_seed), which send no secret", s.key, s.what, where)
		}
	}
}

// validateEmbedded checks a configuration without a URL: the embedded
// server must have been asked for, and credentials (which are for a
// server at a URL) are refused rather than ignored.
func (n *NATS) validateEmbedded(bad func(format string, args ...any)) {
	switch {
	case n.urlKey:
		if vars := envRefs(n.urlRaw); len(vars) > 0 {
			bad("nats.url is empty: it reads %q, and %s is unset or empty; set it, or remove nats.url and set nats.embedded: true to run the embedded server", n.urlRaw, strings.Join(vars, ", "))
		} else {
			bad("nats.url is empty; set it, or remove nats.url and set nats.embedded: true to run the embedded server")
		}
		return
	case n.Embedded.disabled:
		bad("nats.embedded is false and nats.url is not set: set nats.url, or nats.embedded: true")
		return
	case n.section && !n.Embedded.Enabled:
		bad("nats: no url; set nats.url, or nats.embedded: true to run the embedded server")
		return
	}
	var set []string
	if n.Credentials.Set() {
		set = append(set, "nats."+strings.ReplaceAll(n.Credentials.kind(), " and ", "/"))
	}
	for k, v := range map[string]string{"nats.ca_file": n.CAFile, "nats.cert_file": n.CertFile, "nats.key_file": n.KeyFile} {
		if v != "" {
			set = append(set, k)
		}
	}
	if len(n.Captures) > 0 {
		set = append(set, "nats.captures")
	}
	if len(n.Flows) > 0 {
		set = append(set, "nats.flows")
	}
	if len(set) > 0 {
		slices.Sort(set)
		bad("%s: these are for a server at nats.url; the embedded server accepts duplex's own identities, which it keeps in <data dir>/nkeys (extra ones go in nats.embedded.users)", strings.Join(set, ", "))
	}
}

func (e *Embedded) hasSettings() bool {
	return e.Host != "" || e.Port != 0 || e.StoreDir != "" || e.Sync != "" || e.MaxPayload != 0 || e.MaxStore != 0 || e.MaxMemory != 0 || len(e.Users) > 0
}

// isLoopback reports whether host is this machine: localhost or a
// loopback address (127.0.0.0/8, ::1). Names are not resolved.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// redactURL drops the user information of a URL, for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	return u.String()
}

// envRefs lists the environment variables a value references.
func envRefs(s string) []string {
	var out []string
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			return out
		}
		if i > 0 && s[i-1] == '$' {
			s = s[i+2:]
			continue
		}
		name, _, n := envRef(s[i+2:])
		if n == 0 {
			s = s[i+2:]
			continue
		}
		out = append(out, name)
		s = s[i+2+n:]
	}
}

// natsKeys reads, before expansion, whether the document has a nats
// section and a nats.url, and that url as written.
func natsKeys(doc *yaml.Node) (section, urlKey bool, urlRaw string) {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	nats := mappingValue(root, "nats")
	if nats == nil || nats.Kind != yaml.MappingNode {
		return false, false, ""
	}
	u := mappingValue(nats, "url")
	if u == nil {
		return true, false, ""
	}
	return true, true, u.Value
}

// mappingValue is the value of key in a mapping node (aliases followed),
// or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	for m != nil && m.Kind == yaml.AliasNode {
		m = m.Alias
	}
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			v := m.Content[i+1]
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			return v
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
