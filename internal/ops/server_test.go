package ops

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newTestServer(t *testing.T) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", nil, NewMetrics(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
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
