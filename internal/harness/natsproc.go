package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServerModule is the module whose main package is nats-server.
const natsServerModule = "github.com/nats-io/nats-server/v2"

var buildMu sync.Mutex

// NATSServerBinary builds the nats-server command of the nats-server
// module this binary was built with (go build, from the working
// directory's module) and returns its path. The binary is cached in
// os.TempDir by module version, so it is built once per version.
func NATSServerBinary(ctx context.Context) (string, error) {
	version := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == natsServerModule {
				version = d.Version
				if d.Replace != nil {
					version = d.Replace.Version + "-" + strings.ReplaceAll(d.Replace.Path, "/", "_")
				}
			}
		}
	}
	path := filepath.Join(os.TempDir(), "duplex-nats-server-"+version)
	buildMu.Lock()
	defer buildMu.Unlock()
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && version != "devel" {
		return path, nil
	}
	// Build beside the cache entry, then rename: another test process
	// building at the same time never sees half a binary.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, natsServerModule)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("build nats-server (go build %s; needs the Go toolchain and the module in go.mod): %w\n%s", natsServerModule, err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("build nats-server: %w", err)
	}
	return path, nil
}

// NATSProcessOptions configures StartNATSProcess.
type NATSProcessOptions struct {
	// StoreDir is the JetStream store (default: a temporary directory
	// removed by Close).
	StoreDir string
	// Port is the client port (0: a free one, kept across restarts).
	Port int
	// Args are more nats-server arguments (for example --cluster and
	// --routes for a cluster node, or --max_payload).
	Args []string
	// LogPath receives the server's output (default: <store>.log).
	LogPath string
	// ConfigFile, when set, is passed with -c; the flags above override
	// what it says (a cluster node keeps its routes and name there).
	ConfigFile string
	// NoWait starts the process without waiting for its JetStream to
	// answer: a cluster node's JetStream answers only once a quorum of
	// nodes runs (NATSCluster waits for the cluster instead).
	NoWait bool
	// Env is added to the process's environment (variables a
	// configuration file references, as $NAME).
	Env []string
	// ConnectOptions are what the readiness check connects with: the
	// credentials and TLS settings a server started with ConfigFile may
	// require.
	ConnectOptions []nats.Option
}

// NATSProcess is a nats-server running as a separate process, with
// JetStream, on 127.0.0.1.
type NATSProcess struct {
	bin      string
	opts     NATSProcessOptions
	ownStore bool

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

// StartNATSProcess starts a nats-server process (built by
// NATSServerBinary) and waits until its JetStream answers.
func StartNATSProcess(ctx context.Context, opts NATSProcessOptions) (*NATSProcess, error) {
	bin, err := NATSServerBinary(ctx)
	if err != nil {
		return nil, err
	}
	p := &NATSProcess{bin: bin, opts: opts}
	if p.opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "duplex-nats-proc-*")
		if err != nil {
			return nil, fmt.Errorf("create nats store: %w", err)
		}
		p.opts.StoreDir, p.ownStore = dir, true
	}
	if p.opts.Port == 0 {
		if p.opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if p.opts.LogPath == "" {
		p.opts.LogPath = strings.TrimRight(p.opts.StoreDir, "/") + ".log"
	}
	if err := p.Start(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// NewNATSProcess starts a nats-server process and closes it when the test
// ends.
func NewNATSProcess(t TB, opts NATSProcessOptions) *NATSProcess {
	t.Helper()
	p, err := StartNATSProcess(context.Background(), opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// URL is the client URL.
func (p *NATSProcess) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(p.opts.Port) }

// LogPath is where the server writes its log.
func (p *NATSProcess) LogPath() string { return p.opts.LogPath }

// Start starts the server (again, on the same port and store) and waits up
// to 30 seconds for its JetStream to answer (unless NoWait). Starting a
// running server does nothing.
func (p *NATSProcess) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	lf, err := os.OpenFile(p.opts.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start nats-server: %w", err)
	}
	var args []string
	if p.opts.ConfigFile != "" {
		args = append(args, "-c", p.opts.ConfigFile)
	}
	args = append(append(args, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(p.opts.Port), "-sd", p.opts.StoreDir), p.opts.Args...)
	cmd := exec.Command(p.bin, args...)
	cmd.Env = append(os.Environ(), p.opts.Env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start nats-server: %w", err)
	}
	p.cmd, p.log = cmd, lf
	if p.opts.NoWait {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start nats-server on port %d (log %s): %w", p.opts.Port, p.opts.LogPath, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *NATSProcess) ping(ctx context.Context) error {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(p.opts.Port))
	if err != nil {
		return err
	}
	c.Close()
	nc, err := nats.Connect(p.URL(), append([]nats.Option{nats.MaxReconnects(0), nats.Timeout(time.Second)}, p.opts.ConnectOptions...)...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = js.AccountInfo(actx)
	return err
}

// Kill stops the server with SIGKILL and waits for it.
func (p *NATSProcess) Kill() { p.signal(syscall.SIGKILL) }

// Stop stops the server with SIGTERM (lame duck skipped) and waits for it.
func (p *NATSProcess) Stop() { p.signal(syscall.SIGTERM) }

func (p *NATSProcess) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.cmd.Wait()
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.log.Close()
	p.cmd, p.log = nil, nil
}

// Close kills the server and removes the store if StartNATSProcess made
// it.
func (p *NATSProcess) Close() {
	p.Kill()
	if p.ownStore {
		if err := os.RemoveAll(p.opts.StoreDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "harness: remove nats store %s: %s\n", p.opts.StoreDir, err.Error())
		}
		_ = os.Remove(p.opts.LogPath)
	}
}

// Pid is the server's process id, or 0 when it is not running.
func (p *NATSProcess) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *NATSProcess) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}
