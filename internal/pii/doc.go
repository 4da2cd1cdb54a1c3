// Package pii owns the encryption of personal data on the bus: the keys
// that encrypt fields marked pii: true in the mapping (keys.go), and the
// sealing of those fields' values in canonical events and their opening by
// the flow that applies them (cipher.go). It does not own the keyed hash
// of duplex.field_versions (internal/pgstate.FieldHasher), nor masking in
// logs (internal/redact), nor reading the key file (internal/app).
//
// On the bus only the value of a personal field is encrypted; the rest of
// the event (entity, key, position, other fields) stays readable JSON for
// the nats CLI. A sealed value is the JSON object
//
//	{"pii": "A256GCM", "kid": "<key id>", "ct": "<base64 of nonce, ciphertext and tag>"}
//
// where the plaintext is the JSON of the canonical value (so money and
// decimals, carried as strings, come back exactly), sealed with AES-256-GCM
// (crypto/aes, crypto/cipher) under the key named by kid, and bound (as
// additional data) to the event's source, entity, key and the field, so a
// sealed value moved to another field or row does not open.
//
// Keys are 32 random bytes each with an id; one is current (used to seal),
// the others are kept to open older events: rotation adds a key and makes
// it current, and events sealed with the old one stay readable while it is
// kept.
//
// The package does not read configuration or environment variables: the
// caller hands it the text of the key file or variable.
package pii
