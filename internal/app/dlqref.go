package app

import (
	"regexp"
	"strings"
	"time"

	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// DeadLetterRef names a dead letter without its payload: what /api/status,
// the status page and `duplex status` show. The event or row change, and
// the error text (which may quote values: a constraint's failing key, a
// field's value), stay in DUPLEX_DLQ, for `duplex dlq show`.
type DeadLetterRef struct {
	Seq    uint64 `json:"seq"`
	Flow   string `json:"flow"`
	Stage  string `json:"stage"`
	Source string `json:"source"`
	Entity string `json:"entity,omitempty"`
	Key    string `json:"key,omitempty"`
	// Position is where the change was in its source.
	Position transform.Position `json:"position"`
	// ErrorClass is the kind of failure, from a fixed vocabulary
	// (ErrorClass): never a value.
	ErrorClass string    `json:"error_class"`
	FailedAt   time.Time `json:"failed_at"`
	StreamSeq  uint64    `json:"stream_seq,omitempty"`
}

// deadLetterRefs turns stored dead letters into references.
func deadLetterRefs(dls []pipeline.StoredDeadLetter) []DeadLetterRef {
	out := make([]DeadLetterRef, 0, len(dls))
	for _, d := range dls {
		out = append(out, DeadLetterRef{Seq: d.Seq, Flow: d.Flow, Stage: d.Stage, Source: d.Source, Entity: d.Entity, Key: d.Key,
			Position: d.Position, ErrorClass: ErrorClass(d.Error), FailedAt: d.FailedAt, StreamSeq: d.StreamSeq})
	}
	return out
}

var (
	sqlstateRE = regexp.MustCompile(`\(SQLSTATE ([0-9A-Z]{5})\)`)
	kindRE     = regexp.MustCompile(`\b(permanent|waiting|transient) apply error\b`)
	fieldRE    = regexp.MustCompile(`\bfield ([A-Za-z_][A-Za-z0-9_]{0,62}) value `)
)

// classes map fixed phrases of duplex's dead-letter reasons (pipeline,
// transform, sinks) to a class, matched in order; the first found counts.
var classes = []struct{ phrase, class string }{
	{"undecodable message", "undecodable message"},
	{"failed as a whole", "transaction failed as a whole"},
	{"came after its successors", "out of order"},
	{"has not come", "out of order"},
	{"is not kept", "change too large"},
}

// ErrorClass reduces a dead letter's error text to its class, built only
// from a fixed vocabulary: the apply error's kind (permanent, waiting,
// transient), PostgreSQL's SQLSTATE (for example 23514, a check
// violation), the mapped field that failed conversion, and a few fixed
// phrases of duplex's own reasons. No part of the text that could hold a
// value (a key in a constraint's detail, a field's value) is copied.
// "other" when nothing is recognised.
func ErrorClass(msg string) string {
	var parts []string
	if m := kindRE.FindStringSubmatch(msg); m != nil {
		parts = append(parts, m[1])
	}
	if m := sqlstateRE.FindStringSubmatch(msg); m != nil {
		parts = append(parts, "SQLSTATE "+m[1])
	}
	if m := fieldRE.FindStringSubmatch(msg); m != nil {
		parts = append(parts, "field "+m[1])
	}
	for _, c := range classes {
		if strings.Contains(msg, c.phrase) {
			parts = append(parts, c.class)
			break
		}
	}
	if len(parts) == 0 {
		return "other"
	}
	return strings.Join(parts, ", ")
}
