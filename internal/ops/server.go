package ops

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/duplex-cdc/duplex/internal/app"
)

//go:embed page.html
var page []byte

// DefaultListen is the default address of the listener.
const DefaultListen = "127.0.0.1:9464"

// Server serves /metrics, /healthz, /readyz, /api/status, /api/replay
// and the status page at /.
type Server struct {
	app     *app.App
	metrics *Metrics
	log     *slog.Logger
	srv     *http.Server
	ln      net.Listener
	started time.Time
}

// Listen binds addr; Serve then serves on it.
func Listen(addr string, a *app.App, m *Metrics, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := &Server{app: a, metrics: m, log: log, ln: ln, started: time.Now()}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /api/status", s.status)
	mux.HandleFunc("POST /api/replay", s.replay)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down gracefully (requests in
// progress get 5 seconds) and returns when the shutdown is done.
func (s *Server) Serve(ctx context.Context) error {
	served := make(chan struct{})
	shutdown := make(chan struct{})
	go func() {
		defer close(shutdown)
		select {
		case <-ctx.Done():
		case <-served: // the listener failed: nothing to shut down
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	err := s.srv.Serve(s.ln)
	close(served)
	<-shutdown
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.Addr(), err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "alive", "uptime_seconds": int64(time.Since(s.started).Seconds())})
}

// readyz answers 200 when this instance is healthy, active or standby (a
// standby must not be restarted: it is what takes over); with
// ?role=active, only when it is also active for some flow or capture
// (for routing to the active instance).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	rd := s.app.Ready(r.Context())
	code := http.StatusOK
	if !rd.Ready || (r.URL.Query().Get("role") == "active" && rd.Role == "standby") {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.app.Status(r.Context()))
}

// ReplayRequest is the body of POST /api/replay.
type ReplayRequest struct {
	Flow    string    `json:"flow"`
	FromSeq uint64    `json:"from_seq,omitempty"`
	Since   time.Time `json:"since,omitempty"`
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	var req ReplayRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request: " + err.Error()})
		return
	}
	if req.Flow == "" || (req.FromSeq == 0 && req.Since.IsZero()) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "flow and one of from_seq or since are required"})
		return
	}
	if err := s.app.Replay(r.Context(), req.Flow, app.ReplayFrom{Seq: req.FromSeq, Time: req.Since}); err != nil {
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
		return
	}
	s.log.Info("replay requested over HTTP", slog.String("flow", req.Flow), slog.String("from_seq", strconv.FormatUint(req.FromSeq, 10)), slog.Time("since", req.Since))
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "replaying", "flow": req.Flow})
}
