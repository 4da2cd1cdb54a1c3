package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/internal/audit"
	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/internal/ops"
	"github.com/duplex-cdc/duplex/pipeline"
)

// httpDo sends a request to a child's listener and returns the status
// and body.
func httpDo(t *testing.T, method, url, body string, header map[string]string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestListener_APINeedsTokenAndSameOrigin: against a running duplex,
// POST /api/replay without the token gets 401 and with the token from a
// foreign Origin 403, and replays nothing; with the token, JSON and its
// own origin it replays. /api/status needs the token and shows dead
// letters as references (flow, entity, key, error class), never the
// event or the error text with its values; duplex status finds the
// generated token in the data directory, and says so when it does not
// match; duplex dlq list prints the error of a constraint whose name holds
// ESC and U+202E with both escaped.
func TestListener_APINeedsTokenAndSameOrigin(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	// The constraint's name, quoted in the error, would clear a terminal
	// and reverse the text after it.
	f.exec("erp", "ALTER TABLE customers ADD CONSTRAINT \"no_poison\x1b[2J\u202e\" CHECK (name NOT LIKE 'POISON%')")
	c := f.startChild()
	defer c.stop(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK && c.token() != "", fmt.Sprintf("readyz %d %s", code, body)
	})
	base := "http://" + c.listen
	token := c.token()
	if fi, err := os.Stat(filepath.Join(f.dir, ops.TokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("generated token file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(c.log); strings.Contains(string(b), token) {
		t.Errorf("the log shows the listener's token")
	}
	poison := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, email, currency) VALUES ($1, 'POISON person', 'poison.person@example.com', 'EUR')`, poison)
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'fine', 'EUR')`)
	var status string
	waitFor(t, 60*time.Second, func() (bool, string) {
		_, status = httpDo(t, "GET", base+"/api/status", "", map[string]string{"Authorization": "Bearer " + token})
		return strings.Contains(status, poison.String()), "no dead letter of " + poison.String() + " in /api/status"
	})
	var st struct {
		DeadLetters []map[string]any `json:"recent_dead_letters"`
	}
	if err := json.Unmarshal([]byte(status), &st); err != nil || len(st.DeadLetters) == 0 {
		t.Fatalf("/api/status: %v\n%s", err, status)
	}
	dl := st.DeadLetters[0]
	if dl["flow"] != "to-erp" || dl["entity"] != "customer" || dl["key"] != poison.String() || dl["error_class"] != "permanent, SQLSTATE 23514" {
		t.Errorf("dead letter reference %v; want flow to-erp, entity customer, key %s, error_class \"permanent, SQLSTATE 23514\"", dl, poison)
	}
	for _, never := range []string{"poison.person@example.com", "POISON", `"event"`, `"change"`, "no_poison"} {
		if strings.Contains(status, never) {
			t.Errorf("/api/status shows %q of a dead letter:\n%s", never, status)
		}
	}

	replay := `{"flow":"to-erp","from_seq":1}`
	code, body := httpDo(t, "GET", base+"/api/status", "", nil)
	if code != http.StatusUnauthorized || strings.Contains(body, "flows") {
		t.Errorf("GET /api/status without the token = %d %s, want 401", code, body)
	}
	code, body = httpDo(t, "POST", base+"/api/replay", replay, map[string]string{"Content-Type": "application/json"})
	if code != http.StatusUnauthorized {
		t.Errorf("POST /api/replay without the token = %d %s, want 401", code, body)
	}
	code, body = httpDo(t, "POST", base+"/api/replay", replay, map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + token,
		"Origin": "http://evil.example"})
	if code != http.StatusForbidden {
		t.Errorf("POST /api/replay with the token from a foreign origin = %d %s, want 403", code, body)
	}
	code, body = httpDo(t, "POST", base+"/api/replay", replay, map[string]string{"Content-Type": "application/json", "Cookie": ops.CookieName + "=" + token,
		"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
	if code != http.StatusForbidden {
		t.Errorf("POST /api/replay with the page's cookie from a cross-site page = %d %s, want 403", code, body)
	}
	code, body = httpDo(t, "POST", base+"/api/replay", "flow=to-erp&from_seq=1", map[string]string{"Content-Type": "application/x-www-form-urlencoded",
		"Authorization": "Bearer " + token})
	if code != http.StatusUnsupportedMediaType {
		t.Errorf("POST /api/replay as a form = %d %s, want 415", code, body)
	}
	if b, _ := os.ReadFile(c.log); strings.Contains(string(b), "replay requested") {
		t.Fatalf("a refused request replayed")
	}
	code, body = httpDo(t, "POST", base+"/api/replay", replay, map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + token,
		"Origin": base})
	if code != http.StatusAccepted {
		t.Errorf("POST /api/replay with the token from its own origin = %d %s, want 202", code, body)
	}

	// duplex status reads the generated token from the data directory
	// (DUPLEX_DATA_DIR in duplexCLI) and escapes nothing it need not.
	code, out := f.duplexCLI("status", "--listen", c.listen)
	if code != 0 || !strings.Contains(out, "duplex is running") {
		t.Errorf("duplex status exited %d:\n%s", code, out)
	}
	code, out = f.duplexCLI("status", "--listen", c.listen, "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(out, "refused") || !strings.Contains(out, "--data-dir") {
		t.Errorf("duplex status without the token exited %d, want a refusal that says how to give it:\n%s", code, out)
	}

	// The command line prints the error with its control characters
	// escaped.
	for _, args := range [][]string{{"dlq", "list"}, {"dlq", "list", "--json"}} {
		code, out := f.duplexCLI(args...)
		if code != 0 || !strings.Contains(out, poison.String()) || strings.ContainsAny(out, "\x1b\u202e") {
			t.Errorf("duplex %s exited %d with a raw control character or without the dead letter:\n%q", strings.Join(args, " "), code, out)
		}
		if want := `no_poison\x1b[2J\u202e`; args[len(args)-1] == "list" && !strings.Contains(out, want) {
			t.Errorf("duplex dlq list does not show the constraint as %s:\n%s", want, out)
		}
	}
}

// TestListener_ReadyzReusesConnections: /readyz polled many times opens
// no new database session per request (the App keeps one per database and
// a result at most a few seconds old).
func TestListener_ReadyzReusesConnections(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.inProcess()
	ctx := context.Background()
	waitFor(t, 60*time.Second, func() (bool, string) {
		r := f.app.Ready(ctx)
		return r.Ready, fmt.Sprintf("%v", r.Reasons)
	})
	sessions := func(system, db string) int64 {
		c := f.conn(system)
		var n int64
		if err := c.QueryRow(ctx, `SELECT sessions FROM pg_stat_database WHERE datname = $1`, db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		return n
	}
	crm0, erp0 := sessions("crm", f.crmDB), sessions("erp", f.erpDB)
	for range 30 {
		f.app.Ready(ctx)
	}
	// Sessions are counted when they end or report: give them a moment.
	time.Sleep(1500 * time.Millisecond)
	crm1, erp1 := sessions("crm", f.crmDB), sessions("erp", f.erpDB)
	// Each sessions() call itself is one session; duplex may reconnect
	// once in a while, never once per check.
	if d := crm1 - crm0 - 1; d > 5 {
		t.Errorf("30 readiness checks opened %d sessions to the CRM database", d)
	}
	if d := erp1 - erp0 - 1; d > 5 {
		t.Errorf("30 readiness checks opened %d sessions to the ERP database", d)
	}
}

func secret(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// rawStream returns every message of a stream, headers and data, as
// stored.
func rawStream(t *testing.T, url, stream string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect to read %s: %v", stream, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // removed (a retried dead letter)
		}
		fmt.Fprintf(&b, "%d %s %v\n%s\n", seq, m.Subject, m.Header, m.Data)
	}
	if b.Len() == 0 {
		t.Errorf("stream %s is empty", stream)
	}
	return b.String()
}

// TestSecrets_NoneInAnyOutput: duplex configured with a PostgreSQL
// password in both DSNs (a role PostgreSQL authenticates with
// scram-sha-256), a NATS user and password in the URL (a server that
// requires them), an nkey seed for the CRM's capture and a listener
// token, run through changes, a dead letter
// and an ERP outage: none of these appears in its log, /api/status,
// /readyz, /metrics, /healthz, duplex status (live and offline, text and
// JSON), the dead letters (dlq list, show, and as stored in DUPLEX_DLQ)
// or the audit records of operator actions (audit list, and as stored in
// DUPLEX_AUDIT).
func TestSecrets_NoneInAnyOutput(t *testing.T) {
	f := newFixture(t, fixtureOptions{own: true})
	ctx := context.Background()
	pgPass, natsPass, httpToken := secret(t, "pgpw"), secret(t, "natspw"), secret(t, "httptok")
	secrets := map[string]string{"the PostgreSQL password": pgPass, "the NATS password": natsPass, "the listener token": httpToken}

	// A role with a password, and scram-sha-256 for it alone (before the
	// harness's trust lines).
	const role = "duplex_secret"
	dsn := map[string]string{}
	for _, s := range []struct {
		env, db string
		cl      *harness.Cluster
	}{{"CRM_DSN", f.crmDB, f.crm}, {"ERP_DSN", f.erpDB, f.erp}} {
		hba := filepath.Join(s.cl.DataDir(), "pg_hba.conf")
		b, err := os.ReadFile(hba)
		if err != nil {
			t.Fatal(err)
		}
		lines := fmt.Sprintf("host all %[1]s 127.0.0.1/32 scram-sha-256\nhost replication %[1]s 127.0.0.1/32 scram-sha-256\n", role)
		if err := os.WriteFile(hba, append([]byte(lines), b...), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.cl.Exec(ctx, "postgres", fmt.Sprintf(`CREATE ROLE %s LOGIN SUPERUSER REPLICATION PASSWORD '%s'; SELECT pg_reload_conf()`, role, pgPass)); err != nil {
			t.Fatal(err)
		}
		dsn[s.env] = fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", role, pgPass, s.cl.Port(), s.db)
		wrong := fmt.Sprintf("postgres://%s:wrong@127.0.0.1:%d/%s?sslmode=disable", role, s.cl.Port(), s.db)
		waitFor(t, 10*time.Second, func() (bool, string) {
			c, err := pgx.Connect(ctx, wrong)
			if err == nil {
				c.Close(ctx)
				return false, "a wrong password is accepted: pg_hba.conf not reloaded yet"
			}
			return true, ""
		})
	}
	f.dsn = dsn

	// NATS that requires a user and password, and the CRM's capture as
	// an nkey user of its own (nats.captures.crm.nkey_seed).
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	secrets["the capture's nkey seed"] = string(seed)
	ns, err := natsembed.New(natsembed.Options{StoreDir: t.TempDir(), Users: []natsembed.User{{Name: "duplex", Password: natsPass}, {Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Stop)
	natsURL := fmt.Sprintf("nats://duplex:%s@127.0.0.1:%d", natsPass, ns.Port())
	cfg, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(cfg), "url: "+f.nats.URL(), "url: "+natsURL+"\n  captures:\n    crm:\n      nkey_seed: "+string(seed), 1)
	if conf == string(cfg) {
		t.Fatal("the fixture's configuration has no nats url to replace")
	}
	conf += "http:\n  token: " + httpToken + "\n"
	if err := os.WriteFile(f.cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	f.exec("erp", `ALTER TABLE customers ADD CONSTRAINT no_poison CHECK (name NOT LIKE 'POISON%')`)
	c := f.startChild()
	defer c.stop(t)
	base := "http://" + c.listen
	auth := map[string]string{"Authorization": "Bearer " + httpToken}
	outputs := map[string]string{}
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	poison := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES ($1, 'POISON', 'EUR')`, poison)
	f.exec("crm", `INSERT INTO accounts (id, name, email, currency) SELECT gen_random_uuid(), 'a' || g, 'a' || g || '@example.com', 'EUR' FROM generate_series(1, 20) g`)
	waitFor(t, 60*time.Second, func() (bool, string) {
		_, body := httpDo(t, "GET", base+"/api/status", "", auth)
		return strings.Contains(body, poison.String()), "no dead letter yet"
	})
	erp := f.conn("erp")
	waitFor(t, 60*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM customers`)
		return n == 20, fmt.Sprintf("%d customers in the ERP, want the 20 that are not poison", n)
	})
	erp.Close(ctx)
	collect := func(when string) {
		_, outputs["/api/status "+when] = httpDo(t, "GET", base+"/api/status", "", auth)
		_, outputs["/readyz "+when] = httpDo(t, "GET", base+"/readyz", "", nil)
		_, outputs["/metrics "+when] = httpDo(t, "GET", base+"/metrics", "", nil)
		_, outputs["/healthz "+when] = httpDo(t, "GET", base+"/healthz", "", nil)
		_, outputs["/ "+when] = httpDo(t, "GET", base+"/", "", auth)
		_, outputs["/api/nothing "+when] = httpDo(t, "GET", base+"/api/nothing", "", nil)
		for _, args := range [][]string{{"status", "--listen", c.listen}, {"status", "--listen", c.listen, "--json"}, {"dlq", "list"}, {"dlq", "list", "--json"}} {
			_, outputs["duplex "+strings.Join(args, " ")+" "+when] = f.duplexCLI(args...)
		}
	}
	collect("running")
	if !strings.Contains(outputs["duplex status --listen "+c.listen+" running"], "duplex is running") {
		t.Errorf("duplex status did not reach the running duplex with the configured token:\n%s", outputs["duplex status --listen "+c.listen+" running"])
	}
	if want := fmt.Sprintf(`"url": "nats://127.0.0.1:%d"`, ns.Port()); !strings.Contains(outputs["/api/status running"], want) {
		t.Errorf("/api/status does not show the NATS URL as %s:\n%s", want, outputs["/api/status running"])
	}
	var seq string
	for _, line := range strings.Split(outputs["duplex dlq list running"], "\n") {
		if strings.Contains(line, poison.String()) {
			seq = strings.Fields(line)[0]
		}
	}
	if seq == "" {
		t.Fatalf("dlq list lacks the poison:\n%s", outputs["duplex dlq list running"])
	}
	_, outputs["duplex dlq show"] = f.duplexCLI("dlq", "show", seq)
	// Operator actions, and their audit records.
	_, outputs["duplex dlq retry (refused)"] = f.duplexCLI("dlq", "retry", seq)
	_, outputs["duplex replay through the running duplex"] = f.duplexCLI("replay", "--flow", "to-erp", "--from-seq", "1", "--listen", c.listen)
	_, outputs["duplex backfill"] = f.duplexCLI("backfill", "--flow", "to-erp", "--table", "accounts", "--no-wait")
	_, outputs["duplex audit list"] = f.duplexCLI("audit", "list")
	_, outputs["duplex audit list --json"] = f.duplexCLI("audit", "list", "--json")
	if !strings.Contains(outputs["duplex audit list"], "dlq retry") || !strings.Contains(outputs["duplex audit list"], "backfill") {
		t.Errorf("audit list lacks the actions:\n%s", outputs["duplex audit list"])
	}
	// The dead letters and audit records as stored, headers included.
	for _, stream := range []string{pipeline.DLQStream, audit.Stream} {
		outputs["stream "+stream] = rawStream(t, natsURL, stream)
	}

	// The ERP goes away: connection errors everywhere.
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	f.exec("crm", `INSERT INTO accounts (id, name, currency) VALUES (gen_random_uuid(), 'during the outage', 'EUR')`)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusServiceUnavailable, fmt.Sprintf("readyz %d %s", code, body)
	})
	time.Sleep(2 * time.Second) // retries log their errors
	collect("with the ERP down")
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	c.stop(t)
	log, err := os.ReadFile(c.log)
	if err != nil {
		t.Fatal(err)
	}
	outputs["the log"] = string(log)
	if !strings.Contains(outputs["the log"], "duplex running") || !strings.Contains(outputs["the log"], "erp") {
		t.Errorf("the log is not the run's:\n%s", tail(outputs["the log"], 20))
	}
	// With no duplex running, the tools read PostgreSQL and NATS
	// themselves; with the ERP down they report its connection error.
	_, outputs["duplex status offline"] = f.duplexCLI("status", "--listen", "127.0.0.1:1")
	_, outputs["duplex status offline --json"] = f.duplexCLI("status", "--listen", "127.0.0.1:1", "--json")
	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	_, outputs["duplex status offline with the ERP down"] = f.duplexCLI("status", "--listen", "127.0.0.1:1")
	_, outputs["duplex verify with the ERP down"] = f.duplexCLI("verify")
	if !strings.Contains(outputs["duplex status offline with the ERP down"], "erp") {
		t.Errorf("offline status with the ERP down:\n%s", outputs["duplex status offline with the ERP down"])
	}

	for name, out := range outputs {
		if out == "" {
			t.Errorf("%s: empty", name)
		}
		for what, s := range secrets {
			if i := strings.Index(out, s); i >= 0 {
				t.Errorf("%s shows %s: …%s<here>%s…", name, what, out[max(0, i-160):i], out[i+len(s):min(len(out), i+len(s)+60)])
			}
		}
	}
}
