package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/duplex-cdc/duplex/internal/natsembed"
)

// NATSOptions configures StartNATS.
type NATSOptions struct {
	StoreDir string // JetStream store; created if needed. Empty: a temp dir removed by Close.
	Host     string // default 127.0.0.1
	Port     int    // 0 picks a free port, kept across Stop/Start
	Logger   *slog.Logger
}

// NATS is a throwaway natsembed.Server: an in-process nats-server with
// JetStream and a file store that Close removes when StartNATS created it.
// Its methods are safe for concurrent use.
type NATS struct {
	srv      *natsembed.Server
	store    string
	ownStore bool
	log      *slog.Logger

	mu     sync.Mutex
	closed bool
}

// StartNATS starts an in-process NATS server with JetStream enabled.
func StartNATS(opts NATSOptions) (*NATS, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	n := &NATS{store: opts.StoreDir, log: opts.Logger}
	if n.store == "" {
		dir, err := os.MkdirTemp("", "duplex-nats-*")
		if err != nil {
			return nil, fmt.Errorf("create nats store: %w", err)
		}
		n.store, n.ownStore = dir, true
	}
	srv, err := natsembed.New(natsembed.Options{StoreDir: n.store, Host: opts.Host, Port: opts.Port, Logger: opts.Logger})
	if err != nil {
		n.Close()
		return nil, err
	}
	n.srv = srv
	if err := n.Start(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// URL is the client URL, nats://HOST:PORT.
func (n *NATS) URL() string { return n.srv.URL() }

// Port is the client port.
func (n *NATS) Port() int { return n.srv.Port() }

// StoreDir is the JetStream store directory.
func (n *NATS) StoreDir() string { return n.store }

// Server is the running server, or nil while stopped.
func (n *NATS) Server() *server.Server { return n.srv.NATSServer() }

// Start starts the server (again) on the same store and port. Starting a
// running server does nothing.
func (n *NATS) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("start nats: closed")
	}
	return n.srv.Start(context.Background())
}

// Stop shuts the server down and waits for it. The store is kept.
func (n *NATS) Stop() { n.srv.Stop() }

// Close stops the server and removes the store if StartNATS created it.
// It is idempotent.
func (n *NATS) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	if n.srv != nil {
		n.srv.Stop()
	}
	if n.ownStore {
		if err := os.RemoveAll(n.store); err != nil {
			n.log.Warn("remove nats store", slog.String("dir", n.store), slog.Any("error", err))
		}
	}
}
