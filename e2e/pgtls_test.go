package e2e

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/internal/harness"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverTLS is a server certificate for 127.0.0.1 and localhost signed
// by ca.
func (ca *testCA) serverTLS(t *testing.T) *harness.ServerTLS {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &harness.ServerTLS{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})}
}

// TestPostgresTLS: both databases run with ssl = on and a certificate
// signed by a CA made in the test.
//   - sslmode=verify-full with that CA (sslrootcert) and require_tls:
//     duplex check passes without a warning, and duplex run replicates a
//     change with every session it opens there, the replication session
//     included, over TLS (pg_stat_ssl);
//   - with another CA, check is refused with a message naming the
//     system and the certificate;
//   - require_tls with sslmode=prefer is refused by check and run,
//     naming the system and the key;
//   - without require_tls, sslmode=prefer is warned about, naming the
//     system; the DSN's password appears in none of these outputs.
func TestPostgresTLS(t *testing.T) {
	ca, wrongCA := newTestCA(t, "duplex test CA"), newTestCA(t, "another CA")
	f := newFixture(t, fixtureOptions{tls: ca.serverTLS(t)})
	caFile, wrongFile := filepath.Join(f.dir, "ca.pem"), filepath.Join(f.dir, "wrong-ca.pem")
	for p, b := range map[string][]byte{caFile: ca.pem, wrongFile: wrongCA.pem} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const pw = "tlsdsnpassword1234" // trust authentication ignores it; it must never be shown
	dsns := func(params string) map[string]string {
		return map[string]string{
			"CRM_DSN": fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?%s", pw, f.crm.Port(), f.crmDB, params),
			"ERP_DSN": fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?%s", pw, f.erp.Port(), f.erpDB, params),
		}
	}
	plain, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	setRequireTLS := func(on bool) {
		conf := string(plain)
		if on {
			conf = strings.ReplaceAll(conf, "    dsn: ${CRM_DSN}\n", "    dsn: ${CRM_DSN}\n    require_tls: true\n")
			conf = strings.ReplaceAll(conf, "    dsn: ${ERP_DSN}\n", "    dsn: ${ERP_DSN}\n    require_tls: true\n")
		}
		if err := os.WriteFile(f.cfgPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	noPassword := func(what, out string) {
		t.Helper()
		if strings.Contains(out, pw) {
			t.Errorf("%s shows the DSN's password:\n%s", what, out)
		}
	}

	// verify-full with the right CA, require_tls on both systems.
	setRequireTLS(true)
	f.dsn = dsns("sslmode=verify-full&sslrootcert=" + caFile)
	code, out := f.duplexCLI("check")
	if code != 0 || !strings.Contains(out, "fit both databases") || strings.Contains(out, "not verified TLS") {
		t.Fatalf("check with verify-full and the server's CA: exit %d\n%s", code, out)
	}
	noPassword("check with verify-full", out)
	var log bytes.Buffer
	f.logTo = &log
	stop := f.inProcess()
	id := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'over TLS', 'EUR')`, id)
	erp := f.conn("erp")
	waitFor(t, 60*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1`, id)
		return n == 1, "the CRM's account is not in the ERP yet"
	})
	ctx := context.Background()
	for _, s := range []struct {
		cl   *harness.Cluster
		apps []string
	}{{f.crm, []string{"duplex-crm", "duplex-to-crm"}}, {f.erp, []string{"duplex-erp", "duplex-to-erp"}}} {
		c := f.conn(strings.TrimPrefix(s.apps[0], "duplex-"))
		rows, err := c.Query(ctx, `SELECT a.application_name, a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.application_name = ANY($1) ORDER BY 1, 2`, s.apps)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for rows.Next() {
			var app, backend string
			var ssl bool
			if err := rows.Scan(&app, &backend, &ssl); err != nil {
				t.Fatal(err)
			}
			seen[app+" "+backend] = true
			if !ssl {
				t.Errorf("session %s (%s) of duplex is not TLS", app, backend)
			}
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		// The capture's replication session (a walsender) and the
		// flow's sink session.
		for _, want := range []string{s.apps[0] + " walsender", s.apps[1] + " client backend"} {
			if !seen[want] {
				t.Errorf("no session %s among %v", want, seen)
			}
		}
	}
	stop()
	if strings.Contains(log.String(), "not verified TLS") {
		t.Errorf("duplex run warned about TLS with verify-full:\n%s", log.String())
	}
	noPassword("the log of run with verify-full", log.String())

	// Another CA: refused, naming the system and the certificate.
	f.dsn = dsns("sslmode=verify-full&sslrootcert=" + wrongFile)
	code, out = f.duplexCLI("check")
	if code == 0 || !strings.Contains(out, "system crm: connect") || !strings.Contains(out, "not signed by the CA in sslrootcert") {
		t.Errorf("check with a CA that did not sign the server's certificate: exit %d, want a refusal naming system crm and the certificate\n%s", code, out)
	}
	noPassword("check with the wrong CA", out)
	t.Logf("check with the wrong CA:\n%s", out)

	// require_tls with sslmode=prefer: refused before connecting.
	f.dsn = dsns("sslmode=prefer")
	code, out = f.duplexCLI("check")
	if code == 0 || !strings.Contains(out, "systems.crm: require_tls") || !strings.Contains(out, "systems.erp: require_tls") || !strings.Contains(out, "sslmode=prefer") {
		// Fatal: duplex run below would not return without the refusal.
		t.Fatalf("check with require_tls and sslmode=prefer: exit %d, want a refusal naming both systems\n%s", code, out)
	}
	noPassword("check with require_tls and sslmode=prefer", out)
	code, out = f.duplexCLI("run", "--listen", "off")
	if code == 0 || !strings.Contains(out, "systems.crm: require_tls") {
		t.Errorf("run with require_tls and sslmode=prefer: exit %d, want a refusal\n%s", code, out)
	}
	noPassword("run with require_tls and sslmode=prefer", out)

	// Without require_tls, a warning naming the system.
	setRequireTLS(false)
	code, out = f.duplexCLI("check")
	if code != 0 || !strings.Contains(out, "warning: system crm: the connection to PostgreSQL is not verified TLS") || !strings.Contains(out, "warning: system erp: the connection to PostgreSQL is not verified TLS") {
		t.Errorf("check with sslmode=prefer: exit %d, want it to pass with a warning for each system\n%s", code, out)
	}
	noPassword("check with sslmode=prefer", out)
}
