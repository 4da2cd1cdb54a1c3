package harness

import (
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

// NATSOptions configures StartNATS.
type NATSOptions struct {
	StoreDir string // JetStream store; created if needed. Empty: a temp dir removed by Close.
	Host     string // default 127.0.0.1
	Port     int    // 0 picks a free port, kept across Stop/Start
	Logger   *slog.Logger
}

// NATS is an in-process nats-server with JetStream and a file store.
// Its methods are safe for concurrent use.
type NATS struct {
	opts     NATSOptions
	ownStore bool

	mu     sync.Mutex
	srv    *server.Server
	closed bool
}

// StartNATS starts an in-process NATS server with JetStream enabled.
func StartNATS(opts NATSOptions) (*NATS, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	n := &NATS{opts: opts}
	if opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "duplex-nats-*")
		if err != nil {
			return nil, fmt.Errorf("create nats store: %w", err)
		}
		n.opts.StoreDir, n.ownStore = dir, true
	} else if err := os.MkdirAll(opts.StoreDir, 0o755); err != nil {
		return nil, fmt.Errorf("create nats store: %w", err)
	}
	if err := n.Start(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// URL is the client URL, nats://HOST:PORT.
func (n *NATS) URL() string {
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.Port()))
}

// Port is the client port.
func (n *NATS) Port() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.opts.Port
}

// StoreDir is the JetStream store directory.
func (n *NATS) StoreDir() string { return n.opts.StoreDir }

// Server is the running server, or nil while stopped.
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Start starts the server (again) on the same store and port. Starting a
// running server does nothing.
func (n *NATS) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("start nats: closed")
	}
	if n.srv != nil {
		return nil
	}
	port := n.opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	srv, err := server.NewServer(&server.Options{
		ServerName:             "duplex",
		Host:                   n.opts.Host,
		Port:                   port,
		MaxPayload:             8 << 20,
		JetStream:              true,
		StoreDir:               n.opts.StoreDir,
		JetStreamMaxMemory:     256 << 20,
		JetStreamMaxStore:      1 << 40, // a ceiling, not an allocation
		DisableJetStreamBanner: true,
		// A loaded 2-core machine must not make the server drop a client
		// that is busy decoding a large batch.
		WriteDeadline: 30 * time.Second,
		NoSigs:        true,
		NoLog:         true,
	})
	if err != nil {
		return fmt.Errorf("start nats: %w", err)
	}
	logger := &natsLogger{log: n.opts.Logger}
	srv.SetLoggerV2(logger, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(10*time.Second) || !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("start nats on %s:%d with store %s: not ready: %s", n.opts.Host, port, n.opts.StoreDir, logger.lastError())
	}
	n.srv = srv
	n.opts.Port = srv.Addr().(*net.TCPAddr).Port
	n.opts.Logger.Debug("nats started", "url", srv.ClientURL(), "store", n.opts.StoreDir)
	return nil
}

// Stop shuts the server down and waits for it. The store is kept.
func (n *NATS) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopLocked()
}

func (n *NATS) stopLocked() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

// Close stops the server and removes the store if StartNATS created it.
// It is idempotent.
func (n *NATS) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	n.stopLocked()
	if n.ownStore {
		if err := os.RemoveAll(n.opts.StoreDir); err != nil {
			n.opts.Logger.Warn("remove nats store", "dir", n.opts.StoreDir, "err", err)
		}
	}
}

// natsLogger forwards server logs to slog and remembers the last error, so
// a failed start can say why.
type natsLogger struct {
	log *slog.Logger
	mu  sync.Mutex
	err string
}

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Fatalf(format string, v ...any)  { l.error(format, v...) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.error(format, v...) }

func (l *natsLogger) error(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	l.mu.Lock()
	l.err = msg
	l.mu.Unlock()
}

func (l *natsLogger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == "" {
		return "no error logged"
	}
	return l.err
}
