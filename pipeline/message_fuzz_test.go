package pipeline

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/duplex-cdc/duplex/transform"
)

// FuzzDecodeTx: any message body either decodes into a transaction or is
// refused; it never panics, and the assembler takes what decodes. What
// decodes encodes again, and decode(encode(tx)) is tx (empty maps, which
// the encoding omits, read back as nil) and encodes to the same bytes.
// Seeds are in testdata/fuzz/FuzzDecodeTx.
func FuzzDecodeTx(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		var tx transform.Tx
		if decodeTx(body, &tx) != nil {
			return
		}
		if tx.Chunk < 0 {
			t.Fatalf("decoded a negative chunk %d", tx.Chunk)
		}
		enc, err := encodeTx(&tx)
		if err != nil {
			t.Fatalf("%s decodes but does not encode: %v", body, err)
		}
		var back transform.Tx
		if err := decodeTx(enc, &back); err != nil {
			t.Fatalf("encoding %s of %s does not decode: %v", enc, body, err)
		}
		want := tx
		want.Events = append([]transform.Event(nil), tx.Events...)
		for i := range want.Events {
			if len(want.Events[i].Data) == 0 {
				want.Events[i].Data = nil
			}
			if len(want.Events[i].Versions) == 0 {
				want.Events[i].Versions = nil
			}
		}
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("decode(encode(tx)) = %+v, want %+v", back, want)
		}
		if again, err := encodeTx(&back); err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("encoding is not stable: %s then %s (%v)", enc, again, err)
		}

		a := &assembler{}
		a.add(&fakeMsg{seq: 1}, &tx)
		a.add(&fakeMsg{seq: 2}, &back)
		a.take(&chain{})
	})
}
