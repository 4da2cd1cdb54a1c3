package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// bigName is a value larger than one chunk of an object (128 KiB).
var bigName = strings.Repeat("x", 300<<10)

// twoWay is a configuration of the two flows of the example, with the
// embedded server (no nats section).
func twoWay() *config.Config {
	return &config.Config{
		Mapping: "mapping.yaml",
		Systems: map[string]*config.SystemConfig{"crm": {DSN: "postgres://c"}, "erp": {DSN: "postgres://e"}},
		Flows:   []*config.Flow{{Name: "to-erp", From: "crm", To: "erp"}, {Name: "to-crm", From: "erp", To: "crm"}},
	}
}

// logBuffer collects a logger's output; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// refused runs a call that the server must refuse because the client may
// not publish to subject: the server drops the request and reports a
// permissions violation for that subject, which the connection logs; the
// call fails (its answer never comes).
func refused(t *testing.T, logs *logBuffer, subject, what string, call func(ctx context.Context) error) {
	t.Helper()
	provoked[subject] = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := call(ctx); err == nil {
		t.Errorf("%s: allowed, want it refused", what)
		return
	}
	want := `Permissions Violation for Publish to \"` + subject + `\"`
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Errorf("%s: failed, but the server reported no permissions violation for %s", what, subject)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// provoked are the subjects refused on purpose; violation finds the
// refusals in a log.
var (
	provoked  = map[string]bool{}
	violation = regexp.MustCompile(`Permissions Violation for \w+ to \\"([^\\]+)\\"`)
)

// request sends a JetStream API request on nc's connection (a raw
// request, the way any NATS client can).
func request(nc *nats.Conn, subject string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := nc.RequestWithContext(ctx, subject, nil)
		return err
	}
}

// TestOpenBus_EmbeddedAuthentication: the embedded server accepts only
// duplex's identities, generated into <data dir>/nkeys (0600) at the first
// start and the same at the next; each identity may do what its role
// needs and nothing more: a client without credentials is refused at
// connect, a flow cannot publish a source's transactions or read another
// flow's consumer, a capture cannot publish another source's transactions,
// read the stream, or purge or delete it.
func TestOpenBus_EmbeddedAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := twoWay()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	bus, err := OpenBus(ctx, cfg, dir, slog.New(slog.NewTextHandler(logs, nil)), false)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	url := bus.nats.URL()

	// The identities, kept where only the owner may read them.
	idDir := filepath.Join(dir, natsembed.IdentityDirName)
	fi, err := os.Stat(idDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mode %s, want 0700", idDir, fi.Mode().Perm())
	}
	for _, name := range []string{"operator", "capture-crm", "capture-erp", "flow-to-erp", "flow-to-crm"} {
		fi, err := os.Stat(filepath.Join(idDir, name+".nk"))
		if err != nil {
			t.Errorf("identity %s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("identity %s: mode %s, want 0600", name, fi.Mode().Perm())
		}
	}

	// The operator sets up the streams and the object store.
	js := bus.JetStream()
	if err := pipeline.EnsureStreams(ctx, js, pipeline.StreamConfig{Sources: cfg.Sources()}); err != nil {
		t.Fatal(err)
	}
	if err := pipeline.EnsureLargeChanges(ctx, js, 0, 1); err != nil {
		t.Fatal(err)
	}

	// Nothing else connects: no credentials, or a key the server does
	// not know.
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("a client without credentials connected to the embedded server")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("a client without credentials: %v, want an authorization violation", err)
	}
	other, err := natsembed.LoadIdentities(t.TempDir(), []string{"operator"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, nats.MaxReconnects(0), other["operator"].ConnectOption()); err == nil {
		nc.Close()
		t.Error("a client with another data directory's operator key connected")
	}

	stream, err := js.Stream(ctx, pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		t.Helper()
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}

	// The CRM's capture publishes its transactions and large changes.
	capCRM, err := bus.CaptureJetStream(ctx, "crm")
	if err != nil {
		t.Fatal(err)
	}
	if capCRM == js {
		t.Fatal("the capture shares the operator's connection")
	}
	if _, err := capCRM.Publish(ctx, pipeline.Subject("crm"), []byte(`{}`)); err != nil {
		t.Fatalf("capture-crm publish to %s: %v", pipeline.Subject("crm"), err)
	}
	obs, err := capCRM.ObjectStore(ctx, pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	big := []byte(`{"name":"` + bigName + `"}`) // several chunks
	if _, err := obs.PutBytes(ctx, "crm:0/1:c0:e0", big); err != nil {
		t.Fatalf("capture-crm put a large change: %v", err)
	}
	if _, err := capCRM.Publish(ctx, pipeline.DLQSubject("capture-crm"), []byte(`{}`)); err != nil {
		t.Fatalf("capture-crm dead letter: %v", err)
	}
	if got := msgs(); got != 1 {
		t.Fatalf("DUPLEX holds %d messages, want 1", got)
	}
	refused(t, logs, "duplex.erp.tx", "capture-crm publishes the ERP's transactions", func(ctx context.Context) error {
		_, err := capCRM.Publish(ctx, pipeline.Subject("erp"), []byte(`{}`))
		return err
	})
	refused(t, logs, "$JS.API.STREAM.DELETE.DUPLEX", "capture-crm deletes DUPLEX", func(ctx context.Context) error { return capCRM.DeleteStream(ctx, pipeline.StreamName) })
	refused(t, logs, "$JS.API.STREAM.PURGE.DUPLEX", "capture-crm purges DUPLEX", request(capCRM.Conn(), "$JS.API.STREAM.PURGE.DUPLEX"))
	refused(t, logs, "$JS.API.STREAM.PURGE.OBJ_DUPLEX_LARGE", "capture-crm purges the object store", request(capCRM.Conn(), "$JS.API.STREAM.PURGE.OBJ_DUPLEX_LARGE"))
	refused(t, logs, "$JS.API.CONSUMER.CREATE.DUPLEX.spy", "capture-crm reads DUPLEX", func(ctx context.Context) error {
		_, err := capCRM.CreateConsumer(ctx, pipeline.StreamName, jetstream.ConsumerConfig{Durable: "spy"})
		return err
	})

	// The operator creates the flow's consumer; the flow to the ERP
	// reads and fetches from it, and reads the large change.
	if _, err := js.CreateConsumer(ctx, pipeline.StreamName, jetstream.ConsumerConfig{Durable: "to-erp", FilterSubject: pipeline.SourceFilter("crm"), AckPolicy: jetstream.AckAllPolicy}); err != nil {
		t.Fatal(err)
	}
	toERP, err := bus.FlowJetStream(ctx, "to-erp")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := toERP.Consumer(ctx, pipeline.StreamName, "to-erp")
	if err != nil {
		t.Fatalf("flow-to-erp reads its consumer: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		n++
		if err := m.DoubleAck(ctx); err != nil {
			t.Errorf("flow-to-erp acks: %v", err)
		}
	}
	if n != 1 || batch.Error() != nil {
		t.Errorf("flow-to-erp fetched %d messages (%v), want 1", n, batch.Error())
	}
	ev := transform.Event{ID: "crm:0/1:0:0", DataRef: &transform.DataRef{Bucket: pipeline.LargeBucket, Object: "crm:0/1:c0:e0"}}
	if err := pipeline.ResolveData(ctx, toERP, &ev); err != nil || len(ev.Data["name"].(string)) != len(bigName) {
		t.Errorf("flow-to-erp reads the large change: %v", err)
	}
	if _, err := toERP.Publish(ctx, pipeline.DLQSubject("to-erp"), []byte(`{}`)); err != nil {
		t.Errorf("flow-to-erp dead letter: %v", err)
	}
	refused(t, logs, "duplex.crm.tx", "flow-to-erp publishes to duplex.crm.tx", func(ctx context.Context) error {
		_, err := toERP.Publish(ctx, pipeline.Subject("crm"), []byte(`{"forged":true}`))
		return err
	})
	refused(t, logs, "$JS.API.CONSUMER.CREATE.DUPLEX.to-erp.duplex.crm.>", "flow-to-erp changes its own consumer", func(ctx context.Context) error {
		_, err := toERP.CreateOrUpdateConsumer(ctx, pipeline.StreamName, jetstream.ConsumerConfig{Durable: "to-erp", FilterSubject: pipeline.SourceFilter("crm"), DeliverSubject: "duplex.dlq.to-crm"})
		return err
	})
	refused(t, logs, "$JS.API.CONSUMER.CREATE.OBJ_DUPLEX_LARGE.spy.$O.DUPLEX_LARGE.C.>", "flow-to-erp makes a consumer of the object store", func(ctx context.Context) error {
		_, err := toERP.CreateConsumer(ctx, "OBJ_"+pipeline.LargeBucket, jetstream.ConsumerConfig{Durable: "spy", FilterSubject: "$O.DUPLEX_LARGE.C.>"})
		return err
	})
	refused(t, logs, "$JS.API.CONSUMER.CREATE.DUPLEX.to-erp.duplex.erp.>", "flow-to-erp reads the ERP's transactions", func(ctx context.Context) error {
		_, err := toERP.CreateConsumer(ctx, pipeline.StreamName, jetstream.ConsumerConfig{Durable: "to-erp", FilterSubject: pipeline.SourceFilter("erp")})
		return err
	})
	refused(t, logs, "$JS.API.CONSUMER.CREATE.DUPLEX.to-crm.duplex.erp.>", "flow-to-erp takes the consumer of to-crm", func(ctx context.Context) error {
		_, err := toERP.CreateConsumer(ctx, pipeline.StreamName, jetstream.ConsumerConfig{Durable: "to-crm", FilterSubject: pipeline.SourceFilter("erp")})
		return err
	})
	refused(t, logs, "$JS.API.CONSUMER.MSG.NEXT.DUPLEX.to-crm", "flow-to-erp fetches from to-crm", request(toERP.Conn(), "$JS.API.CONSUMER.MSG.NEXT.DUPLEX.to-crm"))
	refused(t, logs, "$JS.API.STREAM.DELETE.DUPLEX", "flow-to-erp deletes DUPLEX", func(ctx context.Context) error { return toERP.DeleteStream(ctx, pipeline.StreamName) })
	refused(t, logs, "$JS.API.STREAM.PURGE.DUPLEX", "flow-to-erp purges DUPLEX", request(toERP.Conn(), "$JS.API.STREAM.PURGE.DUPLEX"))
	if got := msgs(); got != 1 {
		t.Errorf("DUPLEX holds %d messages after the refusals, want 1", got)
	}

	// The operator publishes no transactions, and alone purges.
	refused(t, logs, "duplex.crm.tx", "the operator publishes to duplex.crm.tx", func(ctx context.Context) error {
		_, err := js.Publish(ctx, pipeline.Subject("crm"), []byte(`{}`))
		return err
	})
	if err := stream.Purge(ctx); err != nil {
		t.Errorf("operator purge: %v", err)
	}
	oobs, err := js.ObjectStore(ctx, pipeline.LargeBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := oobs.Delete(ctx, "crm:0/1:c0:e0"); err != nil {
		t.Errorf("operator deletes a large change: %v", err)
	}

	// Nothing duplex does was refused: every violation is one provoked
	// above.
	for _, m := range violation.FindAllStringSubmatch(logs.String(), -1) {
		if !provoked[m[1]] {
			t.Errorf("the server refused %s, which the test did not provoke", m[0])
		}
	}

	// The next start keeps the identities.
	before, err := natsembed.LoadIdentities(idDir, identityNames(cfg), false)
	if err != nil {
		t.Fatal(err)
	}
	bus.Close()
	bus2, err := OpenBus(ctx, cfg, dir, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer bus2.Close()
	after, err := natsembed.LoadIdentities(idDir, identityNames(cfg), false)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range before {
		if after[name].PublicKey != id.PublicKey {
			t.Errorf("identity %s changed across a restart", name)
		}
	}
}

// TestOpenBus_SeedReadableByOthers: a seed file others may read is
// refused, naming it, rather than used.
func TestOpenBus_SeedReadableByOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := twoWay()
	bus, err := OpenBus(ctx, cfg, dir, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	bus.Close()
	seed := filepath.Join(dir, natsembed.IdentityDirName, "flow-to-erp.nk")
	if err := os.Chmod(seed, 0o644); err != nil {
		t.Fatal(err)
	}
	bus, err = OpenBus(ctx, cfg, dir, nil, false)
	if err == nil {
		bus.Close()
		t.Fatal("OpenBus used a seed file others may read")
	}
	if !strings.Contains(err.Error(), seed) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("error = %v, want it to name %s and say chmod 600", err, seed)
	}
}

// TestOpenBus_ToolAttaches: a tool (attach) connects to the running
// duplex's embedded server as the operator of the same data directory; a
// tool given another data directory is refused, saying why, rather than
// acting as if no duplex ran.
func TestOpenBus_ToolAttaches(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := twoWay()
	cfg.NATS.Embedded.Port = port
	running, err := OpenBus(ctx, cfg, dir, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	if err := pipeline.EnsureStreams(ctx, running.JetStream(), pipeline.StreamConfig{Sources: cfg.Sources()}); err != nil {
		t.Fatal(err)
	}

	tool, err := OpenBus(ctx, cfg, dir, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if tool.nats != nil {
		t.Error("the tool started a server of its own while one runs")
	}
	if _, err := tool.JetStream().Stream(ctx, pipeline.StreamName); err != nil {
		t.Errorf("the tool reads the running duplex's stream: %v", err)
	}
	tool.Close()

	other := t.TempDir()
	tool, err = OpenBus(ctx, cfg, other, nil, true)
	if err == nil {
		tool.Close()
		t.Fatal("a tool with another data directory attached")
	}
	if !strings.Contains(err.Error(), "refused this tool") || !strings.Contains(err.Error(), "--data-dir") {
		t.Errorf("error = %v, want the refusal and the remedy", err)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
