// Package redact turns addresses that may carry secrets into forms safe for
// logs, errors, status and metrics.
//
// It owns one rule: an address is shown as scheme, host and port only. A
// NATS URL may carry a user and password or a token in its user part
// (nats://user:secret@host:4222, nats://token@host:4222), a PostgreSQL
// connection string a password (postgres://u:secret@h/db,
// password=secret, or a password parameter); none of that, nor a database
// name, user name or query parameter, survives.
//
// It also owns how values of rows are shown (value.go): cut to MaxValue
// characters, and the value of a personal field (pii: true) replaced by
// Masked, in logs, errors, dead letter reasons and the CLI.
//
// It does not own where secrets come from (internal/config) nor how
// connections use them; callers pass what they are about to print.
package redact
