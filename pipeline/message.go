package pipeline

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode/utf8"

	json "github.com/goccy/go-json"

	"github.com/duplex-cdc/duplex/transform"
)

// encodeTx is the body of the DUPLEX message that carries a source
// transaction, or one chunk of a large one: the JSON of transform.Tx.
//
// The hot path encodes and decodes with github.com/goccy/go-json, a
// drop-in for encoding/json with the same output (sorted map keys, HTML
// escaping, the types' MarshalJSON/MarshalText) and the same decoding into
// transform.Tx, at about 1.7 times its speed on a 500-event transaction
// (7.4 against 4.3 µs an event, encode and decode; JSON was a quarter of
// duplex's CPU in the bench's large shape). Everything else reading the
// bus (dlq, replay, audit, tests) keeps encoding/json: the body is the
// same JSON.
func encodeTx(tx *transform.Tx) ([]byte, error) { return json.Marshal(tx) }

// decodeTx reads the body of a DUPLEX message into tx. A body that is not
// a transaction is an error: the applier dead-letters the message rather
// than holding the flow behind it.
//
// A body that is not valid UTF-8 is refused: no encoder writes one (both
// replace invalid bytes with U+FFFD), and goccy/go-json, unlike
// encoding/json, would keep the bytes as they are, so the flow would read
// another transaction than the other readers of the bus (dlq, replay,
// audit). Known differences that remain, for bodies no capture writes
// (TestMessage_AdversarialBodies): raw control characters in a string are
// taken as they are (encoding/json refuses the body), and a field name is
// matched without Unicode case folding ("ſource" is not "source"), and
// the value of an unknown field is skipped without being validated.
//
// A body with an escaped ASCII letter, digit or underscore ("\u0073") is
// refused too: no encoder writes one, and goccy/go-json v0.10.5 compares
// a struct field name's escaped bytes, not its characters, with the
// fields' names, so that "\u0073o" (so) is read as "source".
func decodeTx(data []byte, tx *transform.Tx) error {
	if !utf8.Valid(data) {
		return fmt.Errorf("body is not valid UTF-8")
	}
	if err := noEscapedAlnum(data); err != nil {
		return err
	}
	if err := json.Unmarshal(data, tx); err != nil {
		return err
	}
	if tx.Chunk < 0 {
		// The assembler would wait for its chunk 0 forever.
		return fmt.Errorf("chunk %d is negative", tx.Chunk)
	}
	return nil
}

// noEscapedAlnum returns an error when data (JSON) holds a \u escape of
// an ASCII letter, digit or underscore (see decodeTx). Backslashes appear
// only in strings, each starting an escape.
func noEscapedAlnum(data []byte) error {
	for i := 0; ; {
		j := bytes.IndexByte(data[i:], '\\')
		if j < 0 {
			return nil
		}
		i += j
		if i+1 < len(data) && data[i+1] == 'u' && i+6 <= len(data) {
			if r, err := strconv.ParseUint(string(data[i+2:i+6]), 16, 16); err == nil && r < 0x80 {
				c := byte(r)
				if c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' {
					return fmt.Errorf("body escapes %q (\\u%s), which no capture does", string(c), data[i+2:i+6])
				}
			}
		}
		i += 2
		if i >= len(data) {
			return nil
		}
	}
}
