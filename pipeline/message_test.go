package pipeline

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/duplex-cdc/duplex/transform"
)

// TestMessage_SameJSONAsEncodingJSON: the bus body encodeTx writes (with
// goccy/go-json) is byte for byte what encoding/json writes, and decodeTx
// reads any body into what encoding/json reads, for the values a
// transaction carries and the awkward ones: HTML characters, escapes,
// astral and invalid UTF-8, exact decimals past float precision, nested
// values, zones and nanoseconds.
func TestMessage_SameJSONAsEncodingJSON(t *testing.T) {
	zone := time.FixedZone("", -(3*3600 + 30*60))
	at := time.Date(2026, 11, 29, 19, 20, 1, 123456789, zone)
	tx := &transform.Tx{Version: 1, Source: "crm", CommitLSN: 0x16B374D848, EndLSN: 0x16B374D900, CommitTime: at, Xid: 4294967295, Chunk: 2, Last: true,
		Redo: true, Part: 1, PrevLSN: 7,
		Events: []transform.Event{
			{Version: 1, ID: "crm:16/B374D848:0", Source: "crm", Entity: "account", Op: "upsert", Key: "k<&>'\"\\",
				Pos: transform.Position{LSN: 0x16B374D848, CommitTime: at.UTC(), Xid: 9, Index: 0},
				Data: map[string]any{
					"name": "Zoë <script>&amp; \u2028\u2029 \t\x00 😀", "bad": "a\xffb", "amount": decimal.RequireFromString("12345678901234567890.123456789012"),
					"null": nil, "b": true, "n": 12, "nested": map[string]any{"z": []any{"1", nil, false}, "a": "x"},
				},
				Unchanged: []string{"body"}, Redo: true, Violated: []string{"owner"},
				Versions: map[string]transform.FieldVersion{"email": {Source: "erp", At: at}},
			},
			{Version: 1, ID: "crm:16/B374D848:1", Source: "crm", Entity: "order", Op: "delete", Key: "2"},
		},
	}
	got, err := encodeTx(tx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(tx)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("encodeTx:\n%s\nencoding/json:\n%s", got, want)
	}
	for _, body := range [][]byte{want, []byte(`{"v":1,"source":"crm","events":[{"data":{"x":1e400,"y":"\ud83d\ude00\udc00","z":-0.0}}],"chunk":0,"commit_lsn":"0/1","end_lsn":"0/2","commit_time":"2026-11-29T19:20:01Z","xid":1,"last":true}`),
		[]byte(`{"v":1,"source":"crm","source":"erp","events":[]}`), []byte(`{"v":1,"events":[]} x`), []byte(`{"v":1,"events":[`),
		[]byte(`{"v":"1"}`), []byte(`{"xid":-1}`), []byte(`{"commit_lsn":"1/2x"}`), []byte(`{"events":[{"op":7}]}`), []byte(`null`), []byte(`[]`)} {
		var a, b transform.Tx
		errA := decodeTx(body, &a)
		errB := json.Unmarshal(body, &b)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("decodeTx error %v, encoding/json error %v, on %s", errA, errB, body)
		}
		if errA == nil && !reflect.DeepEqual(a, b) {
			t.Fatalf("decodeTx read\n%#v\nencoding/json read\n%#v", a, b)
		}
	}
}
