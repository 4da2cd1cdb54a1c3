package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/duplex-cdc/duplex/internal/config"
)

// TestSigningKeys: the capture's key is generated in the data directory
// at the first start (seed 0600, public key next to it) and the same key
// is read again; a flow trusts it; a seed others may read is refused; a
// flow in another process reads configured public keys and refuses to
// start without any.
func TestSigningKeys(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{Systems: map[string]*config.SystemConfig{"crm": {}}}
	s, err := loadSigner(cfg, dir, "crm")
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, SigningDirName, "crm.nk")
	if fi, err := os.Stat(seed); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seed %s: %v %v", seed, fi, err)
	}
	again, err := loadSigner(cfg, dir, "crm")
	if err != nil || again.PublicKey() != s.PublicKey() {
		t.Fatalf("second start: %v, key %s want %s", err, again.PublicKey(), s.PublicKey())
	}
	v, err := loadVerifier(cfg, dir, "crm")
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg("duplex.crm.tx")
	m.Data = []byte("{}")
	if err := s.Sign(m, "id"); err != nil {
		t.Fatal(err)
	}
	m.Header.Set(nats.MsgIdHdr, "id")
	if err := v.Verify(m.Subject, m.Header, m.Data); err != nil {
		t.Errorf("verify with the data directory's public key: %v", err)
	}

	// A flow elsewhere: the public key file named in the configuration.
	other := t.TempDir()
	cfg2 := &config.Config{Systems: map[string]*config.SystemConfig{"crm": {SigningPublicKeys: []string{filepath.Join(dir, SigningDirName, "crm.pub")}}}}
	if v, err := loadVerifier(cfg2, other, "crm"); err != nil || v.Verify(m.Subject, m.Header, m.Data) != nil {
		t.Errorf("configured public key: %v", err)
	}
	if _, err := loadVerifier(cfg, other, "crm"); err == nil || !strings.Contains(err.Error(), "signing_public_keys") {
		t.Errorf("no key anywhere: %v, want an error naming signing_public_keys", err)
	}
	if _, err := os.Stat(filepath.Join(other, SigningDirName, "crm.nk")); err == nil {
		t.Error("a flow without keys generated a seed")
	}

	if err := os.Chmod(seed, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadSigner(cfg, dir, "crm"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a seed others may read: %v, want a refusal", err)
	}
}
