// Package capture defines what a change-data-capture source hands to the rest
// of duplex: committed source transactions, cut into chunks, made of row
// changes whose column values are exact Go values (numeric stays a
// decimal.Decimal, never a float).
//
// The package owns the shape of a captured change, the LSN type, and the
// text form of a key of several columns (key.go: JoinKey, SplitKey, in
// PostgreSQL's row text form), shared by the capture's keyset pagination
// and transform's canonical keys. It does
// not know about canonical entities (that is transform's job) nor about
// JetStream (pipeline's). Sources live in subpackages, one per technology:
// capture/postgres reads a PostgreSQL logical replication slot with pgoutput.
package capture
