package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NATSClusterOptions configures StartNATSCluster.
type NATSClusterOptions struct {
	// Size is the number of nodes (default 3).
	Size int
	// Dir holds each node's store, configuration and log (default: a
	// temporary directory removed by Close).
	Dir string
}

// NATSCluster is a cluster of nats-server processes on 127.0.0.1, with
// JetStream (the store of each node given with -sd), routes between every node and a monitoring port per node.
// Each node can be killed and started again (Node(i).Kill, Node(i).Start).
type NATSCluster struct {
	nodes   []*NATSProcess
	monitor []int
	dir     string
	ownDir  bool
}

// StartNATSCluster starts the nodes and waits until the cluster is healthy
// (Healthy).
func StartNATSCluster(ctx context.Context, opts NATSClusterOptions) (*NATSCluster, error) {
	if opts.Size <= 0 {
		opts.Size = 3
	}
	c := &NATSCluster{dir: opts.Dir}
	if c.dir == "" {
		dir, err := os.MkdirTemp("", "duplex-nats-cluster-*")
		if err != nil {
			return nil, fmt.Errorf("create nats cluster dir: %w", err)
		}
		c.dir, c.ownDir = dir, true
	}
	bin, err := NATSServerBinary(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	ports := make([][3]int, opts.Size) // client, cluster, monitor
	for i := range ports {
		for j := range ports[i] {
			if ports[i][j], err = FreePort(); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	routes := make([]string, opts.Size)
	for i := range ports {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i][1])
	}
	for i := range ports {
		name := fmt.Sprintf("n%d", i+1)
		store := filepath.Join(c.dir, name)
		if err := os.MkdirAll(store, 0o755); err != nil {
			c.Close()
			return nil, fmt.Errorf("create nats store: %w", err)
		}
		conf := fmt.Sprintf(`server_name: %s
http_port: %d
jetstream: enabled
cluster {
  name: duplex
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, name, ports[i][2], ports[i][1], strings.Join(routes, ", "))
		confPath := filepath.Join(c.dir, name+".conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			c.Close()
			return nil, fmt.Errorf("write nats config: %w", err)
		}
		p := &NATSProcess{bin: bin, opts: NATSProcessOptions{StoreDir: store, Port: ports[i][0], ConfigFile: confPath,
			NoWait: true, LogPath: filepath.Join(c.dir, name+".log")}}
		if err := p.Start(ctx); err != nil {
			c.Close()
			return nil, err
		}
		c.nodes = append(c.nodes, p)
		c.monitor = append(c.monitor, ports[i][2])
	}
	if err := c.WaitHealthy(ctx, time.Minute); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// NewNATSCluster starts a cluster and closes it when the test ends.
func NewNATSCluster(t TB, opts NATSClusterOptions) *NATSCluster {
	t.Helper()
	c, err := StartNATSCluster(context.Background(), opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Size is the number of nodes.
func (c *NATSCluster) Size() int { return len(c.nodes) }

// Node is node i (from 0).
func (c *NATSCluster) Node(i int) *NATSProcess { return c.nodes[i] }

// URLs lists every node's client URL, comma-separated (a nats.url that
// reaches the cluster through any node).
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Dir holds the nodes' stores, configurations and logs (nI.log).
func (c *NATSCluster) Dir() string { return c.dir }

// StartNode starts node i again, on its port and store, without waiting
// for it (WaitHealthy does).
func (c *NATSCluster) StartNode(ctx context.Context, i int) error { return c.nodes[i].Start(ctx) }

// WaitHealthy waits up to timeout until every running node reports healthy
// on its monitoring endpoint (/healthz: JetStream enabled, the meta leader
// known, and every stream and consumer replica on that node current).
func (c *NATSCluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := http.Client{Timeout: 2 * time.Second}
	for {
		var why error
		for i, n := range c.nodes {
			if !n.running() {
				continue
			}
			if err := healthz(ctx, &client, c.monitor[i]); err != nil {
				why = fmt.Errorf("node n%d: %w", i+1, err)
				break
			}
		}
		if why == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nats cluster not healthy within %s (logs in %s): %w", timeout, c.dir, why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func healthz(ctx context.Context, client *http.Client, port int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return errors.New(strings.TrimSpace(string(body)))
	}
	return nil
}

// Close kills every node and removes the directory if StartNATSCluster
// made it.
func (c *NATSCluster) Close() {
	for _, n := range c.nodes {
		n.Kill()
	}
	if c.ownDir {
		if err := os.RemoveAll(c.dir); err != nil {
			fmt.Fprintf(os.Stderr, "harness: remove nats cluster dir %s: %s\n", c.dir, err.Error())
		}
	}
}
