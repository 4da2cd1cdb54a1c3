// Package harness starts throwaway infrastructure for tests and for the
// `duplex demo` command: real PostgreSQL clusters (initdb + pg_ctl from the
// locally installed server) and in-process NATS servers with JetStream
// (natsembed.Server with a temporary store).
//
// The package owns:
//   - a per-user, per-version template data directory under os.TempDir(),
//     created once by initdb and shared across processes; every cluster
//     starts from a copy of it, so a cluster costs a file copy, not an initdb;
//   - each cluster's temporary directory (data dir, server log, Unix socket),
//     removed by Cluster.Close;
//   - the NATS store directory when the caller did not supply one.
//
// A cluster can run with ssl = on and a certificate the caller made
// (ClusterOptions.TLS), for tests of TLS to PostgreSQL.
//
// Clusters can be stopped cleanly (Stop), crashed (Kill) and started again
// on the same data directory and port (Start), so tests can inject faults.
// When the process runs as root, every PostgreSQL program runs as the
// `postgres` OS user and the directories it uses are owned by that user.
//
// Nothing here imports "testing"; TB is a small interface that *testing.T
// and *testing.B satisfy.
package harness
