package ops

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/audit"
)

//go:embed page.html
var page []byte

//go:embed login.html
var loginPage []byte

// DefaultListen is the default address of the listener.
const DefaultListen = "127.0.0.1:9464"

// CookieName is the cookie the status page's sign-in sets: it carries the
// bearer token for the browser (HttpOnly, SameSite=Strict, Secure over
// HTTPS).
const CookieName = "duplex_token"

// Bounds of the listener. maxBody is the largest request body a
// state-changing route reads (a replay request is about 100 bytes).
const (
	maxBody           = 64 << 10
	maxHeaderBytes    = 16 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	// handlerTimeout bounds the work of one request (status reads
	// JetStream and the slots; a replay waits for the flow to hand over,
	// at most its lease TTL), within writeTimeout.
	handlerTimeout = 25 * time.Second
)

// Config is the listener's address, bearer token and TLS.
type Config struct {
	// Addr is host:port to listen on.
	Addr string
	// Token is the bearer token of /api/* and the status page (required:
	// ResolveToken gives it).
	Token string
	// TLSCert and TLSKey are PEM files; set both to serve HTTPS.
	TLSCert, TLSKey string
}

// Server serves, on one listener:
//   - to anyone who reaches it: /metrics (Prometheus), /healthz, /readyz;
//   - with the bearer token (Authorization: Bearer <token>, or the
//     duplex_token cookie the page's sign-in sets): /api/status, the
//     status page at /, and POST /api/replay.
//
// A state-changing request (any method but GET, HEAD, OPTIONS) is refused
// with 403 when a browser sends it from another origin (Sec-Fetch-Site, or
// Origin not matching Host: net/http's CrossOriginProtection), with 401
// without the token, with 415 unless its body is application/json, and
// with 413 when the body exceeds 64 KiB. Headers must arrive within 5 s,
// the whole request within 15 s; a response is written within 30 s.
type Server struct {
	app     *app.App
	metrics *Metrics
	log     *slog.Logger
	srv     *http.Server
	ln      net.Listener
	tls     bool
	token   [32]byte // sha256 of the token: compared in constant time
	cop     *http.CrossOriginProtection
	started time.Time
}

// Listen binds cfg.Addr (and loads the TLS key pair, if any); Serve then
// serves on it. An empty token is refused: the API is never open.
func Listen(cfg Config, a *app.App, m *Metrics, log *slog.Logger) (*Server, error) {
	if cfg.Token == "" {
		return nil, errors.New("listen: no bearer token for /api and the status page")
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("listen: TLS key pair %s, %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{app: a, metrics: m, log: log, ln: ln, tls: tlsConfig != nil, token: sha256.Sum256([]byte(cfg.Token)),
		cop: http.NewCrossOriginProtection(), started: time.Now()}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	// Everything under /api/, unknown routes and methods included, is
	// checked before it is routed, so that nothing there answers without
	// the token.
	api := http.NewServeMux()
	api.HandleFunc("GET /api/status", s.status)
	api.HandleFunc("POST /api/replay", s.replay)
	mux.Handle("/api/", s.protect(api))
	mux.HandleFunc("GET /{$}", s.index)
	s.srv = &http.Server{Handler: mux, TLSConfig: tlsConfig, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the listener's base URL (http:// or https://).
func (s *Server) URL() string {
	if s.tls {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

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
	var err error
	if s.tls {
		err = s.srv.ServeTLS(s.ln, "", "")
	} else {
		err = s.srv.Serve(s.ln)
	}
	close(served)
	<-shutdown
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.Addr(), err)
	}
	return nil
}

// authorized says whether r carries the token, as a bearer token or in the
// page's cookie.
func (s *Server) authorized(r *http.Request) bool {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		return ok && strings.EqualFold(scheme, "Bearer") && s.matches(strings.TrimSpace(tok))
	}
	if c, err := r.Cookie(CookieName); err == nil {
		return s.matches(c.Value)
	}
	return false
}

func (s *Server) matches(tok string) bool {
	h := sha256.Sum256([]byte(tok))
	return tok != "" && subtle.ConstantTimeCompare(h[:], s.token[:]) == 1
}

// protect refuses, in this order: a cross-origin browser request that may
// change state (403), a request without the token (401), a
// state-changing request whose body is not application/json (415); and
// bounds the body and the time of what it lets through.
func (s *Server) protect(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		safe := r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions
		if err := s.cop.Check(r); err != nil {
			s.log.Warn("cross-origin request refused", slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.String("origin", r.Header.Get("Origin")), slog.String("remote", r.RemoteAddr))
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "cross-origin request refused: " + err.Error()})
			return
		}
		if !s.authorized(r) {
			s.log.Debug("request without the token refused", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("remote", r.RemoteAddr))
			w.Header().Set("WWW-Authenticate", `Bearer realm="duplex"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a bearer token is required (Authorization: Bearer <token>; see http.token)"})
			return
		}
		if !safe {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "the body must be application/json"})
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		ctx, cancel := context.WithTimeout(r.Context(), handlerTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
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
// (for routing to the active instance). The databases' part is at most a
// few seconds old (App.Ready).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), handlerTimeout)
	defer cancel()
	rd := s.app.Ready(ctx)
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
	// User, Host and Args are who asked, as the client declares them
	// (duplex replay sends its OS user, host name and command line), for
	// the audit record; the listener adds the request's remote address.
	User string   `json:"user,omitempty"`
	Host string   `json:"host,omitempty"`
	Args []string `json:"args,omitempty"`
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	var req ReplayRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("more than one JSON value")
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("the body exceeds %d bytes", tooLarge.Limit)})
		return
	case err != nil:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request: " + err.Error()})
		return
	}
	if req.Flow == "" || (req.FromSeq == 0 && req.Since.IsZero()) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "flow and one of from_seq or since are required"})
		return
	}
	// An operator action is audited (DUPLEX_AUDIT): no record, no action.
	if err := s.app.AuditReady(r.Context()); err != nil {
		s.log.Error("replay requested over HTTP refused: the audit stream cannot be reached", slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "nothing done: the audit stream " + audit.Stream + " cannot be reached"})
		return
	}
	err = s.app.Replay(r.Context(), req.Flow, app.ReplayFrom{Seq: req.FromSeq, Time: req.Since})
	s.auditReplay(r, req, err)
	if err != nil {
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
		return
	}
	s.log.Info("replay requested over HTTP", slog.String("flow", req.Flow), slog.String("from_seq", strconv.FormatUint(req.FromSeq, 10)),
		slog.Time("since", req.Since), slog.String("remote", r.RemoteAddr))
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "replaying", "flow": req.Flow})
}

// auditReplay records a replay asked over HTTP, and its outcome (the
// replay started, or why not), in DUPLEX_AUDIT and the log.
func (s *Server) auditReplay(r *http.Request, req ReplayRequest, replayErr error) {
	rec := audit.Record{Time: time.Now().UTC(), Command: "replay", User: req.User, Host: req.Host, Outcome: audit.OK}
	if rec.User == "" {
		rec.User = "unknown"
	}
	if rec.Host == "" {
		rec.Host, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	rec.Args = req.Args
	if len(rec.Args) == 0 {
		rec.Args = []string{"POST", "/api/replay", "flow=" + req.Flow}
		if req.FromSeq > 0 {
			rec.Args = append(rec.Args, "from_seq="+strconv.FormatUint(req.FromSeq, 10))
		}
		if !req.Since.IsZero() {
			rec.Args = append(rec.Args, "since="+req.Since.UTC().Format(time.RFC3339Nano))
		}
	}
	secrets := s.app.Secrets()
	rec.Args = audit.RedactArgs(rec.Args, secrets...)
	rec.Detail = "asked over HTTP from " + r.RemoteAddr + " (user and host as the client declared them): the running duplex started the replay of " + req.Flow
	if replayErr != nil {
		rec.Outcome = audit.Failed
		rec.Detail = "asked over HTTP from " + r.RemoteAddr + ": " + replayErr.Error()
	}
	rec.Detail = audit.Secrets(rec.Detail, secrets...)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 15*time.Second)
	defer cancel()
	attrs := []any{slog.String("user", rec.User), slog.String("host", rec.Host), slog.String("command", rec.Command),
		slog.String("args", strings.Join(rec.Args, " ")), slog.String("outcome", rec.Outcome), slog.String("detail", rec.Detail)}
	seq, err := s.app.Audit(ctx, rec)
	if err != nil {
		s.log.Error("operator action: its audit record could not be stored in "+audit.Stream, append(attrs, slog.Any("error", err))...)
		return
	}
	s.log.Info("operator action", append(attrs, slog.Uint64("audit_seq", seq))...)
}

// Content security policies: the page runs only its own inline script
// (by hash) and talks only to this listener; the sign-in page runs none.
var (
	pageCSP  = "default-src 'none'; script-src '" + scriptHash(page) + "'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
	loginCSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

// scriptHash is the CSP hash source of the one inline script of an HTML
// page.
func scriptHash(html []byte) string {
	s := string(html)
	i := strings.Index(s, "<script>")
	j := strings.Index(s, "</script>")
	if i < 0 || j < i {
		return "none"
	}
	sum := sha256.Sum256([]byte(s[i+len("<script>") : j]))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// index serves the status page to a signed-in browser (or a bearer
// token). Signing in is a one-time GET /?token=<token>: a valid token sets
// the cookie and redirects to / (so the token leaves the address bar); a
// request without a valid token gets the sign-in form, status 401.
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if q := r.URL.Query(); q.Has("token") {
		if tok := q.Get("token"); s.matches(tok) {
			http.SetCookie(w, &http.Cookie{Name: CookieName, Value: tok, Path: "/", HttpOnly: true, Secure: s.tls, SameSite: http.SameSiteStrictMode})
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		s.log.Warn("status page sign-in with a wrong token", slog.String("remote", r.RemoteAddr))
		s.login(w, "That token was not accepted.")
		return
	}
	if !s.authorized(r) {
		s.login(w, "")
		return
	}
	w.Header().Set("Content-Security-Policy", pageCSP)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(page)
}

func (s *Server) login(w http.ResponseWriter, problem string) {
	w.Header().Set("Content-Security-Policy", loginCSP)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusUnauthorized)
	msg := ""
	if problem != "" {
		msg = `<p class="problem">` + problem + `</p>` // fixed text, never from the request
	}
	_, _ = w.Write([]byte(strings.Replace(string(loginPage), "<!--problem-->", msg, 1)))
}
