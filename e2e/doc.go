// Package e2e holds duplex's end-to-end tests: real PostgreSQL clusters,
// a real NATS server, the real duplex binary (the test binary re-executed
// as `duplex`), faults injected for real, and both databases compared
// after the fact.
package e2e
