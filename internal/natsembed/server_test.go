package natsembed

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A user nkey for tests: the seed and its public key.
const (
	testSeed = "SUAPM67TC4RHQLKBX55NIQXSMATZDOZK6FNEOSS36CAYA7F7TY66LP4BOM"
	testNkey = "UCNGL4W5QX66CFX6A6DCBVDH5VOHMI7B2UZZU7TXAUQQSI2JPHULCKBR"
)

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.StoreDir == "" {
		opts.StoreDir = filepath.Join(t.TempDir(), "jetstream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func connect(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func TestServer_RestartKeepsStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startServer(t, Options{})
	_, js := connect(t, s.URL())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CDC", Subjects: []string{"cdc.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "cdc.crm", []byte("one")); err != nil {
		t.Fatal(err)
	}

	// Stop and start the same server: same port, same store.
	url, port := s.URL(), s.Port()
	s.Stop()
	s.Stop()
	if s.NATSServer() != nil {
		t.Error("NATSServer() not nil after Stop")
	}
	// Stop waited for the server: its port is free again.
	l, err := net.Listen("tcp", net.JoinHostPort(DefaultHost, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("port %d still taken after Stop: %v", port, err)
	}
	l.Close()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("start of a running server: %v", err)
	}
	if s.URL() != url {
		t.Errorf("URL after restart = %s, want %s", s.URL(), url)
	}
	_, js = connect(t, s.URL())
	if _, err := js.Publish(ctx, "cdc.crm", []byte("two")); err != nil {
		t.Fatal(err)
	}
	s.Stop()

	// A new server on the same store directory.
	s2 := startServer(t, Options{StoreDir: s.StoreDir()})
	_, js = connect(t, s2.URL())
	stream, err := js.Stream(ctx, "CDC")
	if err != nil {
		t.Fatal(err)
	}
	for seq, want := range map[uint64]string{1: "one", 2: "two"} {
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		if string(msg.Data) != want {
			t.Errorf("message %d = %q, want %q", seq, msg.Data, want)
		}
	}
}

func TestServer_Sync(t *testing.T) {
	tests := []struct {
		name         string
		opts         Options
		wantAlways   bool
		wantInterval time.Duration
	}{
		{name: "default", wantInterval: DefaultSyncInterval},
		{name: "always", opts: Options{SyncAlways: true}, wantAlways: true},
		{name: "interval", opts: Options{SyncInterval: 5 * time.Second}, wantInterval: 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.opts)
			cfg := s.NATSServer().JetStreamConfig()
			if cfg == nil {
				t.Fatal("JetStream not enabled")
			}
			if cfg.SyncAlways != tt.wantAlways {
				t.Errorf("SyncAlways = %v, want %v", cfg.SyncAlways, tt.wantAlways)
			}
			if tt.wantInterval != 0 && cfg.SyncInterval != tt.wantInterval {
				t.Errorf("SyncInterval = %s, want %s", cfg.SyncInterval, tt.wantInterval)
			}
			if cfg.StoreDir == "" || !strings.HasPrefix(cfg.StoreDir, s.StoreDir()) {
				t.Errorf("StoreDir = %q, want under %q", cfg.StoreDir, s.StoreDir())
			}
		})
	}
}

func TestServer_Limits(t *testing.T) {
	tests := []struct {
		name        string
		opts        Options
		wantPayload int32
		wantStore   int64
		wantMemory  int64
	}{
		{name: "default", wantPayload: DefaultMaxPayload, wantStore: DefaultMaxStore, wantMemory: DefaultMaxMemory},
		{name: "set", opts: Options{MaxPayload: 1 << 20, MaxStore: 1 << 30, MaxMemory: 64 << 20}, wantPayload: 1 << 20, wantStore: 1 << 30, wantMemory: 64 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.opts)
			if got := s.MaxPayload(); got != tt.wantPayload {
				t.Errorf("MaxPayload() = %d, want %d", got, tt.wantPayload)
			}
			nc, _ := connect(t, s.URL())
			if got := nc.MaxPayload(); got != int64(tt.wantPayload) {
				t.Errorf("announced max payload = %d, want %d", got, tt.wantPayload)
			}
			if err := nc.Publish("big", make([]byte, tt.wantPayload+1)); !errors.Is(err, nats.ErrMaxPayload) {
				t.Errorf("publish above max payload: %v, want %v", err, nats.ErrMaxPayload)
			}
			cfg := s.NATSServer().JetStreamConfig()
			if cfg.MaxStore != tt.wantStore || cfg.MaxMemory != tt.wantMemory {
				t.Errorf("JetStream limits = store %d memory %d, want %d %d", cfg.MaxStore, cfg.MaxMemory, tt.wantStore, tt.wantMemory)
			}
		})
	}
}

func TestServer_Users(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startServer(t, Options{Users: []User{
		{Name: "duplex", Password: "s3cret"},
		{Nkey: testNkey, Permissions: &Permissions{
			Publish: SubjectPermission{Allow: []string{"$JS.API.>", "cdc.>"}},
		}},
	}})
	if strings.Contains(s.URL(), "s3cret") || strings.Contains(s.URL(), "duplex@") {
		t.Errorf("URL %s carries credentials", s.URL())
	}

	for name, opts := range map[string][]nats.Option{
		"no credentials": nil,
		"wrong password": {nats.UserInfo("duplex", "guess")},
		"unknown user":   {nats.UserInfo("mallory", "s3cret")},
	} {
		nc, err := nats.Connect(s.URL(), append(opts, nats.MaxReconnects(0))...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected, want refused", name)
		} else if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: %v, want %v", name, err, nats.ErrAuthorization)
		}
	}

	_, js := connect(t, s.URL(), nats.UserInfo("duplex", "s3cret"))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CDC", Subjects: []string{"cdc.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("create stream as duplex: %v", err)
	}
	if _, err := js.Publish(ctx, "cdc.crm", []byte("one")); err != nil {
		t.Fatalf("publish as duplex: %v", err)
	}

	// The nkey user may publish to cdc.> only.
	seed := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seed, []byte(testSeed), 0o600); err != nil {
		t.Fatal(err)
	}
	nkeyOpt, err := nats.NkeyOptionFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	asyncErr := make(chan error, 4)
	nc, js := connect(t, s.URL(), nkeyOpt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { asyncErr <- err }))
	ack, err := js.Publish(ctx, "cdc.erp", []byte("two"))
	if err != nil {
		t.Fatalf("publish as nkey user: %v", err)
	}
	if ack.Sequence != 2 {
		t.Errorf("sequence = %d, want 2", ack.Sequence)
	}
	if err := nc.Publish("other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-asyncErr:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("publish to other: %v, want %v", err, nats.ErrPermissionViolation)
		}
	case <-ctx.Done():
		t.Error("publish outside the nkey user's permissions was not refused")
	}
}

func TestStart_PortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	started := time.Now()
	s, err := Start(context.Background(), Options{StoreDir: t.TempDir(), Port: port})
	if err == nil {
		s.Stop()
		t.Fatal("started on a port in use")
	}
	if !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Errorf("error = %v, want it to name the port and say it is in use", err)
	}
	t.Logf("error: %v", err)
	if took := time.Since(started); took > 5*time.Second {
		t.Errorf("failure reported after %s, want at once", took)
	}
}

func TestOptions_Validate(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{name: "minimal", opts: Options{StoreDir: "js"}},
		{name: "everything", opts: Options{StoreDir: "js", Port: 4222, SyncAlways: true, MaxPayload: MaxPayloadLimit, MaxStore: 1, MaxMemory: 1,
			Users: []User{{Name: "a", Password: "p"}, {Nkey: testNkey}}}},
		{name: "no store", opts: Options{}, wantErr: "StoreDir is empty"},
		{name: "bad port", opts: Options{StoreDir: "js", Port: 70000}, wantErr: "Port 70000"},
		{name: "negative interval", opts: Options{StoreDir: "js", SyncInterval: -time.Second}, wantErr: "SyncInterval -1s"},
		{name: "always and interval", opts: Options{StoreDir: "js", SyncAlways: true, SyncInterval: time.Second}, wantErr: "set one of them"},
		{name: "negative payload", opts: Options{StoreDir: "js", MaxPayload: -1}, wantErr: "MaxPayload -1"},
		{name: "payload above limit", opts: Options{StoreDir: "js", MaxPayload: MaxPayloadLimit + 1}, wantErr: "MaxPayload 67108865"},
		{name: "negative store", opts: Options{StoreDir: "js", MaxStore: -1}, wantErr: "MaxStore -1"},
		{name: "negative memory", opts: Options{StoreDir: "js", MaxMemory: -1}, wantErr: "MaxMemory -1"},
		{name: "user without password", opts: Options{StoreDir: "js", Users: []User{{Name: "a"}}}, wantErr: "Users[0]: user a has no Password"},
		{name: "user and nkey", opts: Options{StoreDir: "js", Users: []User{{Name: "a", Password: "p", Nkey: testNkey}}}, wantErr: "not both"},
		{name: "bad nkey", opts: Options{StoreDir: "js", Users: []User{{Nkey: "SUAP"}}}, wantErr: "not a public user nkey"},
		{name: "anonymous", opts: Options{StoreDir: "js", Users: []User{{Password: "p"}}}, wantErr: "no Name or Nkey"},
		{name: "twice", opts: Options{StoreDir: "js", Users: []User{{Name: "a", Password: "p"}, {Name: "a", Password: "q"}}}, wantErr: "user a is listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "p\"") || strings.Contains(err.Error(), "q\"") {
				t.Errorf("Validate() = %v shows a password", err)
			}
		})
	}
}

// storeContains reports whether any file under dir holds needle.
func storeContains(t *testing.T, dir string, needle []byte) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// With EncryptionKey the stream's files hold no plaintext of a message,
// and the stream reads back after a restart with the same key; without it
// (the control) they do.
func TestServer_EncryptionKey(t *testing.T) {
	plain := []byte("alice.pii-marker@example.com")
	for _, tc := range []struct {
		name string
		key  string
		want bool // plaintext in the store files
	}{
		{"in clear", "", true},
		{"encrypted", "a-test-key-of-32-characters-long", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s := startServer(t, Options{EncryptionKey: tc.key, SyncAlways: true})
			_, js := connect(t, s.URL())
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CDC", Subjects: []string{"cdc.>"}, Storage: jetstream.FileStorage}); err != nil {
				t.Fatal(err)
			}
			if _, err := js.Publish(ctx, "cdc.crm", plain); err != nil {
				t.Fatal(err)
			}
			s.Stop()
			if got := storeContains(t, s.StoreDir(), plain); got != tc.want {
				t.Fatalf("plaintext in store files of %s: %v, want %v", s.StoreDir(), got, tc.want)
			}
			if err := s.Start(ctx); err != nil {
				t.Fatal(err)
			}
			_, js = connect(t, s.URL())
			st, err := js.Stream(ctx, "CDC")
			if err != nil {
				t.Fatal(err)
			}
			m, err := st.GetMsg(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(m.Data, plain) {
				t.Fatalf("read back %q, want %q", m.Data, plain)
			}
		})
	}
}
