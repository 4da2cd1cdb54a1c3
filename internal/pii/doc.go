// Package pii owns what duplex does to personal data: the keys that
// encrypt fields marked pii: true in the mapping on the bus (keys.go), the
// encryption of those fields' values in canonical events and their
// decryption by the flow that applies them (cipher.go), and the keyed hash
// that duplex.field_versions records instead of a value (hash.go).
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
