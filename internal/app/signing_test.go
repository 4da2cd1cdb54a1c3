package app

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestSigningKeys: the capture's key is generated in the data directory
// at the first start (seed 0600, public key next to it) and the same key
// is read again; a flow trusts it; a seed others may read is refused; a
// flow in another process trusts the configured public keys, or else the
// keys recorded in the source database, and nothing else.
func TestSigningKeys(t *testing.T) {
	ctx := context.Background()
	pg := harness.NewCluster(t, harness.ClusterOptions{})
	if err := pg.CreateDatabase(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("crm")
	dir := t.TempDir()
	cfg := &config.Config{Systems: map[string]*config.SystemConfig{"crm": {DSN: dsn}}}
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
	v, err := loadVerifier(ctx, cfg, dir, "crm")
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
	cfg2 := &config.Config{Systems: map[string]*config.SystemConfig{"crm": {DSN: dsn, SigningPublicKeys: []string{filepath.Join(dir, SigningDirName, "crm.pub")}}}}
	if v, err := loadVerifier(ctx, cfg2, other, "crm"); err != nil || v.Verify(m.Subject, m.Header, m.Data) != nil {
		t.Errorf("configured public key: %v", err)
	}
	// A flow elsewhere without configured keys (a standby with a data
	// directory of its own): it refuses the capture's messages until the
	// capture recorded its key in the source database, then trusts it.
	standby, err := loadVerifier(ctx, cfg, other, "crm")
	if err != nil {
		t.Fatal(err)
	}
	var se *pipeline.SignatureError
	if err := standby.Verify(m.Subject, m.Header, m.Data); !errors.As(err, &se) || se.Reason != "unknown key" {
		t.Fatalf("a key nobody recorded: %v, want unknown key", err)
	}
	if err := recordSigningKey(ctx, dsn, "crm", s.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if err := standby.Verify(m.Subject, m.Header, m.Data); err != nil {
		t.Errorf("a key the capture recorded: %v", err)
	}
	// A key recorded for another system is no key of crm.
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seedOf, _ := kp.Seed()
	pubOf, _ := kp.PublicKey()
	if err := recordSigningKey(ctx, dsn, "erp", pubOf); err != nil {
		t.Fatal(err)
	}
	fs, err := pipeline.NewSigner("crm", seedOf)
	if err != nil {
		t.Fatal(err)
	}
	forged := nats.NewMsg("duplex.crm.tx")
	forged.Data = []byte("{}")
	if err := fs.Sign(forged, "id2"); err != nil {
		t.Fatal(err)
	}
	forged.Header.Set(nats.MsgIdHdr, "id2")
	if err := standby.Verify(forged.Subject, forged.Header, forged.Data); !errors.As(err, &se) || se.Reason != "unknown key" {
		t.Errorf("a key recorded for erp signing a crm message: %v, want unknown key", err)
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
