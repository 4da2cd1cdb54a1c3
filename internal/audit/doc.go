// Package audit keeps the record of what operators did to duplex: each
// run of replay, dlq retry, dlq drop, backfill and resync appends one
// Record (who: OS user and host; when; the command and its arguments,
// secrets replaced; the outcome) to the JetStream stream DUPLEX_AUDIT
// (subjects duplex.audit.<command>), and duplex audit list reads them
// back. The stream denies deleting or purging messages (JetStream's
// deny_delete and deny_purge), so a record, once appended, stays for as
// long as the stream does.
//
// It owns the stream and the record's format; the command line
// (internal/cli) fills in who ran what, and logs the record too. It does
// not decide what a command does, nor whether it may run.
//
// Files: audit.go (Record, Append, List, the stream), args.go
// (arguments with secrets replaced).
package audit
