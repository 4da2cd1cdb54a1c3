package pipeline

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/transform"
)

// Signed messages.
//
// NATS subject permissions keep an identity from publishing to a source's
// subject, but not every way onto it: JetStream answers a request on the
// reply subject the requester names, unchecked, so an identity that may
// make a request can have the server store a message of its choosing on
// duplex.<source>.tx (deploy/nats/README.md). So every message a capture
// publishes to DUPLEX is signed with its source's key, and a flow verifies
// the signature before it decodes the message: an unsigned message, one
// signed by a key the flow does not trust for its source, or one whose
// body, subject or message id was changed after signing is dead-lettered
// (a reference: flow, stream sequence, the reason) and applies nothing.
//
// The key is an nkey (nkeys.CreateUser): an Ed25519 key pair in the text
// form NATS uses, the seed ("SU…") kept by the capture, the public key
// ("U…") given to the flows. The signature covers, each followed by a NUL
// byte: the label "duplex-signature-v1", the source, the subject, the
// message id (Nats-Msg-Id), then the body; it travels in the header
// Duplex-Signature as "<public key>.<signature, base64url without
// padding>", so a flow trusting several keys of a source (a rotation)
// knows which one to check with.

// SignatureHeader is the header of a DUPLEX message that holds its
// signature.
const SignatureHeader = "Duplex-Signature"

const signatureLabel = "duplex-signature-v1"

// signedBytes is what a signature covers.
func signedBytes(source, subject, msgID string, body []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(signatureLabel) + len(source) + len(subject) + len(msgID) + len(body) + 4)
	for _, s := range []string{signatureLabel, source, subject, msgID} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	b.Write(body)
	return b.Bytes()
}

// Signer signs the messages a source's capture publishes.
type Signer struct {
	source string
	// key is the Ed25519 private key of the nkey, derived once: nkeys'
	// KeyPair.Sign derives it from the seed on every call (a scalar
	// multiplication, 40% of the cost of a signature).
	key ed25519.PrivateKey
	pub string
}

// NewSigner returns the signer of source with the nkey seed seed (a user
// seed, "SU…"). Errors: a seed that is not a user nkey seed.
func NewSigner(source string, seed []byte) (*Signer, error) {
	kp, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		return nil, fmt.Errorf("signing key of %s: not an nkey seed: %w", source, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !strings.HasPrefix(pub, "U") {
		return nil, fmt.Errorf("signing key of %s: not a user nkey seed", source)
	}
	encoded, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("signing key of %s: %w", source, err)
	}
	_, raw, err := nkeys.DecodeSeed(encoded)
	if err != nil || len(raw) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing key of %s: not an Ed25519 nkey seed", source)
	}
	return &Signer{source: source, key: ed25519.NewKeyFromSeed(raw), pub: pub}, nil
}

// PublicKey is the signer's public key ("U…"), what flows trust.
func (s *Signer) PublicKey() string { return s.pub }

// Sign sets msg's signature header for the message id msgID (the
// Nats-Msg-Id it is published with) and its subject and body as they are.
func (s *Signer) Sign(msg *nats.Msg, msgID string) error {
	sig := ed25519.Sign(s.key, signedBytes(s.source, msg.Subject, msgID, msg.Data))
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	msg.Header.Set(SignatureHeader, s.pub+"."+base64.RawURLEncoding.EncodeToString(sig))
	return nil
}

// Verifier checks the signatures of the messages of one source.
type Verifier struct {
	source string

	mu   sync.Mutex
	keys map[string]ed25519.PublicKey
	// lookup, when set, reads the keys the source's captures recorded
	// (its database's duplex.signing_keys); a message signed by a key
	// not known yet makes the verifier read them again, at most once
	// every verifierRefresh.
	lookup func(context.Context) ([]string, error)
	looked time.Time
}

// verifierRefresh is the least time between two look-ups of a source's
// recorded keys; a message with an unknown key arriving sooner waits for
// it (a forger holding capture credentials slows the flow, nothing more).
const verifierRefresh = time.Second

// WithLookup makes v trust, besides its own keys, those lookup returns
// (the source database's duplex.signing_keys, where every instance that
// may capture the source records its public key at start): an active
// and a standby with data directories of their own trust each other's
// captures without sharing files. It reads them once now; an error then
// is returned, and v keeps its own keys.
func (v *Verifier) WithLookup(ctx context.Context, lookup func(context.Context) ([]string, error)) error {
	v.mu.Lock()
	v.lookup = lookup
	v.mu.Unlock()
	return v.refresh(ctx)
}

// refresh reads the recorded keys and trusts those that are user nkeys.
func (v *Verifier) refresh(ctx context.Context) error {
	v.mu.Lock()
	lookup := v.lookup
	if wait := verifierRefresh - time.Since(v.looked); !v.looked.IsZero() && wait > 0 {
		v.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		v.mu.Lock()
	}
	v.looked = time.Now()
	v.mu.Unlock()
	if lookup == nil {
		return nil
	}
	keys, err := lookup(ctx)
	if err != nil {
		return fmt.Errorf("signing keys of %s: %w", v.source, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, pk := range keys {
		pk = strings.TrimSpace(pk)
		if _, ok := v.keys[pk]; ok || !strings.HasPrefix(pk, "U") {
			continue
		}
		if key, err := userPublicKey(pk); err == nil {
			v.keys[pk] = key
		}
	}
	return nil
}

func (v *Verifier) key(pub string) (ed25519.PublicKey, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	key, ok := v.keys[pub]
	return key, ok
}

// userPublicKey decodes a user public nkey ("U…", base32 with a CRC) into
// its Ed25519 public key. Errors: not a valid user public nkey.
func userPublicKey(pk string) (ed25519.PublicKey, error) {
	if !strings.HasPrefix(pk, "U") {
		return nil, fmt.Errorf("not a user public nkey")
	}
	raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(pk))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not a user public nkey")
	}
	return ed25519.PublicKey(raw), nil
}

// NewVerifier returns a verifier that trusts publicKeys (user nkeys,
// "U…") for source; several keys let a source's key be rotated (trust the
// new key, switch the capture to it, then drop the old one once every
// message it signed is applied). Errors: no key, or one that is not a
// user public key.
func NewVerifier(source string, publicKeys []string) (*Verifier, error) {
	return newVerifier(source, publicKeys, false)
}

// NewRecordedKeysVerifier returns a verifier that starts with publicKeys,
// possibly none, and is to learn the rest from WithLookup.
func NewRecordedKeysVerifier(source string, publicKeys []string) (*Verifier, error) {
	return newVerifier(source, publicKeys, true)
}

func newVerifier(source string, publicKeys []string, none bool) (*Verifier, error) {
	if len(publicKeys) == 0 && !none {
		return nil, fmt.Errorf("signing keys of %s: none trusted", source)
	}
	v := &Verifier{source: source, keys: map[string]ed25519.PublicKey{}}
	for _, pk := range publicKeys {
		pk = strings.TrimSpace(pk)
		key, err := userPublicKey(pk)
		if err != nil {
			return nil, fmt.Errorf("signing keys of %s: %q is not a user public nkey (U…)", source, truncate(pk, 12))
		}
		v.keys[pk] = key
	}
	return v, nil
}

// SignatureError says why a message's signature was refused; Reason is a
// short class for metrics ("unsigned", "unknown key", "bad signature").
type SignatureError struct {
	Reason string
	Detail string
}

func (e *SignatureError) Error() string {
	return "signature refused (" + e.Reason + "): " + e.Detail
}

// Verify checks the signature of a message with subject, headers and
// body. Errors: *SignatureError.
func (v *Verifier) Verify(subject string, hdr nats.Header, body []byte) error {
	raw := ""
	if hdr != nil {
		raw = hdr.Get(SignatureHeader)
	}
	if raw == "" {
		return &SignatureError{Reason: "unsigned", Detail: fmt.Sprintf("message on %s carries no %s header: it was not published by the capture of %s", subject, SignatureHeader, v.source)}
	}
	pub, sig64, ok := strings.Cut(raw, ".")
	if !ok {
		return &SignatureError{Reason: "bad signature", Detail: fmt.Sprintf("%s header of a message on %s is not <key>.<signature>", SignatureHeader, subject)}
	}
	key, ok := v.key(pub)
	if !ok {
		// A key recorded since the last look-up (a standby's capture
		// took over): read the source's recorded keys again.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := v.refresh(ctx)
		cancel()
		if key, ok = v.key(pub); !ok && err != nil {
			return fmt.Errorf("message on %s is signed by key %s, not trusted yet, and the keys recorded for %s could not be read: %w", subject, truncate(pub, 12), v.source, err)
		}
	}
	if !ok {
		return &SignatureError{Reason: "unknown key", Detail: fmt.Sprintf("message on %s is signed by key %s, which is not trusted for %s (neither configured nor recorded in its duplex.signing_keys)", subject, truncate(pub, 12), v.source)}
	}
	sig, err := base64.RawURLEncoding.DecodeString(sig64)
	if err != nil {
		return &SignatureError{Reason: "bad signature", Detail: fmt.Sprintf("message on %s: signature is not base64url", subject)}
	}
	msgID := ""
	if hdr != nil {
		msgID = hdr.Get(nats.MsgIdHdr)
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(key, signedBytes(v.source, subject, msgID, body), sig) {
		return &SignatureError{Reason: "bad signature", Detail: fmt.Sprintf("message %q on %s: the signature of key %s does not match its body, subject and message id", truncate(msgID, 64), subject, truncate(pub, 12))}
	}
	return nil
}

// IsSignatureError reports whether err is a refused signature.
func IsSignatureError(err error) bool {
	var se *SignatureError
	return errors.As(err, &se)
}

// truncate shortens s for an error message: at most n bytes, then "…".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// countRefused counts a refusal of the flow by reason.
func (a *Applier) countRefused(reason string) {
	a.cfg.Stats.update(func(s *FlowCounts) {
		if s.Refused == nil {
			s.Refused = map[string]int64{}
		}
		s.Refused[reason]++
	})
}

// refuseMsg dead-letters a message the flow refuses as a whole (no valid
// signature, another source): a reference to it (flow, stream sequence,
// the reason), not its body, which nothing vouches for.
func (a *Applier) refuseMsg(ctx context.Context, m jetstream.Msg, reason string, cause error) error {
	a.countRefused(reason)
	seq := seqOf(m)
	dl := &DeadLetter{Flow: a.cfg.Flow, Stage: "apply", Source: a.cfg.Source, Error: "message refused: " + cause.Error(), FailedAt: time.Now().UTC(), StreamSeq: seq}
	a.log.Error("message refused: not produced by the source's capture", slog.Uint64("stream_seq", seq), slog.String("reason", reason), slog.Any("error", cause))
	a.cfg.Stats.update(func(s *FlowCounts) { s.DeadLetters++ })
	return publishDeadLetter(ctx, a.js, DLQSubject(a.cfg.Flow), fmt.Sprintf("dlq:%s:seq:%d", a.cfg.Flow, seq), dl)
}

// enforce re-checks each event of tx against the mapping
// (transform.Mapping.CheckIncoming) and dead-letters, and removes from tx,
// those that break it. The transaction itself stays, with what is left:
// its position and chunk numbering keep the flow's order (reorder.go).
func (a *Applier) enforce(ctx context.Context, tx *transform.Tx) error {
	if a.cfg.Mapping == nil {
		return nil
	}
	now := time.Now()
	var keep []transform.Event
	for i := range tx.Events {
		err := a.cfg.Mapping.CheckIncoming(&tx.Events[i], a.cfg.Source, a.cfg.Target, now, a.cfg.MaxClockSkew)
		if err == nil {
			if keep != nil {
				keep = append(keep, tx.Events[i])
			}
			continue
		}
		if keep == nil {
			keep = append(make([]transform.Event, 0, len(tx.Events)), tx.Events[:i]...)
		}
		a.countRefused("mapping")
		if err := a.deadLetter(ctx, tx, i, err, 1); err != nil {
			return err
		}
	}
	if keep != nil {
		tx.Events = keep
	}
	return nil
}
