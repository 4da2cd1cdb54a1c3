package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/internal/audit"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/pipeline"
)

// setNATS replaces the nats section of the fixture's configuration file.
func (f *fixture) setNATS(section string) {
	f.t.Helper()
	b, err := os.ReadFile(f.cfgPath)
	if err != nil {
		f.t.Fatal(err)
	}
	old := "nats:\n  url: " + f.nats.URL() + "\n"
	if !strings.Contains(string(b), old) {
		f.t.Fatalf("%s has no %q", f.cfgPath, old)
	}
	if err := os.WriteFile(f.cfgPath, []byte(strings.Replace(string(b), old, section, 1)), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// runBothWays runs CRM and ERP traffic, with one CRM row larger than
// 1 MiB (carried through the object store DUPLEX_LARGE), and waits until
// both sides agree.
func (f *fixture) runBothWays(t *testing.T) {
	t.Helper()
	big := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency)
		SELECT $1, string_agg(md5(i::text), ''), 'EUR' FROM generate_series(1, 1500000/32) i`, big)
	l := startLoadWith(t, f.env("CRM_DSN"), 1, 100, 0, true)
	erp := startERP(t, f.env("ERP_DSN"), true)
	l.waitRows(t, 100, 2*time.Minute)
	l.stop()
	erpc := f.conn("erp")
	waitFor(t, 2*time.Minute, func() (bool, string) {
		n := queryInt(t, erpc, `SELECT count(*) FROM payments`)
		return n > 0, "the ERP has taken no payment yet"
	})
	erp.stop()
	settleERP(t, f.env("ERP_DSN"))
	f.waitBothConverged(2 * time.Minute)
	if n := queryInt(t, f.conn("erp"), `SELECT count(*) FROM customers WHERE crm_account_id = $1 AND length(name) = 1500000`, big); n != 1 {
		t.Errorf("the 1.5 MB account did not arrive whole in the ERP")
	}
	if n := queryInt(t, f.conn("crm"), `SELECT count(*) FROM invoices WHERE paid_amount > 0`); n == 0 {
		t.Error("no paid ERP invoice reached the CRM")
	}
}

// noViolations fails the test if duplex's log (or its embedded server's)
// shows a refusal: every identity must be allowed all it does.
func noViolations(t *testing.T, log *violations) {
	t.Helper()
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, line := range log.errs {
		if strings.Contains(line, "Violation") {
			t.Errorf("duplex was refused something it needs: %s", line)
		}
	}
}

// Write makes violations an io.Writer of log lines.
func (v *violations) Write(p []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, string(p))
	return len(p), nil
}

// violations collects the permissions violations a connection is told
// of.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// wait waits until the server reported a violation for subject.
func (v *violations) wait(t *testing.T, what, subject string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() (bool, string) {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, e := range v.errs {
			if strings.Contains(e, `Permissions Violation for Publish to "`+subject+`"`) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%s: no permissions violation for %s reported; errors: %q", what, subject, v.errs)
	})
}

// forbidden checks, against a running duplex's NATS at url, what nobody
// but duplex's identities may do: connect without credentials; publish a
// source's transactions with a flow's credentials; delete or purge the
// stream with a capture's; append an audit record with either (the
// operator can). tlsOpts are the TLS options every connection
// needs; operator, flow and capture authenticate as the operator, the
// flow to-erp and the capture of the CRM.
func forbidden(t *testing.T, url string, tlsOpts []nats.Option, operator, flow, capture nats.Option) {
	t.Helper()
	ctx := context.Background()
	connect := func(v *violations, opts ...nats.Option) (*nats.Conn, error) {
		opts = append(append([]nats.Option{nats.MaxReconnects(0), nats.Timeout(5 * time.Second)}, tlsOpts...), opts...)
		if v != nil {
			opts = append(opts, nats.ErrorHandler(v.handler))
		}
		return nats.Connect(url, opts...)
	}
	if nc, err := connect(nil); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("a client without credentials: %v, want an authorization violation", err)
	}

	opc, err := connect(nil, operator)
	if err != nil {
		t.Fatal(err)
	}
	defer opc.Close()
	ojs, err := jetstream.New(opc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := ojs.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := info.State.LastSeq

	// A flow's credentials cannot forge a CRM transaction.
	fv := &violations{}
	fnc, err := connect(fv, flow, nats.CustomInboxPrefix(pipeline.InboxPrefix(pipeline.FlowIdentity("to-erp"))))
	if err != nil {
		t.Fatal(err)
	}
	defer fnc.Close()
	fjs, _ := jetstream.New(fnc)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = fjs.Publish(pctx, pipeline.Subject("crm"), []byte(`{"source":"erp","events":[]}`), jetstream.WithMsgID("forged"))
	cancel()
	if err == nil {
		t.Error("a flow's credentials published to duplex.crm.tx")
	}
	fv.wait(t, "flow publishes duplex.crm.tx", pipeline.Subject("crm"))

	// A capture's credentials cannot delete or purge the stream.
	cv := &violations{}
	cnc, err := connect(cv, capture, nats.CustomInboxPrefix(pipeline.InboxPrefix(pipeline.CaptureIdentity("crm"))))
	if err != nil {
		t.Fatal(err)
	}
	defer cnc.Close()
	cjs, _ := jetstream.New(cnc)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = cjs.DeleteStream(dctx, pipeline.StreamName)
	cancel()
	if err == nil {
		t.Error("a capture's credentials deleted DUPLEX")
	}
	cv.wait(t, "capture deletes DUPLEX", "$JS.API.STREAM.DELETE."+pipeline.StreamName)
	if _, err := cnc.Request("$JS.API.STREAM.PURGE."+pipeline.StreamName, nil, 2*time.Second); err == nil {
		t.Error("a capture's credentials purged DUPLEX")
	}
	cv.wait(t, "capture purges DUPLEX", "$JS.API.STREAM.PURGE."+pipeline.StreamName)

	// Only the operator writes audit records.
	if _, err := audit.Append(ctx, ojs, 1, audit.Record{Time: time.Now().UTC(), Command: "dlq drop", Outcome: audit.OK}); err != nil {
		t.Errorf("the operator cannot append to %s: %v", audit.Stream, err)
	}
	for _, c := range []struct {
		who string
		js  jetstream.JetStream
		v   *violations
	}{{"flow", fjs, fv}, {"capture", cjs, cv}} {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.js.Publish(actx, audit.Subject("replay"), []byte(`{"command":"replay","outcome":"ok"}`))
		cancel()
		if err == nil {
			t.Errorf("a %s's credentials appended an audit record", c.who)
		}
		c.v.wait(t, c.who+" appends an audit record", audit.Subject("replay"))
	}

	info, err = stream.Info(ctx)
	if err != nil {
		t.Fatalf("DUPLEX after the refusals: %v", err)
	}
	if info.State.LastSeq != before {
		t.Errorf("DUPLEX last sequence %d after the refusals, was %d: something was published", info.State.LastSeq, before)
	}
}

// TestNATSAuth_Embedded: the embedded server requires authentication;
// duplex's captures and flows run as their own identities (from the data
// directory) both ways, a large change included; a client without
// credentials is refused at connect, a flow's identity cannot publish to
// duplex.crm.tx, a capture's cannot delete or purge the stream.
func TestNATSAuth_Embedded(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.setNATS("nats:\n  embedded:\n    max_payload: 1048576\n")
	log := &violations{}
	f.logTo = log
	f.inProcess()
	f.runBothWays(t)
	noViolations(t, log)

	ids, err := natsembed.LoadIdentities(filepath.Join(f.dir, natsembed.IdentityDirName),
		[]string{pipeline.OperatorIdentity, pipeline.FlowIdentity("to-erp"), pipeline.CaptureIdentity("crm")}, false)
	if err != nil {
		t.Fatal(err)
	}
	forbidden(t, f.app.JetStream().Conn().ConnectedUrl(), nil, ids[pipeline.OperatorIdentity].ConnectOption(),
		ids[pipeline.FlowIdentity("to-erp")].ConnectOption(), ids[pipeline.CaptureIdentity("crm")].ConnectOption())
}

// TestNATSAuth_DeployConfigMutualTLS: a real nats-server started with
// deploy/nats/nats-server.conf (its users and permissions) and TLS that
// verifies client certificates; duplex connects over tls:// with a client
// certificate and an nkey per identity, and runs the example flows both
// ways through it. A client without a certificate is refused at the TLS
// handshake, one without credentials at connect; the forbidden operations
// are refused.
func TestNATSAuth_DeployConfigMutualTLS(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	dir := t.TempDir()
	certs := makePKI(t, dir)

	// One nkey per identity: the server gets the public keys through the
	// variables its configuration names, duplex the seeds.
	seeds, env := map[string]string{}, []string(nil)
	for _, id := range []string{"operator", "capture-crm", "capture-erp", "flow-to-erp", "flow-to-crm"} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		seeds[id] = string(seed)
		env = append(env, "DUPLEX_NATS_"+strings.ToUpper(strings.ReplaceAll(id, "-", "_"))+"_NKEY="+pub)
	}
	conf, err := os.ReadFile(filepath.Join("..", "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nats-server.conf"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf(`tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
  timeout: 10
}
include ./nats-server.conf
`, certs.serverCert, certs.serverKey, certs.ca)
	if err := os.WriteFile(filepath.Join(dir, "main.conf"), []byte(top), 0o644); err != nil {
		t.Fatal(err)
	}
	tlsOpts := []nats.Option{nats.RootCAs(certs.ca), nats.ClientCert(certs.clientCert, certs.clientKey)}
	opKey, err := nkeys.FromSeed([]byte(seeds["operator"]))
	if err != nil {
		t.Fatal(err)
	}
	opPub, _ := opKey.PublicKey()
	srv := harness.NewNATSProcess(t, harness.NATSProcessOptions{ConfigFile: filepath.Join(dir, "main.conf"), Env: env,
		ConnectOptions: append(tlsOpts, nats.Nkey(opPub, opKey.Sign))})
	port := strings.TrimPrefix(srv.URL(), "nats://127.0.0.1:")

	for _, id := range []string{"flow-to-erp", "flow-to-crm"} {
		if err := os.WriteFile(filepath.Join(dir, id+".nk"), []byte(seeds[id]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.setNATS(fmt.Sprintf(`nats:
  url: tls://127.0.0.1:%s
  ca_file: %s
  cert_file: %s
  key_file: %s
  nkey_seed: %s
  captures:
    crm: {nkey_seed: %s}
    erp: {nkey_seed: %s}
  flows:
    to-erp: {nkey_seed_file: %s}
    to-crm: {nkey_seed_file: %s}
`, port, certs.ca, certs.clientCert, certs.clientKey, seeds["operator"], seeds["capture-crm"], seeds["capture-erp"],
		filepath.Join(dir, "flow-to-erp.nk"), filepath.Join(dir, "flow-to-crm.nk")))
	log := &violations{}
	f.logTo = log
	f.inProcess()
	f.runBothWays(t)
	noViolations(t, log)

	// mTLS: without a client certificate, no connection at all.
	if nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(0), nats.RootCAs(certs.ca), nats.Nkey(opPub, opKey.Sign)); err == nil {
		nc.Close()
		t.Error("a client without a certificate connected")
	}
	nkey := func(id string) nats.Option {
		kp, err := nkeys.FromSeed([]byte(seeds[id]))
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		return nats.Nkey(pub, kp.Sign)
	}
	forbidden(t, "tls://127.0.0.1:"+port, tlsOpts, nkey("operator"), nkey("flow-to-erp"), nkey("capture-crm"))
}

// pki is a certificate authority and a server and client certificate it
// signed, as PEM files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// makePKI makes a CA, a server certificate for 127.0.0.1 and localhost,
// and a client certificate, in dir.
func makePKI(t *testing.T, dir string) pki {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "duplex test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP, dns []string) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, DNSNames: dns}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	sDER, sKey := sign(2, "nats", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	cDER, cKey := sign(3, "duplex", x509.ExtKeyUsageClientAuth, nil, nil)
	return pki{
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", sDER),
		serverKey:  writeKey("server.key", sKey),
		clientCert: write("client.pem", "CERTIFICATE", cDER),
		clientKey:  writeKey("client.key", cKey),
	}
}
