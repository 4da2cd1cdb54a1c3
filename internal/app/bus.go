package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/internal/redact"
	"github.com/duplex-cdc/duplex/pipeline"
)

// Bus is duplex's connections to JetStream: the operator's (streams,
// buckets, retention, leases, status, the tools), and one per capture and
// per flow that has an identity of its own (always with the embedded
// server; with a NATS server, when nats.captures or nats.flows names it).
// A NATS connection authenticates once, as one identity, so a process
// that runs captures and flows holds several.
type Bus struct {
	nats *natsembed.Server
	nc   *nats.Conn
	js   jetstream.JetStream

	url  string
	base []nats.Option
	// auth are the connect options of the identities with credentials
	// of their own, by identity name (pipeline.CaptureIdentity, …).
	auth map[string]identityAuth
	// operator is how the operator authenticates (for its lease
	// connection).
	operator identityAuth
	log      *slog.Logger
	// dataDir is the data directory given to OpenBus (signing keys,
	// signing.go; the field-hash key).
	dataDir string

	mu    sync.Mutex
	conns map[string]*busConn
}

// identityAuth is how an identity authenticates, and the secrets an
// error about its connection must not show.
type identityAuth struct {
	opts    []nats.Option
	secrets []string
}

type busConn struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// JetStream returns the operator's JetStream context.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// CaptureJetStream returns the JetStream context a source's capture
// publishes with: its own identity's connection, opened at the first
// call, or the operator's when it has no identity of its own.
func (b *Bus) CaptureJetStream(ctx context.Context, source string) (jetstream.JetStream, error) {
	return b.identity(ctx, pipeline.CaptureIdentity(source))
}

// FlowJetStream returns the JetStream context a flow consumes with (as
// CaptureJetStream).
func (b *Bus) FlowJetStream(ctx context.Context, flow string) (jetstream.JetStream, error) {
	return b.identity(ctx, pipeline.FlowIdentity(flow))
}

// leaseConn names the operator's connection for leases alone.
const leaseConn = "operator-leases"

// LeaseJetStream returns the JetStream context leases are acquired and
// renewed with: a connection of the operator's used for nothing else, so
// that a renewal never waits behind the operator connection's other
// traffic (status reads, stream management, retention passes). A renewal
// unanswered for half the TTL fences a healthy holder (pipeline.Lease).
func (b *Bus) LeaseJetStream(ctx context.Context) (jetstream.JetStream, error) {
	return b.open(ctx, leaseConn, b.operator, "")
}

func (b *Bus) identity(ctx context.Context, name string) (jetstream.JetStream, error) {
	auth, ok := b.auth[name]
	if !ok {
		return b.js, nil
	}
	return b.open(ctx, name, auth, pipeline.InboxPrefix(name))
}

// open returns the connection called name, opened at the first call with
// auth and, when not "", a custom inbox prefix.
func (b *Bus) open(ctx context.Context, name string, auth identityAuth, inbox string) (jetstream.JetStream, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.conns[name]; c != nil {
		return c.js, nil
	}
	opts := append(slices.Clone(b.base), auth.opts...)
	opts = append(opts, nats.Name("duplex "+name))
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	nc, js, err := connect(ctx, b.url, opts, auth.secrets, b.log.With(slog.String("identity", name)))
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: %w", name, err)
	}
	if b.conns == nil {
		b.conns = map[string]*busConn{}
	}
	b.conns[name] = &busConn{nc: nc, js: js}
	return js, nil
}

// Disconnected names the connections (the operator's and the
// identities') that are not connected now, with their state.
func (b *Bus) Disconnected() []string {
	var out []string
	if b.nc != nil && !b.nc.IsConnected() {
		out = append(out, pipeline.OperatorIdentity+" ("+b.nc.Status().String()+")")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, name := range sortedNames(b.conns) {
		if nc := b.conns[name].nc; !nc.IsConnected() {
			out = append(out, name+" ("+nc.Status().String()+")")
		}
	}
	return out
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Close disconnects (and stops an embedded server started for the bus).
func (b *Bus) Close() {
	b.mu.Lock()
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	for _, c := range conns {
		drain(c.nc)
	}
	if b.nc != nil {
		drain(b.nc)
	}
	if b.nats != nil {
		b.nats.Stop()
	}
}

func drain(nc *nats.Conn) {
	_ = nc.Drain()
	for i := 0; i < 50 && !nc.IsClosed(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// publishAckTimeout bounds the wait for a JetStream acknowledgement of an
// asynchronous publish; it must stay well below stream.duplicates.
const publishAckTimeout = 20 * time.Second

// OpenBus connects to the configured NATS as the operator. Without a URL
// it starts the embedded server on the data directory, which accepts only
// duplex's identities (generated into <data dir>/nkeys at the first
// start) and the extra users of nats.embedded.users; with attach, it
// first tries the embedded server of a running duplex (the command-line
// tools do, since a running server holds the store), as the operator whose
// seed is in the data directory.
func OpenBus(ctx context.Context, cfg *config.Config, dataDir string, log *slog.Logger, attach bool) (*Bus, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bus{log: log, auth: map[string]identityAuth{}, dataDir: dataDir}
	b.base = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		// A server that refuses the credentials twice (restarting, or
		// not yet configured) does not end the connection for good: it
		// keeps trying, and logs every disconnect.
		nats.IgnoreAuthErrorAbort()}
	var operator []nats.Option
	var secrets []string // of the operator's credentials
	if cfg.NATS.UsesEmbedded() {
		dir := dataDir
		if dir == "" {
			dir = "data"
		}
		idDir := filepath.Join(dir, natsembed.IdentityDirName)
		if attach && cfg.NATS.Embedded.Port > 0 {
			url, op, err := attachRunning(cfg, idDir, b.base)
			if err != nil {
				return nil, err
			}
			b.url, operator = url, op
		}
		if b.url == "" {
			ids, err := natsembed.LoadIdentities(idDir, identityNames(cfg), true)
			if err != nil {
				return nil, err
			}
			port := cfg.NATS.Embedded.Port
			if attach {
				port = 0 // any free port: this server is for the tool alone
			}
			o := embeddedOptions(cfg.NATS.Embedded, dir, port, log.With(slog.String("component", "nats")))
			o.Users = append(embeddedUsers(cfg, ids), o.Users...)
			n, err := natsembed.Start(ctx, o)
			if err != nil {
				return nil, err // natsembed names the operation, address and store
			}
			b.nats, b.url = n, n.URL()
			log.Info("embedded NATS started", slog.String("url", redact.URL(b.url)), slog.String("store", n.StoreDir()), slog.String("identities", idDir))
			for name, id := range ids {
				if name == pipeline.OperatorIdentity {
					operator = []nats.Option{id.ConnectOption()}
				} else {
					b.auth[name] = identityAuth{opts: []nats.Option{id.ConnectOption()}}
				}
			}
		}
	} else {
		b.url = cfg.NATS.URL
		b.base = append(b.base, tlsOptions(cfg.NATS)...)
		var err error
		if operator, err = authOptions(&cfg.NATS.Credentials); err != nil {
			return nil, fmt.Errorf("nats: %w", err)
		}
		secrets = credentialSecrets(&cfg.NATS.Credentials)
		for source, c := range cfg.NATS.Captures {
			a := identityAuth{secrets: credentialSecrets(c)}
			if a.opts, err = authOptions(c); err != nil {
				return nil, fmt.Errorf("nats.captures.%s: %w", source, err)
			}
			b.auth[pipeline.CaptureIdentity(source)] = a
		}
		for flow, c := range cfg.NATS.Flows {
			a := identityAuth{secrets: credentialSecrets(c)}
			if a.opts, err = authOptions(c); err != nil {
				return nil, fmt.Errorf("nats.flows.%s: %w", flow, err)
			}
			b.auth[pipeline.FlowIdentity(flow)] = a
		}
	}
	b.operator = identityAuth{opts: operator, secrets: secrets}
	opts := append(slices.Clone(b.base), operator...)
	opts = append(opts, nats.Name("duplex"))
	nc, js, err := connect(ctx, b.url, opts, secrets, log.With(slog.String("identity", pipeline.OperatorIdentity)))
	if err != nil {
		b.Close()
		return nil, err
	}
	b.nc, b.js = nc, js
	return b, nil
}

// connect opens one connection and its JetStream context. An error shows
// the URL as scheme://host:port and none of secrets (nats.go quotes a URL
// it cannot parse, user part included).
func connect(ctx context.Context, url string, opts []nats.Option, secrets []string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	opts = append(opts,
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", slog.String("url", redact.URL(c.ConnectedUrl()))) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			// A permissions violation is reported here, asynchronously:
			// it means the server's permissions do not fit what duplex
			// does (see deploy/nats).
			log.Warn("NATS error", slog.Any("error", err))
		}))
	if d, ok := ctx.Deadline(); ok && time.Until(d) > 0 {
		opts = append(opts, nats.Timeout(min(time.Until(d), 10*time.Second)))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		// nats.go quotes a URL it cannot parse, user part included.
		return nil, nil, fmt.Errorf("connect to nats %s: %w", redact.URL(url), redact.Error(err, append([]string{url}, secrets...)...))
	}
	// An asynchronous publish whose acknowledgement never comes (the
	// stream leader died after receiving it, on a cluster) fails after
	// publishAckTimeout instead of holding the capture session forever;
	// the session starts again from the slot and publishes it again with
	// the same message id, well within the deduplication window.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// attachRunning returns the URL of the running duplex's embedded server
// when one answers on the configured port, with the connect option of the
// operator whose seed is in idDir; "" when none answers. One that answers
// but refuses the operator (another data directory's) is an error: the
// tool must not act as if no duplex ran.
func attachRunning(cfg *config.Config, idDir string, base []nats.Option) (string, []nats.Option, error) {
	host := cfg.NATS.Embedded.Host
	if host == "" {
		host = natsembed.DefaultHost
	}
	running := fmt.Sprintf("nats://%s:%d", host, cfg.NATS.Embedded.Port)
	var operator []nats.Option
	ids, idErr := natsembed.LoadIdentities(idDir, []string{pipeline.OperatorIdentity}, false)
	if idErr == nil {
		operator = []nats.Option{ids[pipeline.OperatorIdentity].ConnectOption()}
	}
	opts := append(append(slices.Clone(base), operator...), nats.MaxReconnects(0), nats.Timeout(time.Second))
	nc, err := nats.Connect(running, opts...)
	if err == nil {
		nc.Close()
		return running, operator, nil
	}
	if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization") {
		how := "the operator identity in " + idDir + " is not its own"
		if idErr != nil {
			how = idErr.Error()
		}
		return "", nil, fmt.Errorf("the embedded NATS of a running duplex at %s refused this tool (%s): give the --data-dir of that duplex", running, how)
	}
	return "", nil, nil
}

// identityNames are duplex's identities on the embedded server for cfg.
func identityNames(cfg *config.Config) []string {
	names := []string{pipeline.OperatorIdentity}
	for _, s := range cfg.Sources() {
		names = append(names, pipeline.CaptureIdentity(s))
	}
	for _, f := range cfg.Flows {
		names = append(names, pipeline.FlowIdentity(f.Name))
	}
	return names
}

// embeddedUsers are the embedded server's users for duplex's identities,
// each with the subject permissions pipeline gives it.
func embeddedUsers(cfg *config.Config, ids map[string]*natsembed.Identity) []natsembed.User {
	perms := map[string]pipeline.Permissions{pipeline.OperatorIdentity: pipeline.OperatorPermissions(cfg.Sources())}
	for _, s := range cfg.Sources() {
		perms[pipeline.CaptureIdentity(s)] = pipeline.CapturePermissions(s)
	}
	for _, f := range cfg.Flows {
		perms[pipeline.FlowIdentity(f.Name)] = pipeline.FlowPermissions(f.Name)
	}
	var users []natsembed.User
	for _, name := range sortedNames(ids) {
		p := perms[name]
		users = append(users, ids[name].User(&natsembed.Permissions{
			Publish:   natsembed.SubjectPermission{Allow: p.Publish, Deny: p.DenyPublish},
			Subscribe: natsembed.SubjectPermission{Allow: p.Subscribe},
		}))
	}
	return users
}

// authOptions are the connect options of credentials (none: no option).
func authOptions(c *config.Credentials) ([]nats.Option, error) {
	switch {
	case c == nil:
		return nil, nil
	case c.Creds != "":
		return []nats.Option{nats.UserCredentials(c.Creds)}, nil
	case c.Token != "":
		return []nats.Option{nats.Token(c.Token)}, nil
	case c.User != "":
		return []nats.Option{nats.UserInfo(c.User, c.Password)}, nil
	case c.NkeySeed != "":
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(c.NkeySeed)))
		if err != nil {
			return nil, fmt.Errorf("nkey_seed: %w", err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("nkey_seed: %w", err)
		}
		return []nats.Option{nats.Nkey(pub, kp.Sign)}, nil
	case c.NkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nkey_seed_file %s: %w", c.NkeySeedFile, err)
		}
		return []nats.Option{o}, nil
	}
	return nil, nil
}

// credentialSecrets are the values of credentials that must not appear in
// an error.
func credentialSecrets(c *config.Credentials) []string {
	if c == nil {
		return nil
	}
	var out []string
	for _, v := range []string{c.Password, c.Token, c.NkeySeed} {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// tlsOptions are the connect options of nats.ca_file, cert_file and
// key_file. Without TLS, servers the cluster announces are not added to
// the pool: a loopback URL allowed in clear must not lead to another host.
func tlsOptions(n config.NATS) []nats.Option {
	var opts []nats.Option
	if n.CAFile != "" {
		opts = append(opts, nats.RootCAs(n.CAFile))
	}
	if n.CertFile != "" {
		opts = append(opts, nats.ClientCert(n.CertFile, n.KeyFile))
	}
	if !n.IsTLS() {
		opts = append(opts, nats.IgnoreDiscoveredServers())
	}
	return opts
}

// placementWait bounds how long the start waits for a JetStream cluster
// that cannot place duplex's streams and buckets yet.
const placementWait = time.Minute

// untilPlaced runs ensure (the creation or update of a stream or bucket)
// again while JetStream answers that it cannot place it now, with a WARN
// each time, for up to placementWait; then, or on any other error, it
// returns the error. A cluster just started, or one whose node came back,
// answers so until its meta leader hears from every peer (seen: "no
// suitable peers for placement, peer offline" a moment after every node
// reported healthy), and duplex exited at start.
func untilPlaced(ctx context.Context, log *slog.Logger, what string, ensure func(context.Context) error) error {
	deadline := time.Now().Add(placementWait)
	wait := 250 * time.Millisecond
	for {
		err := ensure(ctx)
		if err == nil || !placementPending(err) || time.Now().After(deadline) {
			return err
		}
		log.Warn("JetStream cannot place "+what+" yet; trying again", slog.Any("error", err), slog.Duration("in", wait))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// placementPending says whether err is JetStream answering that it cannot
// place an asset now: JSClusterNoPeersErr (10005, "no suitable peers for
// placement") or JSClusterNotAvailErr (10008, "JetStream system
// temporarily unavailable"), nats-server's server/errors.json.
func placementPending(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == 10005 || apiErr.ErrorCode == 10008)
}
