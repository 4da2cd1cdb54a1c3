package pii

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/transform"
)

const (
	k1 = "k1 MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	k2 = "k2 6162636465666768696a6b6c6d6e6f707172737475767778797a414243444546"
)

func testMapping(t *testing.T) *transform.Mapping {
	t.Helper()
	y := `version: 1
systems: [crm, erp]
entities:
  - name: customer
    key: id
    fields:
      - {name: id, type: uuid, owner: crm}
      - {name: email, type: text, owner: both, pii: true}
      - {name: limit, type: money, owner: crm, pii: true}
      - {name: country, type: text, owner: crm}
    systems:
      crm: {table: public.a, key_column: id, columns: {id: {column: id}, email: {column: email}, limit: {column: lim, currency: EUR}, country: {column: country}}}
      erp: {table: public.c, key_column: id, columns: {id: {column: id}, email: {column: email}, limit: {column: lim, currency: EUR}, country: {column: country}}}
`
	p := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := transform.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ring(t *testing.T, text, current string) *Keyring {
	t.Helper()
	r, err := ParseKeys("test", text)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetCurrent(current); err != nil {
		t.Fatal(err)
	}
	return r
}

// wire encodes and decodes an event as the bus does.
func wire(t *testing.T, ev transform.Event) transform.Event {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var out transform.Event
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCipher_SealOpenRotation(t *testing.T) {
	m := testMapping(t)
	old, err := NewCipher(m, ring(t, k1, "k1"))
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := NewCipher(m, ring(t, k1+"\n"+k2, "k2"))
	if err != nil {
		t.Fatal(err)
	}
	data := map[string]any{"email": "alice@example.com", "limit": map[string]any{"amount": "1234567890123.4500", "currency": "EUR"}, "country": "DE"}
	base := transform.Event{ID: "crm:0/1:0", Source: "crm", Entity: "customer", Key: "K1", Data: data}
	want := wire(t, base).Data
	for _, tc := range []struct {
		name string
		seal *Cipher
	}{{"old key", old}, {"new key", rotated}} {
		t.Run(tc.name, func(t *testing.T) {
			ev := base
			if err := tc.seal.Seal(&ev); err != nil {
				t.Fatal(err)
			}
			if data["email"] != "alice@example.com" {
				t.Fatal("Seal changed the caller's map")
			}
			b, _ := json.Marshal(ev)
			if strings.Contains(string(b), "alice@") || strings.Contains(string(b), "1234567890123") {
				t.Fatalf("plaintext on the wire: %s", b)
			}
			if !strings.Contains(string(b), `"country":"DE"`) {
				t.Fatalf("a field that is not pii is sealed: %s", b)
			}
			got := wire(t, ev)
			if err := rotated.Open(&got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Data, want) {
				t.Fatalf("opened %v, want %v", got.Data, want)
			}
		})
	}
	// Sealed with k2, opened by a flow that has only k1: refused, naming k2.
	ev := base
	if err := rotated.Seal(&ev); err != nil {
		t.Fatal(err)
	}
	got := wire(t, ev)
	err = old.Open(&got)
	var oe *OpenError
	if !errors.As(err, &oe) || !errors.Is(err, ErrUnknownKey) || oe.KeyID != "k2" || !strings.Contains(err.Error(), "key k2") {
		t.Fatalf("Open with a missing key: %v", err)
	}
	if !IsSealed(got.Data["email"]) {
		t.Fatal("a failed Open changed the event")
	}
	// Moved to another row: does not authenticate.
	got = wire(t, ev)
	got.Key = "K2"
	if err := rotated.Open(&got); err == nil || !strings.Contains(err.Error(), "authenticate") {
		t.Fatalf("Open of a value moved to another row: %v", err)
	}
}

func TestParseKeys(t *testing.T) {
	for _, tc := range []struct {
		name, text, wantErr string
	}{
		{"two", k1 + "; " + k2, ""},
		{"comment", "# keys\n\n" + k1, ""},
		{"short", "k1 c2hvcnQ=", "k1: 5 bytes"},
		{"twice", k1 + "\n" + k1, "listed twice"},
		{"bad id", "k/1 MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "key id"},
		{"one word", "k1", "want"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKeys("test", tc.text)
			if (err != nil) != (tc.wantErr != "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "MDEy") {
				t.Fatalf("error shows a key: %v", err)
			}
		})
	}
	r, _ := ParseKeys("test", k1)
	if err := r.SetCurrent("k9"); err == nil || !strings.Contains(err.Error(), "k9") {
		t.Fatalf("SetCurrent of a missing key: %v", err)
	}
}
