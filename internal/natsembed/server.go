package natsembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long Start waits for the server to accept
// clients once nats-server's Start returned (the store is recovered by
// then).
const readyTimeout = 10 * time.Second

// Server is an in-process nats-server with JetStream on a file store. It
// can be stopped and started again on the same store and port. Its methods
// are safe for concurrent use.
type Server struct {
	mu   sync.Mutex
	opts Options // with defaults; Port is the bound port after a start
	srv  *server.Server
}

// New validates the options and creates the store directory; the server is
// not started.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("embedded nats options: %w", err)
	}
	if err := os.MkdirAll(opts.StoreDir, 0o755); err != nil {
		return nil, fmt.Errorf("create nats store: %w", err)
	}
	return &Server{opts: opts.withDefaults()}, nil
}

// Start validates the options and starts a server (New, then Start).
func Start(ctx context.Context, opts Options) (*Server, error) {
	s, err := New(opts)
	if err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Start starts the server (again) on the same store and port and waits
// until it accepts clients with JetStream enabled, for at most ten seconds
// after the store was recovered or until ctx is done. Starting a running
// server does nothing. On failure the server is shut down again and the
// error says why.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	o := s.opts
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts := &server.Options{
		ServerName:         "duplex",
		Host:               o.Host,
		Port:               port,
		MaxPayload:         o.MaxPayload,
		JetStream:          true,
		StoreDir:           o.StoreDir,
		SyncAlways:         o.SyncAlways,
		SyncInterval:       o.SyncInterval,
		JetStreamMaxMemory: o.MaxMemory,
		JetStreamMaxStore:  o.MaxStore,
		// A loaded 2-core machine must not make the server drop a client
		// that is busy decoding a large batch.
		WriteDeadline:          30 * time.Second,
		DisableJetStreamBanner: true,
		NoSigs:                 true,
		NoLog:                  true,
	}
	if o.EncryptionKey != "" {
		sopts.JetStreamKey, sopts.JetStreamCipher = o.EncryptionKey, server.AES
	}
	for _, u := range o.Users {
		perms := u.Permissions.server()
		if u.Nkey != "" {
			sopts.Nkeys = append(sopts.Nkeys, &server.NkeyUser{Nkey: u.Nkey, Permissions: perms})
		} else {
			sopts.Users = append(sopts.Users, &server.User{Username: u.Name, Password: u.Password, Permissions: perms})
		}
	}
	where := fmt.Sprintf("%s:%d with store %s", o.Host, o.Port, o.StoreDir)
	srv, err := server.NewServer(sopts)
	if err != nil {
		return fmt.Errorf("start embedded nats on %s: %w", where, err)
	}
	logger := &slogAdapter{log: o.Logger}
	srv.SetLoggerV2(logger, false, false, false)
	srv.Start()
	if err := waitReady(ctx, srv, logger); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("start embedded nats on %s: %w", where, err)
	}
	s.srv = srv
	s.opts.Port = srv.Addr().(*net.TCPAddr).Port
	o.Logger.Debug("nats started", slog.String("url", s.urlLocked()), slog.String("store", o.StoreDir))
	return nil
}

// waitReady waits until srv accepts clients with JetStream enabled. It
// gives up at once when the server logged a fatal error (nats-server's
// Start returns without listening then), after readyTimeout, or when ctx
// is done.
func waitReady(ctx context.Context, srv *server.Server, logger *slogAdapter) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		if msg := logger.fatal(); msg != "" {
			return errors.New(msg)
		}
		if srv.ReadyForConnections(100 * time.Millisecond) {
			break
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("not ready: %w (last error: %s)", err, logger.lastError())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (last error: %s)", readyTimeout, logger.lastError())
		}
	}
	if !srv.JetStreamEnabled() {
		return fmt.Errorf("jetstream not enabled (last error: %s)", logger.lastError())
	}
	return nil
}

// Stop shuts the server down and waits until its goroutines have ended.
// The store is kept; Start starts it again. Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// URL is the client URL, nats://HOST:PORT, without credentials.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urlLocked()
}

func (s *Server) urlLocked() string {
	return "nats://" + net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port))
}

// Port is the client port (0 before the first start when Options.Port was
// 0).
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Port
}

// StoreDir is the JetStream store directory.
func (s *Server) StoreDir() string { return s.opts.StoreDir }

// MaxPayload is the largest message the server accepts, in bytes: what it
// announces to clients, and the bound for anything published to it.
func (s *Server) MaxPayload() int32 { return s.opts.MaxPayload }

// Options are the options in effect, with defaults filled in and the bound
// port once started.
func (s *Server) Options() Options {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.opts
	o.Users = append([]User(nil), o.Users...)
	return o
}

// NATSServer is the running nats-server, or nil while stopped.
func (s *Server) NATSServer() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

func (p *Permissions) server() *server.Permissions {
	if p == nil {
		return nil
	}
	return &server.Permissions{
		Publish:   p.Publish.server(),
		Subscribe: p.Subscribe.server(),
	}
}

func (p SubjectPermission) server() *server.SubjectPermission {
	if len(p.Allow) == 0 && len(p.Deny) == 0 {
		return nil
	}
	return &server.SubjectPermission{Allow: p.Allow, Deny: p.Deny}
}
