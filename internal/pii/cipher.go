package pii

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/duplex-cdc/duplex/transform"
)

// Alg is the algorithm a sealed value names ("pii" in its JSON).
const Alg = "A256GCM"

// Sealed is a personal field's value as it travels on the bus.
type Sealed struct {
	Alg string `json:"pii"`
	KID string `json:"kid"`
	// CT is the base64 (standard) of the 12-byte nonce followed by the
	// ciphertext and the 16-byte GCM tag.
	CT string `json:"ct"`
}

// ErrUnknownKey is the cause of an OpenError whose key id the keyring
// lacks (errors.Is).
var ErrUnknownKey = errors.New("unknown key id")

// OpenError says why a sealed value of an event did not open: a key id the
// flow does not have (ErrUnknownKey), a value that fails authentication
// (damaged, or moved from another field or row), or a malformed envelope.
// It is permanent: the event is dead-lettered, never applied as ciphertext.
type OpenError struct {
	Event, Entity, Key, Field, KeyID string
	Err                              error
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("event %s: entity %s key %s field %s (pii): key %s: %v", e.Event, e.Entity, e.Key, e.Field, e.KeyID, e.Err)
}

func (e *OpenError) Unwrap() error { return e.Err }

// Permanent marks the error as one a retry cannot cure.
func (e *OpenError) Permanent() bool { return true }

// Cipher seals the personal fields of events (Field.PII in the mapping)
// and opens them. Safe for concurrent use.
type Cipher struct {
	mapping *transform.Mapping
	ring    *Keyring
	aeads   map[string]cipher.AEAD
}

// NewCipher returns a cipher for the mapping's personal fields. A ring
// without a current key (or nil: no keys) only opens, and fails to seal a
// personal field; an empty ring opens nothing (ErrUnknownKey).
func NewCipher(m *transform.Mapping, ring *Keyring) (*Cipher, error) {
	if ring == nil {
		ring = &Keyring{keys: map[string][]byte{}}
	}
	c := &Cipher{mapping: m, ring: ring, aeads: map[string]cipher.AEAD{}}
	for _, id := range ring.order {
		b, err := aes.NewCipher(ring.key(id))
		if err != nil {
			return nil, fmt.Errorf("pii: key %s: %w", id, err)
		}
		g, err := cipher.NewGCM(b)
		if err != nil {
			return nil, fmt.Errorf("pii: key %s: %w", id, err)
		}
		c.aeads[id] = g
	}
	return c, nil
}

// CurrentKey is the id of the key new values are sealed with.
func (c *Cipher) CurrentKey() string { return c.ring.Current }

// aad binds a sealed value to where it belongs.
func aad(ev *transform.Event, field string) []byte {
	return []byte("duplex-pii/1\x00" + ev.Source + "\x00" + ev.Entity + "\x00" + ev.Key + "\x00" + field)
}

// Seal replaces the values of ev's personal fields in Data by Sealed
// values under the current key. Data is replaced by a new map (the old
// one, which others may share, is left as it was); an event without
// personal fields is left alone, as is a value already sealed.
func (c *Cipher) Seal(ev *transform.Event) error {
	return c.SealWith(ev, c.ring.Current)
}

// SealWith seals with key kid (tests of rotation; Seal uses the current).
func (c *Cipher) SealWith(ev *transform.Event, kid string) error {
	if len(ev.Data) == 0 {
		return nil
	}
	e := c.mapping.Entity(ev.Entity)
	if e == nil {
		return nil
	}
	var out map[string]any
	for _, f := range e.Fields {
		if !f.PII {
			continue
		}
		v, ok := ev.Data[f.Name]
		if !ok {
			continue
		}
		if _, sealed := asSealed(v); sealed {
			continue
		}
		g := c.aeads[kid]
		if g == nil {
			return fmt.Errorf("pii: entity %s field %s: no key to seal with (key id %q): %w", e.Name, f.Name, kid, ErrUnknownKey)
		}
		plain, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("pii: event %s field %s: encode: %w", ev.ID, f.Name, err)
		}
		nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(plain)+g.Overhead())
		if _, err := rand.Read(nonce); err != nil {
			return fmt.Errorf("pii: nonce: %w", err)
		}
		ct := g.Seal(nonce, nonce, plain, aad(ev, f.Name))
		if out == nil {
			out = make(map[string]any, len(ev.Data))
			for k, x := range ev.Data {
				out[k] = x
			}
		}
		out[f.Name] = Sealed{Alg: Alg, KID: kid, CT: base64.StdEncoding.EncodeToString(ct)}
	}
	if out != nil {
		ev.Data = out
	}
	return nil
}

// Open replaces every sealed value in ev's Data (of any field: the
// mapping may have stopped marking one that older events sealed) by its
// canonical value, as it would have been decoded had it travelled in
// clear. Data is replaced by a new map only when everything opened; on an
// error (*OpenError) ev is left as it was. A personal field that arrives in
// clear (published before the field was marked pii) is left as it is.
func (c *Cipher) Open(ev *transform.Event) error {
	var out map[string]any
	for name, v := range ev.Data {
		s, ok := asSealed(v)
		if !ok {
			continue
		}
		oe := &OpenError{Event: ev.ID, Entity: ev.Entity, Key: ev.Key, Field: name, KeyID: s.KID}
		if s.Alg != Alg {
			oe.Err = fmt.Errorf("algorithm %q, want %s", truncate(s.Alg), Alg)
			return oe
		}
		g := c.aeads[s.KID]
		if g == nil {
			oe.Err = fmt.Errorf("%w: this flow has keys %s", ErrUnknownKey, strings.Join(c.ring.IDs(), ", "))
			return oe
		}
		raw, err := base64.StdEncoding.DecodeString(s.CT)
		if err != nil || len(raw) < g.NonceSize()+g.Overhead() {
			oe.Err = errors.New("ciphertext is not base64 of nonce, ciphertext and tag")
			return oe
		}
		plain, err := g.Open(nil, raw[:g.NonceSize()], raw[g.NonceSize():], aad(ev, name))
		if err != nil {
			oe.Err = errors.New("does not authenticate (damaged, or sealed for another field, row or source)")
			return oe
		}
		var val any
		if err := json.Unmarshal(plain, &val); err != nil {
			oe.Err = fmt.Errorf("decrypted value is not JSON: %w", err)
			return oe
		}
		if out == nil {
			out = make(map[string]any, len(ev.Data))
			for k, x := range ev.Data {
				out[k] = x
			}
		}
		out[name] = val
	}
	if out != nil {
		ev.Data = out
	}
	return nil
}

// asSealed recognises a sealed value: a Sealed, or its JSON object as
// decoded into a map (exactly the keys pii, kid and ct, all strings).
func asSealed(v any) (Sealed, bool) {
	switch x := v.(type) {
	case Sealed:
		return x, true
	case *Sealed:
		return *x, x != nil
	case map[string]any:
		if len(x) != 3 {
			return Sealed{}, false
		}
		alg, ok1 := x["pii"].(string)
		kid, ok2 := x["kid"].(string)
		ct, ok3 := x["ct"].(string)
		if !ok1 || !ok2 || !ok3 {
			return Sealed{}, false
		}
		return Sealed{Alg: alg, KID: kid, CT: ct}, true
	}
	return Sealed{}, false
}

// IsSealed reports whether v is a sealed value.
func IsSealed(v any) bool { _, ok := asSealed(v); return ok }
