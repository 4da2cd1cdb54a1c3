package ops

import (
	"context"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"
)

// Bounds of a profile taken through /debug/pprof/: the CPU profile and the
// execution trace run ?seconds=N (net/http/pprof's default 30 for the
// profile, 1 for the trace), at most maxProfileSeconds.
const maxProfileSeconds = 300

// pprofHandler serves net/http/pprof's handlers under /debug/pprof/ (the
// prefix pprof.Index needs), on the listener's own mux, never
// http.DefaultServeMux. The caller puts it behind the token.
//
// A CPU profile or trace runs longer than the server's write timeout
// (30 s) allows, and net/http/pprof refuses a duration at or above the
// server's WriteTimeout; so for these requests the write deadline is moved
// to the requested duration plus 10 s (http.ResponseController), and the
// request's context lasts as long.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		def := 0
		switch r.URL.Path {
		case "/debug/pprof/profile":
			def = 30
		case "/debug/pprof/trace":
			def = 1
		}
		if def == 0 {
			ctx, cancel := context.WithTimeout(r.Context(), handlerTimeout)
			defer cancel()
			mux.ServeHTTP(w, r.WithContext(ctx))
			return
		}
		sec := def
		if v := r.URL.Query().Get("seconds"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > maxProfileSeconds {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "seconds must be an integer from 1 to " + strconv.Itoa(maxProfileSeconds)})
				return
			}
			sec = n
		}
		d := time.Duration(sec)*time.Second + 10*time.Second
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
		// Hide the server (and its WriteTimeout) from net/http/pprof's
		// check: the deadline above is what bounds this response.
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), http.ServerContextKey, nil), d)
		defer cancel()
		mux.ServeHTTP(w, r.WithContext(ctx))
	})
}
