// Package ops is duplex's HTTP listener (`duplex run --listen`): Prometheus
// metrics, health and readiness, the status API and page, and replay
// requests.
//
// The package owns:
//   - the routes: /metrics (metrics.go), /healthz and /readyz, open to
//     anyone who reaches the listener; /api/status, POST /api/replay and
//     the status page at / (page.html, with its sign-in form login.html),
//     which need the bearer token;
//   - the token (token.go): http.token of the configuration, or one
//     generated at the first start into <data dir>/http.token with mode
//     0600, which the command-line tools read from the same place;
//   - the checks of every request under /api/ and of the page: the token
//     (Authorization: Bearer, or the HttpOnly, SameSite=Strict cookie the
//     page's one-time sign-in /?token= sets), cross-origin browser
//     requests that change state (net/http's CrossOriginProtection: 403),
//     JSON bodies only (415) of at most 64 KiB (413); the server's time
//     limits; optional TLS; content security policies of the pages.
//
// It does not own what it shows: internal/app computes the status (dead
// letters as references, never payloads), the readiness (its database
// checks are cached) and performs replays. A replay asked over HTTP is
// recorded in DUPLEX_AUDIT (internal/audit) with who asked, as the
// request declares it, and the remote address; it is refused (503) when
// the audit stream cannot be reached. It never logs or returns the
// token.
package ops
