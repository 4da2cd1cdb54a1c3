package pii

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// KeySize is the length of a key in bytes (AES-256).
const KeySize = 32

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Keyring holds the keys personal fields are sealed and opened with.
type Keyring struct {
	// Current is the id of the key new values are sealed with.
	Current string
	keys    map[string][]byte
	order   []string
}

// ParseKeys reads keys from text: one key a line (or entries separated by
// ';'), "<key id> <key>", the key as 32 bytes in standard base64 (44
// characters) or hex (64 characters); blank lines and lines starting with
// '#' are skipped. origin names where the text comes from, for errors
// (never the keys themselves). A key id is 1 to 64 of A-Z a-z 0-9 . _ -.
func ParseKeys(origin, text string) (*Keyring, error) {
	r := &Keyring{keys: map[string][]byte{}}
	text = strings.ReplaceAll(text, ";", "\n")
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s: entry %d: want \"<key id> <key>\"", origin, n+1)
		}
		id := f[0]
		if !keyIDRE.MatchString(id) {
			return nil, fmt.Errorf("%s: entry %d: key id %q: want 1 to 64 of A-Z a-z 0-9 . _ -", origin, n+1, truncate(id))
		}
		key, err := decodeKey(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s: key %s: %w", origin, id, err)
		}
		if _, dup := r.keys[id]; dup {
			return nil, fmt.Errorf("%s: key %s is listed twice", origin, id)
		}
		r.keys[id] = key
		r.order = append(r.order, id)
	}
	return r, nil
}

func decodeKey(s string) ([]byte, error) {
	var b []byte
	var err error
	if len(s) == 2*KeySize {
		b, err = hex.DecodeString(s)
	} else {
		b, err = base64.StdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, fmt.Errorf("not base64 or hex")
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("%d bytes, want %d (AES-256)", len(b), KeySize)
	}
	return b, nil
}

// Merge adds the keys of o (a second source: file and variable); a key id
// in both must have the same key.
func (r *Keyring) Merge(o *Keyring) error {
	for _, id := range o.order {
		if k, ok := r.keys[id]; ok {
			if string(k) != string(o.keys[id]) {
				return fmt.Errorf("key %s is given twice with different keys", id)
			}
			continue
		}
		r.keys[id] = o.keys[id]
		r.order = append(r.order, id)
	}
	return nil
}

// SetCurrent makes id the key new values are sealed with; "" takes the
// last key listed. A key id the ring lacks is an error naming it.
func (r *Keyring) SetCurrent(id string) error {
	if id == "" {
		if len(r.order) == 0 {
			return fmt.Errorf("no keys")
		}
		id = r.order[len(r.order)-1]
	}
	if _, ok := r.keys[id]; !ok {
		return fmt.Errorf("current key %s is not among the keys (%s)", id, strings.Join(r.IDs(), ", "))
	}
	r.Current = id
	return nil
}

// IDs lists the key ids, sorted.
func (r *Keyring) IDs() []string {
	ids := slices.Clone(r.order)
	slices.Sort(ids)
	return ids
}

// Has reports whether the ring holds key id.
func (r *Keyring) Has(id string) bool { _, ok := r.keys[id]; return ok }

// key returns key id, or nil.
func (r *Keyring) key(id string) []byte { return r.keys[id] }

// truncate shortens s for an error message.
func truncate(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// Len is the number of keys.
func (r *Keyring) Len() int { return len(r.keys) }

// Key returns the bytes of key id (nil when the ring lacks it), for a key
// used for something else than sealing (pii.hash_key).
func (r *Keyring) Key(id string) []byte { return r.keys[id] }
