package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
)

// piiMapping is the example mapping with the customer's e-mail marked
// pii: true (whether or not the example marks it already).
func piiMapping(t *testing.T) string {
	t.Helper()
	b, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := string(b)
	const line = "{name: email,        type: text,      owner: both"
	if !strings.Contains(m, line) {
		t.Fatalf("the example mapping no longer has %q", line)
	}
	if !strings.Contains(m, line+", pii: true}") {
		m = strings.Replace(m, line+"}", line+", pii: true}", 1)
	}
	return m
}

// piiKey is a test key: 32 bytes made of c, as "<id> <base64>".
func piiKey(id string, c byte) string {
	return id + " " + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{c}, 32))
}

// streamBodies returns the bodies of every message in a stream.
func streamBodies(t *testing.T, js jetstream.JetStream, stream string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // removed
		}
		out = append(out, m.Data)
	}
	return out
}

// erpEmail reads a customer's e-mail in the ERP ("" while the row is missing).
func erpEmail(f *fixture, id uuid.UUID) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, f.env("ERP_DSN"))
	if err != nil {
		return "", false
	}
	defer c.Close(ctx)
	var email *string
	if err := c.QueryRow(ctx, `SELECT email FROM customers WHERE crm_account_id = $1`, id).Scan(&email); err != nil || email == nil {
		return "", false
	}
	return *email, true
}

// TestPII_SealedOnBusClearInTarget: a pii: true e-mail travels sealed
// (AES-GCM, key id in the envelope: the raw stream holds the ciphertext and
// not the address) and arrives in clear in the ERP. After a key rotation
// (k2 current, k1 kept) an event sealed with k1 before the rotation and
// not yet applied, and one sealed with k2 after it, both apply. An event
// sealed with a key the flow does not have (k3) is dead-lettered with the
// reason, sealed, and nothing of it is applied; one the ERP refuses is
// dead-lettered with its e-mail sealed again.
func TestPII_SealedOnBusClearInTarget(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, fixtureOptions{own: true, mapping: piiMapping(t)})
	keysFile := filepath.Join(f.dir, "pii.keys")
	setKeys := func(current string, keys ...string) {
		t.Helper()
		if err := os.WriteFile(keysFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f.tweak = func(c *config.Config) { c.PII.KeysFile, c.PII.CurrentKey = keysFile, current }
	}
	k1, k2, k3 := piiKey("k1", 1), piiKey("k2", 2), piiKey("k3", 3)
	insert := func(email string) uuid.UUID {
		t.Helper()
		id := uuid.New()
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ictx, f.env("CRM_DSN"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ictx)
		if _, err := c.Exec(ictx, `INSERT INTO accounts (id, name, email, currency) VALUES ($1, 'PII test', $2, 'EUR')`, id, email); err != nil {
			t.Fatal(err)
		}
		return id
	}
	arrives := func(id uuid.UUID, email string) {
		t.Helper()
		waitFor(t, time.Minute, func() (bool, string) {
			got, ok := erpEmail(f, id)
			return ok && got == email, fmt.Sprintf("ERP customer %s has e-mail %q (found %v), want %q", id, got, ok, email)
		})
	}
	waitPublished := func(n int) {
		t.Helper()
		waitFor(t, time.Minute, func() (bool, string) {
			got := len(streamBodies(t, f.js(), pipeline.StreamName))
			return got >= n, fmt.Sprintf("%d messages in %s, want %d", got, pipeline.StreamName, n)
		})
	}

	// 1. k1: sealed on the bus, clear in the ERP.
	setKeys("k1", k1)
	stop := f.inProcess()
	alice := "alice.pii@example.com"
	aliceID := insert(alice)
	arrives(aliceID, alice)
	if all := bytes.Join(streamBodies(t, f.js(), pipeline.StreamName), nil); bytes.Contains(all, []byte(alice)) || !bytes.Contains(all, []byte(`"kid":"k1"`)) {
		t.Fatalf("stream %s holds %s in clear, or nothing sealed with k1", pipeline.StreamName, alice)
	}

	// 2. The ERP stops; carol is captured and sealed with k1, not applied.
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	before := len(streamBodies(t, f.js(), pipeline.StreamName))
	carol := "carol.pii@example.com"
	carolID := insert(carol)
	waitPublished(before + 1)
	stop()

	// 3. Rotation: k2 current, k1 kept. Carol (k1) and bob (k2) apply.
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	setKeys("k2", k1, k2)
	stop = f.inProcess()
	bob := "bob.pii@example.com"
	bobID := insert(bob)
	arrives(carolID, carol)
	arrives(bobID, bob)

	// 4. Dave is sealed with k3 while the ERP is down; the flow then runs
	// without k3: his event is dead-lettered, naming the key.
	stop()
	setKeys("k3", k2, k3)
	stop = f.inProcess()
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	before = len(streamBodies(t, f.js(), pipeline.StreamName))
	dave := "dave.pii@example.com"
	daveID := insert(dave)
	waitPublished(before + 1)
	stop()
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	setKeys("k2", k1, k2)
	f.inProcess()
	waitFor(t, time.Minute, func() (bool, string) {
		dls, err := pipeline.ListDeadLetters(ctx, f.js(), "to-erp", 0)
		if err != nil {
			return false, err.Error()
		}
		for _, dl := range dls {
			if dl.Key == daveID.String() {
				if !strings.Contains(dl.Error, "k3") || !strings.Contains(dl.Error, "unknown key id") {
					t.Fatalf("dead letter of dave: error %q, want one naming key k3 as unknown", dl.Error)
				}
				return true, ""
			}
		}
		return false, fmt.Sprintf("no dead letter for dave (%d dead letters)", len(dls))
	})
	if got, ok := erpEmail(f, daveID); ok {
		t.Errorf("dave's e-mail was applied (%q) although his event could not be opened", got)
	}

	// 5. An event the ERP refuses (a constraint) is dead-lettered with its
	// e-mail sealed again: the flow opened it to apply it.
	f.exec("erp", `ALTER TABLE customers ADD CONSTRAINT no_poison CHECK (name <> 'POISON')`)
	eve := "eve.pii@example.com"
	eveID := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, email, currency) VALUES ($1, 'POISON', $2, 'EUR')`, eveID, eve)
	waitFor(t, time.Minute, func() (bool, string) {
		dls, err := pipeline.ListDeadLetters(ctx, f.js(), "to-erp", 0)
		if err != nil {
			return false, err.Error()
		}
		for _, dl := range dls {
			if dl.Key == eveID.String() && dl.Event != nil {
				if s, ok := dl.Event.Data["email"].(map[string]any); !ok || s["kid"] != "k2" {
					t.Fatalf("dead letter of eve holds e-mail %v, want it sealed with k2", dl.Event.Data["email"])
				}
				return true, ""
			}
		}
		return false, fmt.Sprintf("no dead letter for eve (%d dead letters)", len(dls))
	})

	// The raw streams: no address in clear, every e-mail sealed with the
	// key that was current.
	bodies := streamBodies(t, f.js(), pipeline.StreamName)
	all := bytes.Join(bodies, []byte("\n"))
	for _, e := range []string{alice, carol, bob, dave} {
		if bytes.Contains(all, []byte(e)) {
			t.Errorf("%s is in clear in stream %s", e, pipeline.StreamName)
		}
	}
	for _, kid := range []string{"k1", "k2", "k3"} {
		if !bytes.Contains(all, []byte(`"email":{"pii":"A256GCM","kid":"`+kid+`","ct":"`)) {
			t.Errorf("no e-mail sealed with %s in stream %s", kid, pipeline.StreamName)
		}
	}
	// The rest of the event stays readable.
	if !bytes.Contains(all, []byte(aliceID.String())) || !bytes.Contains(all, []byte(`"name":"PII test"`)) {
		t.Errorf("the key and the fields that are not pii are not readable in %s", pipeline.StreamName)
	}
	dlq := bytes.Join(streamBodies(t, f.js(), pipeline.DLQStream), []byte("\n"))
	for _, e := range []string{dave, eve} {
		if bytes.Contains(dlq, []byte(e)) {
			t.Errorf("%s is in clear in %s", e, pipeline.DLQStream)
		}
	}
}
