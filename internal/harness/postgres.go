package harness

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// initdbArgs are the initdb flags besides -D. They are part of the template
// directory's name, so changing them yields a fresh template.
var initdbArgs = []string{"-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"}

// pgTimeout bounds pg_ctl's own waits (seconds).
const pgTimeout = "60"

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Settings are extra postgresql.conf settings, e.g.
	// "track_commit_timestamp": "on". They override the harness defaults,
	// except port and unix_socket_directories, which the harness owns.
	Settings map[string]string
	Logger   *slog.Logger // optional
	// TLS, when set, turns ssl on with this certificate and key (PEM),
	// written into the data directory as server.crt and server.key
	// (mode 0600, owned by the server's OS user, as PostgreSQL requires
	// of the key). Plain connections are still accepted (pg_hba.conf's
	// host lines match both).
	TLS *ServerTLS
}

// ServerTLS is a server certificate (chain) and its private key, PEM.
type ServerTLS struct {
	CertPEM, KeyPEM []byte
}

// Cluster is a throwaway PostgreSQL cluster in its own temporary directory.
// Its methods are safe for concurrent use.
type Cluster struct {
	bin  string
	own  owner
	dir  string
	port int
	log  *slog.Logger

	mu      sync.Mutex
	running bool
	closed  bool
}

// StartCluster copies the shared template data directory into a new
// temporary directory, configures it and starts a server on a free port of
// 127.0.0.1. The first call per machine and PostgreSQL version runs initdb.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	began := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bin, err := PGBinDir()
	if err != nil {
		return nil, err
	}
	own, err := pgOwner()
	if err != nil {
		return nil, err
	}
	tmpl, err := templateDir(ctx, bin, own, log)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "duplex-pg-*")
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	c := &Cluster{bin: bin, own: own, dir: dir, log: log}
	ok := false
	defer func() {
		if !ok {
			_ = c.Close()
		}
	}()
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if err := copyTree(tmpl, c.DataDir()); err != nil {
		return nil, fmt.Errorf("copy template %s: %w", tmpl, err)
	}
	if opts.TLS != nil {
		for name, b := range map[string][]byte{"server.crt": opts.TLS.CertPEM, "server.key": opts.TLS.KeyPEM} {
			if err := os.WriteFile(filepath.Join(c.DataDir(), name), b, 0o600); err != nil {
				return nil, fmt.Errorf("write %s: %w", name, err)
			}
		}
	}
	if err := own.chownTree(dir); err != nil {
		return nil, err
	}

	settings := map[string]string{
		"listen_addresses":       "127.0.0.1",
		"wal_level":              "logical",
		"track_commit_timestamp": "on",
		"max_replication_slots":  "64",
		"max_wal_senders":        "64",
		"fsync":                  "off",
		"full_page_writes":       "off",
		"synchronous_commit":     "on",
		"shared_buffers":         "64MB",
		"max_connections":        "200",
		"log_min_messages":       "warning",
		"wal_sender_timeout":     "60s",
	}
	if opts.TLS != nil {
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = "server.crt" // relative to the data directory
		settings["ssl_key_file"] = "server.key"
	}
	maps.Copy(settings, opts.Settings)
	settings["unix_socket_directories"] = dir
	// FreePort can race with other processes; retry on a bind failure.
	for attempt := 1; ; attempt++ {
		if c.port, err = FreePort(); err != nil {
			return nil, err
		}
		settings["port"] = strconv.Itoa(c.port)
		if err := c.appendConf(settings); err != nil {
			return nil, err
		}
		err = c.Start(ctx)
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(c.LogTail(30), "could not bind") {
			return nil, err
		}
		settings = map[string]string{} // only the port changes on retry
	}
	ok = true
	log.Info("postgres cluster started", "port", c.port, "dir", dir, "took", time.Since(began))
	return c, nil
}

// Port is the TCP port the server listens on (on 127.0.0.1).
func (c *Cluster) Port() int { return c.port }

// Dir is the cluster's temporary directory; it holds the data directory,
// the server log and the Unix socket.
func (c *Cluster) Dir() string { return c.dir }

// DataDir is the PostgreSQL data directory.
func (c *Cluster) DataDir() string { return filepath.Join(c.dir, "data") }

// LogPath is the server log file.
func (c *Cluster) LogPath() string { return filepath.Join(c.dir, "postgres.log") }

// DSN returns a connection string for the superuser postgres on database.
func (c *Cluster) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, url.PathEscape(database))
}

// CreateDatabase runs CREATE DATABASE name.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return c.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// Exec runs a SQL script, which may hold several statements, on database
// using the simple query protocol.
func (c *Cluster) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgx.Connect(ctx, c.DSN(database))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", database, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.PgConn().Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("exec on %s: %w", database, err)
	}
	return nil
}

// Start starts the server on the cluster's data directory and port, waits
// until it accepts connections and checks that with a connection. After
// Kill it performs crash recovery. Starting a running cluster does nothing.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("start cluster %s: closed", c.dir)
	}
	if c.running {
		return nil
	}
	began := time.Now()
	if _, err := c.pgctl(ctx, "start", "-w", "-t", pgTimeout, "-l", c.LogPath()); err != nil {
		// pg_ctl may have given up on a server that is still starting.
		_, _ = c.pgctl(context.Background(), "stop", "-m", "immediate", "-w", "-t", pgTimeout)
		return fmt.Errorf("start cluster %s: %w\nserver log:\n%s", c.dir, err, c.LogTail(30))
	}
	c.running = true
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(pingCtx, c.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("start cluster %s: connect: %w\nserver log:\n%s", c.dir, err, c.LogTail(30))
	}
	_ = conn.Close(context.Background())
	c.log.Debug("postgres started", "port", c.port, "dir", c.dir, "took", time.Since(began))
	return nil
}

// Stop shuts the server down cleanly (pg_ctl stop -m fast). The data is kept.
func (c *Cluster) Stop(ctx context.Context) error { return c.stop(ctx, "fast") }

// Kill crashes the server (pg_ctl stop -m immediate). The data is kept; the
// next Start performs crash recovery.
func (c *Cluster) Kill(ctx context.Context) error { return c.stop(ctx, "immediate") }

func (c *Cluster) stop(ctx context.Context, mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx, mode)
}

func (c *Cluster) stopLocked(ctx context.Context, mode string) error {
	if !c.running {
		return nil
	}
	if _, err := c.pgctl(ctx, "stop", "-m", mode, "-w", "-t", pgTimeout); err != nil {
		return fmt.Errorf("stop cluster %s (%s): %w", c.dir, mode, err)
	}
	c.running = false
	c.log.Debug("postgres stopped", "port", c.port, "mode", mode)
	return nil
}

// Close crashes the server if it runs and removes the cluster's directory.
// It is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.stopLocked(ctx, "immediate")
	if rmErr := os.RemoveAll(c.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("remove cluster dir: %w", rmErr))
	}
	return err
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.LogPath())
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (c *Cluster) pgctl(ctx context.Context, args ...string) (string, error) {
	return c.own.run(ctx, c.dir, filepath.Join(c.bin, "pg_ctl"), append([]string{"-D", c.DataDir()}, args...)...)
}

// appendConf appends settings to postgresql.conf; later lines win.
func (c *Cluster) appendConf(settings map[string]string) error {
	var b strings.Builder
	b.WriteString("\n# duplex harness\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	path := filepath.Join(c.DataDir(), "postgresql.conf")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("configure cluster: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("configure cluster: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("configure cluster: %w", err)
	}
	return nil
}

// PGBinDir finds the PostgreSQL server programs: $DUPLEX_PG_BIN if set,
// else the highest /usr/lib/postgresql/<major>/bin, else the directory of
// initdb on $PATH. The directory must hold initdb and pg_ctl.
func PGBinDir() (string, error) {
	if dir := os.Getenv("DUPLEX_PG_BIN"); dir != "" {
		if !hasServerBins(dir) {
			return "", fmt.Errorf("DUPLEX_PG_BIN=%s has no initdb and pg_ctl", dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	major := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(major(b), major(a)) })
	for _, d := range dirs {
		if hasServerBins(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && hasServerBins(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server programs (initdb, pg_ctl) in /usr/lib/postgresql/*/bin, $PATH or $DUPLEX_PG_BIN: " +
		"install the PostgreSQL server, e.g. `apt-get install -y postgresql`")
}

func hasServerBins(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// templates caches the template data directory per bin directory. It is the
// package's only global state.
var templates struct {
	mu   sync.Mutex
	dirs map[string]string
}

// templateDir returns a data directory made by initdb, shared by all
// processes of the same user: os.TempDir()/duplex-pg-template-<major>-<hash>.
// It is only ever copied, never started.
func templateDir(ctx context.Context, bin string, own owner, log *slog.Logger) (string, error) {
	templates.mu.Lock()
	defer templates.mu.Unlock()
	if d, ok := templates.dirs[bin]; ok && validTemplate(d) {
		return d, nil
	}
	initdb := filepath.Join(bin, "initdb")
	version, err := own.run(ctx, os.TempDir(), initdb, "--version")
	if err != nil {
		return "", err
	}
	// "initdb (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
	major := "unknown"
	if f := strings.Fields(version); len(f) >= 3 {
		major, _, _ = strings.Cut(f[2], ".")
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%s\x00%d", bin, strings.TrimSpace(version), strings.Join(initdbArgs, " "), own.uid)))
	final := filepath.Join(os.TempDir(), fmt.Sprintf("duplex-pg-template-%s-%x", major, sum[:6]))

	if _, err := os.Stat(final); err == nil && !validTemplate(final) {
		log.Warn("discarding incomplete postgres template", "dir", final)
		if err := os.RemoveAll(final); err != nil {
			return "", fmt.Errorf("remove broken template %s: %w", final, err)
		}
	}
	if !validTemplate(final) {
		began := time.Now()
		staging, err := os.MkdirTemp(os.TempDir(), filepath.Base(final)+".tmp-*")
		if err != nil {
			return "", fmt.Errorf("create template dir: %w", err)
		}
		defer os.RemoveAll(staging) // a no-op once renamed
		if err := own.chownTree(staging); err != nil {
			return "", err
		}
		if _, err := own.run(ctx, os.TempDir(), initdb, append([]string{"-D", staging}, initdbArgs...)...); err != nil {
			return "", err
		}
		// Atomic publish; if another process won the race, use theirs.
		if err := os.Rename(staging, final); err != nil && !validTemplate(final) {
			return "", fmt.Errorf("publish template %s: %w", final, err)
		}
		log.Info("postgres template created", "dir", final, "took", time.Since(began))
	}
	if templates.dirs == nil {
		templates.dirs = map[string]string{}
	}
	templates.dirs[bin] = final
	return final, nil
}

func validTemplate(dir string) bool {
	for _, name := range []string{"PG_VERSION", "postgresql.conf", "global/pg_control"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// copyTree copies the directory src to dst (which must not exist),
// preserving permission bits.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(path, target, info.Mode().Perm())
		}
		return fmt.Errorf("%s: unsupported file type %v", path, d.Type())
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil { // copy_file_range on Linux
		out.Close()
		return err
	}
	return out.Close()
}

// owner is the OS user PostgreSQL runs as: the current user, or the postgres
// user when running as root (PostgreSQL refuses to run as root).
type owner struct {
	uid, gid int
	cred     *syscall.Credential // nil unless we switch users
}

func pgOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("running as root, PostgreSQL must run as the postgres OS user: %w "+
			"(create it with `useradd postgres` or install the postgresql package)", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return owner{}, fmt.Errorf("postgres OS user: %w", err)
	}
	return owner{uid: uid, gid: gid, cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// chownTree hands dir and everything below it to the owner when running as root.
func (o owner) chownTree(dir string) error {
	if o.cred == nil {
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, o.uid, o.gid)
	})
	if err != nil {
		return fmt.Errorf("chown %s to postgres: %w", dir, err)
	}
	return nil
}

// run runs a PostgreSQL program as the owner in dir and returns its output.
func (o owner) run(ctx context.Context, dir, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second // in case the server inherits our pipe
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(prog), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
