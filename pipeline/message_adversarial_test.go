package pipeline

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/duplex-cdc/duplex/transform"
)

// adversarialBodies are bus bodies no capture writes: what a flow may be
// handed by anything else that publishes on a source's subject.
func adversarialBodies() map[string][]byte {
	deep := strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001)
	deepObj := strings.Repeat(`{"a":`, 10001) + `1` + strings.Repeat(`}`, 10001)
	return map[string][]byte{
		"invalid UTF-8 in a value":         []byte("{\"v\":1,\"source\":\"crm\",\"events\":[{\"key\":\"a\xffb\",\"data\":{\"x\":\"c\xc3(d\"}}]}"),
		"invalid UTF-8 in a key":           []byte("{\"v\":1,\"events\":[{\"data\":{\"x\xff\":\"1\"}}]}"),
		"invalid UTF-8 in the source":      []byte("{\"v\":1,\"source\":\"cr\xed\xa0\x80m\",\"events\":[]}"),
		"raw control character":            []byte("{\"v\":1,\"source\":\"c\nrm\",\"events\":[]}"),
		"raw NUL":                          []byte("{\"v\":1,\"source\":\"c\x00rm\",\"events\":[]}"),
		"raw DEL and C1":                   []byte("{\"v\":1,\"source\":\"c\x7f\xc2\x85rm\",\"events\":[]}"),
		"lone surrogates":                  []byte(`{"v":1,"events":[{"key":"\ud800","data":{"x":"\udc00\ud800x"}}]}`),
		"field name in capitals":           []byte(`{"V":1,"SOURCE":"crm","Events":[{"KEY":"1"}]}`),
		"field name with a long s":         []byte(`{"v":1,"ſource":"crm","events":[]}`),
		"field name with a Kelvin sign":    []byte(`{"v":1,"events":[{"\u212aey":"1"}]}`),
		"escaped field name":               []byte(`{"v":1,"\u0073ource":"crm","events":[]}`),
		"duplicate data key":               []byte(`{"v":1,"events":[{"data":{"a":"1","a":"2"}}]}`),
		"duplicate field, case differs":    []byte(`{"v":1,"source":"crm","Source":"erp","events":[]}`),
		"deep array":                       []byte(`{"v":1,"events":[{"data":{"x":` + deep + `}}]}`),
		"deep object":                      []byte(`{"v":1,"events":[{"data":{"x":` + deepObj + `}}]}`),
		"long number":                      []byte(`{"v":1,"events":[{"data":{"x":1` + strings.Repeat("0", 100000) + `}}]}`),
		"number into int overflow":         []byte(`{"v":1,"chunk":99999999999999999999,"events":[]}`),
		"fraction into int":                []byte(`{"v":1,"chunk":1.5,"events":[]}`),
		"exponent into int":                []byte(`{"v":1,"chunk":1e2,"events":[]}`),
		"negative xid":                     []byte(`{"v":1,"xid":-1,"events":[]}`),
		"leading BOM":                      []byte("\xef\xbb\xbf{\"v\":1,\"events\":[]}"),
		"trailing space and garbage":       []byte(`{"v":1,"events":[]}   }`),
		"two documents":                    []byte(`{"v":1,"events":[]}{"v":2}`),
		"null events":                      []byte(`{"v":1,"events":null}`),
		"string for a bool":                []byte(`{"v":1,"last":"true","events":[]}`),
		"bad escape":                       []byte(`{"v":1,"source":"\x","events":[]}`),
		"truncated escape":                 []byte(`{"v":1,"source":"\u12`),
		"unterminated":                     []byte(`{"v":1,"source":"crm`),
		"empty":                            []byte(``),
		"whitespace only":                  []byte(" \n\t"),
		"number with plus":                 []byte(`{"v":+1,"events":[]}`),
		"leading zero":                     []byte(`{"v":01,"events":[]}`),
		"NaN":                              []byte(`{"v":1,"events":[{"data":{"x":NaN}}]}`),
		"versions with a bad time":         []byte(`{"v":1,"events":[{"versions":{"email":{"source":"erp","at":"yesterday"}}}]}`),
		"bad lsn":                          []byte(`{"v":1,"commit_lsn":"1/2/3","events":[]}`),
		"lsn as a number":                  []byte(`{"v":1,"commit_lsn":5,"events":[]}`),
		"data as an array":                 []byte(`{"v":1,"events":[{"data":[1,2]}]}`),
		"events as an object":              []byte(`{"v":1,"events":{"0":{}}}`),
		"unknown fields, deep":             []byte(`{"v":1,"zz":{"a":[{"b":[` + strings.Repeat(`[`, 5000) + strings.Repeat(`]`, 5000) + `]}]},"events":[]}`),
		"unknown field, deeper than 10000": []byte(`{"v":1,"zz":` + deep + `,"events":[]}`),
		"escaped letter in a field name":   []byte(`{"v":1,"source":"crm","\u0073o":"erp","events":[]}`),
		"invalid JSON in an unknown field": []byte(`{"v":1,"zz":[""""],"source":"crm","events":[]}`),
	}
}

// refusedBodies are the adversarial bodies decodeTx refuses although
// encoding/json reads them (replacing invalid UTF-8 with U+FFFD): goccy
// would keep the bytes, and read another transaction than the bus's other
// readers.
var refusedBodies = map[string]bool{"invalid UTF-8 in a value": true, "invalid UTF-8 in a key": true, "invalid UTF-8 in the source": true,
	"escaped letter in a field name": true, "escaped field name": true}

// knownDifferences are the adversarial bodies goccy reads otherwise than
// encoding/json, documented at decodeTx: what each reads.
var knownDifferences = map[string]string{
	"raw control character":            "goccy takes the newline as it is; encoding/json refuses the body",
	"field name with a long s":         "goccy does not fold ſ to s: the source is left empty",
	"field name with a Kelvin sign":    "goccy does not fold K (U+212A) to k: the key is left empty",
	"invalid JSON in an unknown field": "goccy skips an unknown field's value without validating it; encoding/json refuses the body",
}

// TestMessage_AdversarialBodies: decodeTx (goccy/go-json) reads a body no
// capture wrote (invalid UTF-8, raw control characters, case-folded and
// duplicate field names, deep nesting, huge numbers) as encoding/json
// reads it, or refuses it, and never panics; the other readers of the
// bus (dlq, replay, audit) decode the same bodies with encoding/json.
// The known differences are checked to stay what decodeTx's doc says.
func TestMessage_AdversarialBodies(t *testing.T) {
	for name, body := range adversarialBodies() {
		t.Run(name, func(t *testing.T) {
			var a, b transform.Tx
			errA := func() (err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
						t.Errorf("decodeTx panicked: %v", r)
					}
				}()
				return decodeTx(body, &a)
			}()
			errB := json.Unmarshal(body, &b)
			if errB == nil && b.Chunk < 0 {
				errB = fmt.Errorf("negative chunk")
			}
			if refusedBodies[name] {
				if errA == nil || errB != nil {
					t.Fatalf("decodeTx error %v (want one), encoding/json error %v (want none)", errA, errB)
				}
				return
			}
			same := (errA == nil) == (errB == nil) && (errA != nil || reflect.DeepEqual(a, b))
			if why, known := knownDifferences[name]; known {
				if same {
					t.Fatalf("read as encoding/json reads it: the known difference (%s) is gone; update decodeTx's doc", why)
				}
				return
			}
			if !same {
				t.Fatalf("decodeTx error %v, read\n%+v\nencoding/json error %v, read\n%+v", errA, a, errB, b)
			}
		})
	}
}

// FuzzDecodeTxAsEncodingJSON: decodeTx reads any ASCII body without raw
// control characters that encoding/json reads as encoding/json does, and
// never panics (non-ASCII field names: goccy does not fold Unicode case;
// a body encoding/json refuses, goccy may read: known differences).
func FuzzDecodeTxAsEncodingJSON(f *testing.F) {
	for name, body := range adversarialBodies() {
		if len(body) < 4096 && !refusedBodies[name] && knownDifferences[name] == "" {
			f.Add(body)
		}
	}
	f.Add([]byte(`{"v":1,"source":"crm","commit_lsn":"0/1","end_lsn":"0/2","commit_time":"2026-11-29T19:20:01Z","xid":1,"chunk":0,"last":true,"events":[{"v":1,"id":"x","entity":"e","op":"upsert","key":"k","pos":{"lsn":"0/1","commit_time":"2026-11-29T19:20:01Z"},"data":{"a":"b","n":null,"m":{"x":[1,"2",true]}},"unchanged":["u"],"versions":{"a":{"source":"erp","at":"2026-11-29T19:20:01Z"}}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if !utf8.Valid(body) || noEscapedAlnum(body) != nil {
			if decodeTx(body, &transform.Tx{}) == nil {
				t.Fatalf("decodeTx read %q", body)
			}
			return
		}
		if bytes.ContainsFunc(body, func(r rune) bool { return r < 0x20 || r > 0x7f }) {
			return // a known difference
		}
		var a, b transform.Tx
		errA := decodeTx(body, &a)
		errB := json.Unmarshal(body, &b)
		if errB == nil && b.Chunk < 0 {
			errB = fmt.Errorf("negative chunk")
		}
		if errB != nil {
			return // refused by encoding/json: goccy may take it (known differences)
		}
		if errA != nil {
			t.Fatalf("decodeTx error %v, encoding/json read it, on %q", errA, body)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("on %q: decodeTx read\n%+v\nencoding/json read\n%+v", body, a, b)
		}
	})
}
