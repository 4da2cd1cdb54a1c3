package deploy_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
)

// natsIdentities are the identities of the example's two flows, as the
// environment variables name them: DUPLEX_NATS_<ID>_SEED for duplex,
// DUPLEX_NATS_<ID>_NKEY for the server.
var natsIdentities = []string{"OPERATOR", "CAPTURE_CRM", "CAPTURE_ERP", "FLOW_TO_ERP", "FLOW_TO_CRM"}

// natsEnv makes a user nkey for each identity and returns the variables
// of both sides.
func natsEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, id := range natsIdentities {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		env["DUPLEX_NATS_"+id+"_SEED"], env["DUPLEX_NATS_"+id+"_NKEY"] = string(seed), pub
	}
	return env
}

func publicKey(t *testing.T, seed string) string {
	t.Helper()
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}

func sameSubjects(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestNATSServerConf: deploy/nats/nats-server.conf gives each identity of
// the example's configuration for a NATS server (duplex-nats.yaml) exactly
// the permissions duplex derives for it (pipeline/permissions.go), in one
// account with JetStream, and accepts nobody else: the server's public
// keys and duplex's seeds are the two halves of the same nkeys, through
// the variables both files name.
func TestNATSServerConf(t *testing.T) {
	env := natsEnv(t)
	env["CRM_DSN"], env["ERP_DSN"], env["NATS_URL"] = "postgres://c", "postgres://e", "nats://nats:4222"
	cfg, err := config.Load(filepath.Join(repoRoot(t), "examples", "order-to-cash", "duplex-nats.yaml"), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]pipeline.Permissions{publicKey(t, cfg.NATS.NkeySeed): pipeline.OperatorPermissions(cfg.Sources())}
	names := map[string]string{publicKey(t, cfg.NATS.NkeySeed): pipeline.OperatorIdentity}
	for _, s := range cfg.Sources() {
		c := cfg.NATS.Captures[s]
		if c == nil {
			t.Fatalf("duplex-nats.yaml: no nats.captures.%s", s)
		}
		pub := publicKey(t, c.NkeySeed)
		want[pub], names[pub] = pipeline.CapturePermissions(s), pipeline.CaptureIdentity(s)
	}
	for _, f := range cfg.Flows {
		c := cfg.NATS.Flows[f.Name]
		if c == nil {
			t.Fatalf("duplex-nats.yaml: no nats.flows.%s", f.Name)
		}
		pub := publicKey(t, c.NkeySeed)
		want[pub], names[pub] = pipeline.FlowPermissions(f.Name), pipeline.FlowIdentity(f.Name)
	}

	for k, v := range env {
		if strings.HasSuffix(k, "_NKEY") {
			t.Setenv(k, v)
		}
	}
	conf := filepath.Join(repoRoot(t), "deploy", "nats", "nats-server.conf")
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("%s: %v", conf, err)
	}
	if len(opts.Users) > 0 || opts.NoAuthUser != "" || opts.Authorization != "" || opts.Username != "" {
		t.Errorf("%s: users with passwords, a token or an anonymous user: want nkeys alone", conf)
	}
	if !opts.JetStream {
		t.Errorf("%s: JetStream is not enabled", conf)
	}
	if len(opts.Nkeys) != len(want) {
		t.Errorf("%s: %d nkey users, want %d (the example's identities and nobody else)", conf, len(opts.Nkeys), len(want))
	}
	for _, u := range opts.Nkeys {
		name := names[u.Nkey]
		p, ok := want[u.Nkey]
		if !ok {
			t.Errorf("%s: user %s is none of duplex's identities", conf, u.Nkey)
			continue
		}
		delete(want, u.Nkey)
		if u.Account == nil || u.Account.Name != "DUPLEX" {
			t.Errorf("%s: %s is not in account DUPLEX", conf, name)
		}
		var got pipeline.Permissions
		if u.Permissions != nil {
			if pp := u.Permissions.Publish; pp != nil {
				got.Publish, got.DenyPublish = pp.Allow, pp.Deny
			}
			if sp := u.Permissions.Subscribe; sp != nil {
				got.Subscribe = sp.Allow
				if len(sp.Deny) > 0 {
					t.Errorf("%s: %s: subscribe deny %q, which duplex does not derive", conf, name, sp.Deny)
				}
			}
		}
		if !sameSubjects(got.Publish, p.Publish) {
			t.Errorf("%s: %s may publish to %q, duplex derives %q", conf, name, got.Publish, p.Publish)
		}
		if !sameSubjects(got.DenyPublish, p.DenyPublish) {
			t.Errorf("%s: %s may not publish to %q, duplex derives %q", conf, name, got.DenyPublish, p.DenyPublish)
		}
		if !sameSubjects(got.Subscribe, p.Subscribe) {
			t.Errorf("%s: %s may subscribe to %q, duplex derives %q", conf, name, got.Subscribe, p.Subscribe)
		}
	}
	for pub := range want {
		t.Errorf("%s: no user for %s (%s)", conf, names[pub], pub)
	}
}
