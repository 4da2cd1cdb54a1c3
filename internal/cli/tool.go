package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/ops"
)

// tool holds what the operating commands share: the configuration, the
// data directory and the address of a running instance.
type tool struct {
	cfgPath, dataDir, listen string

	cfg    *config.Config
	token  ops.Token
	client *http.Client
}

func (t *tool) flags(c *cobra.Command) {
	c.Flags().StringVar(&t.cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&t.dataDir, "data-dir", "", "data directory: the embedded NATS store when no duplex runs, and the listener's generated token (default $DUPLEX_DATA_DIR, then data_dir of the config, then ./data)")
	c.Flags().StringVar(&t.listen, "listen", envOr("DUPLEX_LISTEN", ops.DefaultListen), "address of a running duplex's status listener")
}

func (t *tool) config() (*config.Config, error) {
	cfg, err := config.Load(t.cfgPath, os.Getenv)
	if err != nil {
		return nil, err
	}
	if t.dataDir == "" {
		t.dataDir = envOr("DUPLEX_DATA_DIR", cfg.DataDir)
	}
	t.cfg = cfg
	return cfg, nil
}

// baseURL is the running instance's listener URL.
func (t *tool) baseURL() string {
	if t.cfg != nil && t.cfg.HTTP.TLS() {
		return "https://" + t.listen
	}
	return "http://" + t.listen
}

// httpClient is the client of the running instance's listener: with
// http.tls_cert configured, it trusts the system's roots and that
// certificate file (a self-signed listener's own certificate).
func (t *tool) httpClient() (*http.Client, error) {
	if t.client != nil {
		return t.client, nil
	}
	// Longer than the listener's own bounds (ops: a response within 30 s).
	c := &http.Client{Timeout: 35 * time.Second}
	if t.cfg != nil && t.cfg.HTTP.TLS() {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(t.cfg.HTTP.TLSCert)
		if err != nil {
			return nil, fmt.Errorf("listener certificate: %w", err)
		}
		pool.AppendCertsFromPEM(pem)
		c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	t.client = c
	return c, nil
}

// do sends a request to the running instance with the bearer token
// (http.token, or the one in the data directory).
func (t *tool) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	if t.token.Value == "" && t.cfg != nil {
		tok, err := ops.ResolveToken(t.cfg.HTTP, t.dataDir, false)
		if err != nil {
			return nil, err
		}
		t.token = tok
	}
	c, err := t.httpClient()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, t.baseURL()+path, body)
	if err != nil {
		return nil, err
	}
	if t.token.Value != "" {
		req.Header.Set("Authorization", "Bearer "+t.token.Value)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.Do(req)
}

// running asks a running instance for its status; live is false when none
// answers. err is set when one answers but refuses (the token does not
// match: another data directory, or http.token differs): the command must
// stop rather than act as if no duplex ran.
func (t *tool) running(ctx context.Context) (st *app.Status, live bool, err error) {
	if t.listen == "" || t.listen == "off" {
		return nil, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := t.do(ctx, http.MethodGet, "/api/status", nil)
	if err != nil {
		return nil, false, nil
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		how := "no token found (" + t.token.Source + " does not exist)"
		if t.token.Value != "" {
			how = "the token of " + t.token.Source + " does not match"
		}
		return nil, false, fmt.Errorf("the duplex at %s refused the request (%s): %s; give the --data-dir of that duplex or set http.token",
			t.baseURL(), resp.Status, how)
	default:
		return nil, false, nil
	}
	var s app.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&s); err != nil {
		return nil, false, nil
	}
	return &s, true, nil
}

// refusal reads a refused response's message.
func refusal(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var m struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &m) == nil && m.Error != "" {
		return m.Error
	}
	return strings.TrimSpace(string(b))
}
