package harness

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func queryString(t *testing.T, c *Cluster, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(db))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestClusterKillStart(t *testing.T) {
	ctx := context.Background()
	began := time.Now()
	c := NewCluster(t, ClusterOptions{Settings: map[string]string{"track_commit_timestamp": "on"}})
	t.Logf("cluster started in %v on port %d", time.Since(began), c.Port())

	if got := queryString(t, c, "postgres", "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	if got := queryString(t, c, "postgres", "SHOW track_commit_timestamp"); got != "on" {
		t.Errorf("track_commit_timestamp = %q, want on", got)
	}
	if err := c.CreateDatabase(ctx, "erp"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "erp", `
		CREATE TABLE t (id int PRIMARY KEY, name text);
		INSERT INTO t VALUES (1, 'one'), (2, 'two');`); err != nil {
		t.Fatal(err)
	}
	port := c.Port()
	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "erp", "SELECT 1"); err == nil {
		t.Fatal("Exec succeeded on a killed cluster")
	}
	began = time.Now()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart after kill took %v", time.Since(began))
	if c.Port() != port {
		t.Errorf("port changed from %d to %d", port, c.Port())
	}
	if got := queryString(t, c, "erp", "SELECT string_agg(name, ',' ORDER BY id) FROM t"); got != "one,two" {
		t.Errorf("rows after crash = %q, want one,two", got)
	}
	if got := queryString(t, c, "erp", "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level after restart = %q, want logical", got)
	}
}

func TestClusterStopStartTwice(t *testing.T) {
	ctx := context.Background()
	c := NewCluster(t, ClusterOptions{})
	if err := c.Exec(ctx, "postgres", "CREATE TABLE n (v int); INSERT INTO n VALUES (0)"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		if err := c.Stop(ctx); err != nil { // no-op when stopped
			t.Fatalf("second stop %d: %v", i, err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if err := c.Exec(ctx, "postgres", "UPDATE n SET v = v + 1"); err != nil {
			t.Fatal(err)
		}
	}
	if got := queryString(t, c, "postgres", "SELECT v::text FROM n"); got != "2" {
		t.Errorf("v = %s, want 2", got)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	dir := c.Dir()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster dir %s still exists after Close (stat: %v)", dir, err)
	}
	if err := c.Start(ctx); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestClustersConcurrent(t *testing.T) {
	var (
		wg       sync.WaitGroup
		clusters [2]*Cluster
		errs     [2]error
	)
	began := time.Now()
	for i := range clusters {
		wg.Go(func() { clusters[i], errs[i] = StartCluster(context.Background(), ClusterOptions{}) })
	}
	wg.Wait()
	t.Logf("two clusters started concurrently in %v", time.Since(began))
	for i, c := range clusters {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	if clusters[0].Port() == clusters[1].Port() {
		t.Fatalf("both clusters on port %d", clusters[0].Port())
	}
	for _, c := range clusters {
		if got := queryString(t, c, "postgres", "SELECT current_setting('port')"); got != strconv.Itoa(c.Port()) {
			t.Errorf("server port %s, cluster says %d", got, c.Port())
		}
	}
}

func TestNATSRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := NewNATS(t)

	reconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CDC", Subjects: []string{"cdc.>"}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "cdc.erp", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 6<<20)
	if _, err := js.Publish(ctx, "cdc.big", big); err != nil {
		t.Fatalf("publish 6 MiB: %v", err)
	}

	url := n.URL()
	n.Stop()
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if n.URL() != url {
		t.Errorf("URL changed from %s to %s", url, n.URL())
	}
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("client did not reconnect")
	}
	stream, err := js.Stream(ctx, "CDC")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != "hello" || msg.Subject != "cdc.erp" {
		t.Errorf("message after restart = %s %q", msg.Subject, msg.Data)
	}
	if _, err := js.Publish(ctx, "cdc.erp", []byte("again")); err != nil {
		t.Fatalf("publish after restart: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("stream has %d messages, want 3", info.State.Msgs)
	}

	dir := n.StoreDir()
	n.Close()
	n.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("store %s still exists after Close (stat: %v)", dir, err)
	}
}

func TestNATSExplicitStore(t *testing.T) {
	dir := t.TempDir()
	n, err := StartNATS(NATSOptions{StoreDir: dir + "/js"})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	if _, err := os.Stat(dir + "/js"); err != nil {
		t.Errorf("caller's store removed: %v", err)
	}
}

func TestPGBinDir(t *testing.T) {
	t.Setenv("DUPLEX_PG_BIN", t.TempDir())
	if _, err := PGBinDir(); err == nil {
		t.Error("PGBinDir accepted a directory without initdb")
	}
	t.Setenv("DUPLEX_PG_BIN", "")
	dir, err := PGBinDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PGBinDir = %s", dir)
}
