// Package natsembed runs duplex's embedded NATS: an in-process nats-server
// with JetStream on a file store, for single-machine deployments, the
// command-line tools when no duplex runs, the demo and the tests.
//
// The package owns:
//   - the server's options (listen address, JetStream store directory, sync
//     policy, max payload, JetStream limits, users and their subject
//     permissions, the key that encrypts the store at rest), as a plain
//     Options struct with Validate;
//   - the server's lifecycle: Start waits until the server accepts clients
//     and JetStream is enabled, and reports why when it does not; Stop shuts
//     the server down and waits for its goroutines; a stopped server starts
//     again on the same store and port;
//   - forwarding the server's log to a *slog.Logger;
//   - duplex's identities on the server (identity.go): a user nkey each,
//     whose seed is kept in <data dir>/nkeys/<name>.nk (0600), generated
//     at the first start; the server holds only the public keys (Users)
//     and a client proves it holds the seed by signing the server's nonce.
//
// It does not own the store directory's contents beyond what nats-server
// writes there, the streams and consumers in it (package pipeline creates
// those), the identities' subject permissions (package pipeline derives
// them, internal/app passes them in Users), or client connections. It is not a cluster: one server, no
// routes, no replication; a deployment that needs either connects to a
// NATS cluster instead. Throwaway servers with a temporary store for tests
// are internal/harness's.
package natsembed
