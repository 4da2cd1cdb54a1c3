package ops

import (
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/duplex-cdc/duplex/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testToken = "test-token-0123456789abcdef"

func newTestServer(t *testing.T) *Server {
	t.Helper()
	s, err := Listen(Config{Addr: "127.0.0.1:0", Token: testToken}, nil, NewMetrics(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve runs s until the test ends.
func serve(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func testClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type call struct {
	method, path, body string
	header             map[string]string
}

func do(t *testing.T, c *http.Client, base string, k call) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if k.body != "" {
		body = strings.NewReader(k.body)
	}
	req, err := http.NewRequest(k.method, base+k.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for h, v := range k.header {
		req.Header.Set(h, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", k.method, k.path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestServer_Serve: Serve serves until its context ends, then returns
// once the server is shut down, leaving no goroutine behind.
func TestServer_Serve(t *testing.T) {
	s := newTestServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + s.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "alive") {
		t.Errorf("GET /healthz = %d %s", resp.StatusCode, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil after the context ended", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of the context ending")
	}
	if _, err := client.Get("http://" + s.Addr() + "/healthz"); err == nil {
		t.Error("still serving after Serve returned")
	}
}

// TestServer_ServeListenerFails: when the listener fails Serve returns
// the error at once, without waiting for its context.
func TestServer_ServeListenerFails(t *testing.T) {
	s := newTestServer(t)
	_ = s.ln.Close()
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve = nil on a closed listener, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return on a closed listener")
	}
}

// TestListen_RefusesNoToken: the API is never served without a token.
func TestListen_RefusesNoToken(t *testing.T) {
	if s, err := Listen(Config{Addr: "127.0.0.1:0"}, nil, NewMetrics(), nil); err == nil {
		_ = s.ln.Close()
		t.Fatal("Listen without a token succeeded")
	}
}

// TestServer_Refusals: what the listener refuses before any work is done
// (the handlers behind are never reached: the server has no App). The
// read-only routes answer without the token.
func TestServer_Refusals(t *testing.T) {
	s := newTestServer(t)
	serve(t, s)
	c := testClient()
	base := "http://" + s.Addr()
	bearer := "Bearer " + testToken
	json := "application/json"
	replay := `{"flow":"to-erp","from_seq":1}`
	for _, k := range []struct {
		name string
		call
		want     int
		wantBody string
	}{
		{"metrics are open", call{"GET", "/metrics", "", nil}, 200, "go_goroutines"},
		{"healthz is open", call{"GET", "/healthz", "", nil}, 200, "alive"},
		{"status without the token", call{"GET", "/api/status", "", nil}, 401, "bearer token"},
		{"status with a wrong token", call{"GET", "/api/status", "", map[string]string{"Authorization": "Bearer wrong-token-0123456789"}}, 401, ""},
		{"status with a wrong cookie", call{"GET", "/api/status", "", map[string]string{"Cookie": CookieName + "=wrong"}}, 401, ""},
		{"status with basic auth", call{"GET", "/api/status", "", map[string]string{"Authorization": "Basic " + testToken}}, 401, ""},
		{"unknown api route without the token", call{"GET", "/api/nothing", "", nil}, 401, ""},
		{"unknown api route with the token", call{"GET", "/api/nothing", "", map[string]string{"Authorization": bearer}}, 404, ""},
		{"replay without the token", call{"POST", "/api/replay", replay, map[string]string{"Content-Type": json}}, 401, "bearer token"},
		{"replay with the token from a foreign origin", call{"POST", "/api/replay", replay,
			map[string]string{"Authorization": bearer, "Content-Type": json, "Origin": "http://evil.example"}}, 403, "cross-origin"},
		{"replay with the page's cookie from a foreign origin", call{"POST", "/api/replay", replay,
			map[string]string{"Cookie": CookieName + "=" + testToken, "Content-Type": json, "Origin": "http://evil.example:9464"}}, 403, "cross-origin"},
		{"replay from a cross-site page", call{"POST", "/api/replay", replay,
			map[string]string{"Cookie": CookieName + "=" + testToken, "Content-Type": json, "Sec-Fetch-Site": "cross-site"}}, 403, "cross-origin"},
		{"replay without the token from a foreign origin", call{"POST", "/api/replay", replay,
			map[string]string{"Content-Type": json, "Origin": "http://evil.example"}}, 403, ""},
		{"replay as a form", call{"POST", "/api/replay", "flow=to-erp&from_seq=1",
			map[string]string{"Authorization": bearer, "Content-Type": "application/x-www-form-urlencoded"}}, 415, "application/json"},
		{"replay as text", call{"POST", "/api/replay", replay, map[string]string{"Authorization": bearer, "Content-Type": "text/plain"}}, 415, ""},
		{"replay without a content type", call{"POST", "/api/replay", replay, map[string]string{"Authorization": bearer}}, 415, ""},
		{"replay body too large", call{"POST", "/api/replay", `{"flow":"` + strings.Repeat("x", maxBody) + `"}`,
			map[string]string{"Authorization": bearer, "Content-Type": json}}, 413, "exceeds"},
		{"replay with an unknown field", call{"POST", "/api/replay", `{"flow":"to-erp","from_seq":1,"drop":true}`,
			map[string]string{"Authorization": bearer, "Content-Type": json}}, 400, "unknown field"},
		{"replay with two values", call{"POST", "/api/replay", replay + replay, map[string]string{"Authorization": bearer, "Content-Type": json}}, 400, ""},
		{"replay without a start", call{"POST", "/api/replay", `{"flow":"to-erp"}`,
			map[string]string{"Authorization": bearer, "Content-Type": "application/json; charset=utf-8"}}, 400, "required"},
		{"replay by GET", call{"GET", "/api/replay", "", map[string]string{"Authorization": bearer}}, 405, ""},
	} {
		t.Run(k.name, func(t *testing.T) {
			resp, body := do(t, c, base, k.call)
			if resp.StatusCode != k.want || !strings.Contains(body, k.wantBody) {
				t.Errorf("%s %s = %d %q, want %d with %q", k.method, k.path, resp.StatusCode, body, k.want, k.wantBody)
			}
			if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
			if strings.Contains(body, testToken) {
				t.Errorf("the response shows the token: %s", body)
			}
		})
	}
}

// TestServer_SignIn: the status page needs the token; GET /?token= sets
// it as an HttpOnly, SameSite=Strict cookie and redirects to / without it,
// and the page then loads with the cookie alone.
func TestServer_SignIn(t *testing.T) {
	s := newTestServer(t)
	serve(t, s)
	c := testClient()
	base := "http://" + s.Addr()

	resp, body := do(t, c, base, call{"GET", "/", "", nil})
	if resp.StatusCode != 401 || !strings.Contains(body, `name="token"`) || strings.Contains(body, "recent_dead_letters") {
		t.Errorf("GET / without the token = %d, want 401 and the sign-in form:\n%s", resp.StatusCode, body)
	}
	resp, body = do(t, c, base, call{"GET", "/?token=" + url.QueryEscape("wrong-token-0123456789"), "", nil})
	if resp.StatusCode != 401 || !strings.Contains(body, "not accepted") || len(resp.Cookies()) != 0 {
		t.Errorf("GET / with a wrong token = %d, cookies %v:\n%s", resp.StatusCode, resp.Cookies(), body)
	}
	resp, _ = do(t, c, base, call{"GET", "/?token=" + url.QueryEscape(testToken), "", nil})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("sign-in = %d to %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == CookieName {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.Secure {
		t.Fatalf("sign-in cookie = %+v; want HttpOnly, SameSite=Strict, Path=/, not Secure over http", cookie)
	}
	resp, body = do(t, c, base, call{"GET", "/", "", map[string]string{"Cookie": cookie.String()}})
	if resp.StatusCode != 200 || !strings.Contains(body, "recent dead letters") && !strings.Contains(body, "Recent dead letters") {
		t.Errorf("GET / with the cookie = %d:\n%s", resp.StatusCode, body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("page CSP = %q", csp)
	}
	if want := scriptHash(page); !strings.Contains(csp, want) || want == "none" {
		t.Errorf("page CSP %q lacks the script's hash %s", csp, want)
	}
	resp, _ = do(t, c, base, call{"GET", "/", "", map[string]string{"Authorization": "Bearer " + testToken}})
	if resp.StatusCode != 200 {
		t.Errorf("GET / with the bearer token = %d", resp.StatusCode)
	}
}

// TestServer_Bounds: the server's time and size limits are set.
func TestServer_Bounds(t *testing.T) {
	s := newTestServer(t)
	defer s.ln.Close()
	if s.srv.ReadHeaderTimeout <= 0 || s.srv.ReadTimeout <= 0 || s.srv.WriteTimeout <= 0 || s.srv.IdleTimeout <= 0 || s.srv.MaxHeaderBytes <= 0 {
		t.Errorf("server bounds: header %s, read %s, write %s, idle %s, max header %d", s.srv.ReadHeaderTimeout, s.srv.ReadTimeout,
			s.srv.WriteTimeout, s.srv.IdleTimeout, s.srv.MaxHeaderBytes)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "duplex test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// TestServer_TLS: with a certificate the listener serves HTTPS only, and
// the sign-in cookie is Secure.
func TestServer_TLS(t *testing.T) {
	certPath, keyPath := selfSigned(t, t.TempDir())
	s, err := Listen(Config{Addr: "127.0.0.1:0", Token: testToken, TLSCert: certPath, TLSKey: keyPath}, nil, NewMetrics(), nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, s)
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Errorf("URL = %s", s.URL())
	}
	pemBytes, _ := os.ReadFile(certPath)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, body := do(t, c, s.URL(), call{"GET", "/healthz", "", nil})
	if resp.StatusCode != 200 || !strings.Contains(body, "alive") {
		t.Errorf("GET https /healthz = %d %s", resp.StatusCode, body)
	}
	resp, _ = do(t, c, s.URL(), call{"GET", "/?token=" + testToken, "", nil})
	if ck := resp.Cookies(); resp.StatusCode != http.StatusSeeOther || len(ck) != 1 || !ck[0].Secure {
		t.Errorf("sign-in over https = %d, cookies %v; want a Secure cookie", resp.StatusCode, ck)
	}
	plain := testClient()
	if resp, err := plain.Get("http://" + s.Addr() + "/healthz"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("plain http answered 200 on a TLS listener: %s", b)
		}
	}
}

// TestResolveToken: a generated token is kept in the data directory with
// mode 0600 and read again; http.token wins; a token file others can read
// is refused; the tools find nothing without creating.
func TestResolveToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	got, err := ResolveToken(config.HTTP{}, dir, false)
	if err != nil || got.Value != "" {
		t.Fatalf("without a file and without create: %+v, %v", got, err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the tools' look-up created %s", dir)
	}
	first, err := ResolveToken(config.HTTP{}, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Value) < 40 || first.Source != filepath.Join(dir, TokenFile) {
		t.Errorf("generated token: %d characters from %s", len(first.Value), first.Source)
	}
	fi, err := os.Stat(first.Source)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", di.Mode().Perm())
	}
	again, err := ResolveToken(config.HTTP{}, dir, true)
	if err != nil || again.Value != first.Value {
		t.Errorf("second start: %v, same token %v", err, again.Value == first.Value)
	}
	tool, err := ResolveToken(config.HTTP{}, dir, false)
	if err != nil || tool.Value != first.Value {
		t.Errorf("the tools read %v, same token %v", err, tool.Value == first.Value)
	}
	cfg, err := ResolveToken(config.HTTP{Token: "configured-token-0123456789"}, dir, true)
	if err != nil || cfg.Value != "configured-token-0123456789" || strings.Contains(cfg.Source, "configured") {
		t.Errorf("configured token: %+v, %v", cfg, err)
	}
	if err := os.Chmod(first.Source, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ResolveToken(config.HTTP{}, dir, true)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), first.Value) {
		t.Errorf("world-readable token file: %v; want a refusal naming chmod 600, without the token", err)
	}
}

// TestServer_Pprof: the profiles of the live process need the token
// (401 without it, on every path under /debug/pprof/), and with it a heap
// profile and a one-second CPU profile come back as gzipped pprof
// protobufs.
func TestServer_Pprof(t *testing.T) {
	s := newTestServer(t)
	serve(t, s)
	c := testClient()
	base := "http://" + s.Addr()
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/pprof/goroutine?debug=2", "/debug/pprof/cmdline"} {
		resp, body := do(t, c, base, call{"GET", p, "", nil})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token = %d %q, want 401", p, resp.StatusCode, body)
		}
		resp, _ = do(t, c, base, call{"GET", p, "", map[string]string{"Authorization": "Bearer wrong-token-0123456789"}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token = %d, want 401", p, resp.StatusCode)
		}
	}
	bearer := map[string]string{"Authorization": "Bearer " + testToken}
	resp, body := do(t, c, base, call{"GET", "/debug/pprof/", "", bearer})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("GET /debug/pprof/ with the token = %d %.200q, want 200 with the index", resp.StatusCode, body)
	}
	for p, want := range map[string]string{"/debug/pprof/heap": "inuse_space", "/debug/pprof/profile?seconds=1": "nanoseconds"} {
		resp, body := do(t, c, base, call{"GET", p, "", bearer})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s with the token = %d %.300q, want 200", p, resp.StatusCode, body)
		}
		zr, err := gzip.NewReader(strings.NewReader(body))
		if err != nil {
			t.Fatalf("GET %s: not gzip (%v): %.100q", p, err, body)
		}
		raw, err := io.ReadAll(zr)
		if err != nil || len(raw) == 0 {
			t.Fatalf("GET %s: gzip body: %d bytes, %v", p, len(raw), err)
		}
		// A profile.proto message holds its sample types' names in its
		// string table.
		if !strings.Contains(string(raw), want) {
			t.Errorf("GET %s: not a pprof profile (no %q in its string table)", p, want)
		}
	}
	resp, _ = do(t, c, base, call{"GET", "/debug/pprof/profile?seconds=100000", "", bearer})
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a CPU profile of 100000 s = %d, want 400", resp.StatusCode)
	}
}
