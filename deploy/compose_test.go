package deploy_test

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"

	"github.com/duplex-cdc/duplex/internal/config"
)

// testPassword stands in for $POSTGRES_PASSWORD so that the test sees it
// interpolated into both the databases and duplex's DSNs.
const testPassword = "compose-test-secret"

// repoRoot is the repository root, where docker-compose.yml and the
// Dockerfile live.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// rolePassword stands in for $DUPLEX_CRM_PASSWORD and $DUPLEX_ERP_PASSWORD,
// the passwords of duplex's roles duplex_crm and duplex_erp.
func rolePassword(db string) string { return "compose-test-" + db + "-role" }

// composeEnv is the .env a user writes with deploy/nats/gen-env.sh: the
// PostgreSQL password (testPassword), the passwords of duplex's roles
// (rolePassword) and a user nkey per duplex identity.
func composeEnv(t *testing.T) types.Mapping {
	t.Helper()
	env := types.Mapping{"POSTGRES_PASSWORD": testPassword, "DUPLEX_CRM_PASSWORD": rolePassword("crm"), "DUPLEX_ERP_PASSWORD": rolePassword("erp")}
	for k, v := range natsEnv(t) {
		env[k] = v
	}
	return env
}

// loadProject loads ../docker-compose.yml with the compose-spec loader:
// schema validation, interpolation, normalisation and path resolution, as
// `docker compose config` does. None of that needs a Docker engine.
func loadProject(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	p, err := loadProjectEnv(t, composeEnv(t), profiles...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// loadProjectEnv loads ../docker-compose.yml with env as its environment
// (the .env file).
func loadProjectEnv(t *testing.T, env types.Mapping, profiles ...string) (*types.Project, error) {
	t.Helper()
	root := repoRoot(t)
	file := filepath.Join(root, "docker-compose.yml")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: env,
	}, func(o *loader.Options) {
		o.ResolvePaths = true // bind sources and build context as absolute host paths
		o.Profiles = profiles
	})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", file, err)
	}
	return p, nil
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	return s
}

// env returns a service's environment variable, failing if it is unset.
func env(t *testing.T, s types.ServiceConfig, key string) string {
	t.Helper()
	v, ok := s.Environment[key]
	if !ok || v == nil {
		t.Fatalf("service %s: environment %s is not set", s.Name, key)
	}
	return *v
}

// hostPath maps a path inside a service's container back to the host
// through the service's bind mounts; ok is false if no bind mount holds it.
func hostPath(s types.ServiceConfig, containerPath string) (string, bool) {
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if containerPath == v.Target {
			return v.Source, true
		}
		if rel, ok := strings.CutPrefix(containerPath, strings.TrimSuffix(v.Target, "/")+"/"); ok {
			return filepath.Join(v.Source, filepath.FromSlash(rel)), true
		}
	}
	return "", false
}

// flagValue returns the value of --name (or --name=value) in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// postgresSettings returns the -c settings of a postgres command line.
func postgresSettings(cmd []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(cmd); i++ {
		var kv string
		switch {
		case cmd[i] == "-c" && i+1 < len(cmd):
			kv = cmd[i+1]
			i++
		case strings.HasPrefix(cmd[i], "--") && strings.Contains(cmd[i], "="):
			kv = strings.TrimPrefix(cmd[i], "--")
		default:
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		out[strings.ReplaceAll(k, "-", "_")] = v
	}
	return out
}

func mustExist(t *testing.T, what, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if fi.IsDir() {
		t.Errorf("%s: %s is a directory, want a file", what, path)
	}
}

func TestComposeFile(t *testing.T) {
	p := loadProject(t)
	root := repoRoot(t)

	for _, name := range []string{"crm", "erp", "nats", "duplex"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("service %s is missing; have %v", name, p.ServiceNames())
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The databases: logical decoding on, schema from the example.
	for _, db := range []string{"crm", "erp"} {
		s := service(t, p, db)
		if !strings.HasPrefix(s.Image, "postgres:") {
			t.Errorf("%s: image %q, want postgres:<version>", db, s.Image)
		}
		set := postgresSettings(s.Command)
		if set["wal_level"] != "logical" {
			t.Errorf("%s: command %q does not set wal_level=logical", db, s.Command)
		}
		for _, k := range []string{"max_replication_slots", "max_wal_senders"} {
			if set[k] == "" || set[k] == "0" {
				t.Errorf("%s: command %q does not set %s", db, s.Command, k)
			}
		}
		if got := env(t, s, "POSTGRES_DB"); got != db {
			t.Errorf("%s: POSTGRES_DB=%q, want %q", db, got, db)
		}
		if got := env(t, s, "POSTGRES_PASSWORD"); got != testPassword {
			t.Errorf("%s: POSTGRES_PASSWORD=%q, want $POSTGRES_PASSWORD (%q)", db, got, testPassword)
		}
		var inits []string
		for _, v := range s.Volumes {
			if strings.HasPrefix(v.Target, "/docker-entrypoint-initdb.d/") {
				inits = append(inits, v.Source)
			}
		}
		want := filepath.Join(root, "examples", "order-to-cash", db+".sql")
		if !slices.Contains(inits, want) {
			t.Errorf("%s: no /docker-entrypoint-initdb.d/ mount of %s; init mounts %q", db, want, inits)
		}
		// duplex's least-privilege role, from examples/order-to-cash/<db>-role.sql,
		// made by deploy/postgres/duplex-role.sh after the schema.
		if script := filepath.Join(root, "deploy", "postgres", "duplex-role.sh"); !slices.Contains(inits, script) {
			t.Errorf("%s: no /docker-entrypoint-initdb.d/ mount of %s; init mounts %q", db, script, inits)
		} else if b, err := os.ReadFile(script); err != nil || !strings.Contains(string(b), `-f "/duplex/$POSTGRES_DB-role.sql"`) || !strings.Contains(string(b), `password="$DUPLEX_ROLE_PASSWORD"`) {
			t.Errorf("%s: does not run /duplex/$POSTGRES_DB-role.sql with password $DUPLEX_ROLE_PASSWORD (%v)", script, err)
		}
		if host, ok := hostPath(s, "/duplex/"+db+"-role.sql"); !ok || host != filepath.Join(root, "examples", "order-to-cash", db+"-role.sql") {
			t.Errorf("%s: /duplex/%s-role.sql is %q (mounted %v), want examples/order-to-cash/%s-role.sql", db, db, host, ok, db)
		}
		if got := env(t, s, "DUPLEX_ROLE_PASSWORD"); got != rolePassword(db) {
			t.Errorf("%s: DUPLEX_ROLE_PASSWORD=%q, want $DUPLEX_%s_PASSWORD (%q)", db, got, strings.ToUpper(db), rolePassword(db))
		}
		for _, src := range inits {
			mustExist(t, db+": init script", src)
		}
		if hc := s.HealthCheck; hc == nil || hc.Disable || !slices.Contains(hc.Test, "pg_isready") {
			t.Errorf("%s: want a pg_isready healthcheck, have %+v", db, hc)
		}
	}

	// NATS with JetStream, its store on a volume.
	nats := service(t, p, "nats")
	if !strings.HasPrefix(nats.Image, "nats:") {
		t.Errorf("nats: image %q, want nats:<version>", nats.Image)
	}
	if !slices.Contains(nats.Command, "-js") && !slices.Contains(nats.Command, "--jetstream") {
		t.Errorf("nats: command %q does not enable JetStream (-js)", nats.Command)
	}
	if sd, ok := flagValue(nats.Command, "-sd"); !ok {
		t.Errorf("nats: command %q sets no store directory (-sd)", nats.Command)
	} else if !slices.ContainsFunc(nats.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == sd }) {
		t.Errorf("nats: store directory %s is not on a volume", sd)
	}

	// duplex: built here, started after its dependencies, pointed at them.
	d := service(t, p, "duplex")
	if d.Build == nil {
		t.Fatal("duplex: no build section; want build: .")
	}
	if d.Build.Context != root {
		t.Errorf("duplex: build context %q, want the repository root %q", d.Build.Context, root)
	}
	dockerfile := d.Build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(d.Build.Context, dockerfile)
	}
	if dockerfile != filepath.Join(root, "Dockerfile") {
		t.Errorf("duplex: builds from %s, want %s", dockerfile, filepath.Join(root, "Dockerfile"))
	}

	for dep, cond := range map[string]string{
		"crm":  types.ServiceConditionHealthy,
		"erp":  types.ServiceConditionHealthy,
		"nats": "",
	} {
		got, ok := d.DependsOn[dep]
		switch {
		case !ok:
			t.Errorf("duplex: does not depend on %s", dep)
		case cond != "" && got.Condition != cond:
			t.Errorf("duplex: depends on %s with condition %q, want %q", dep, got.Condition, cond)
		}
	}

	for key, db := range map[string]string{"CRM_DSN": "crm", "ERP_DSN": "erp"} {
		raw := env(t, d, key)
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("duplex: %s=%q: %v", key, raw, err)
			continue
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			t.Errorf("duplex: %s=%q: scheme %q, want postgres", key, raw, u.Scheme)
		}
		if u.Hostname() != db {
			t.Errorf("duplex: %s=%q: host %q, want the %s service", key, raw, u.Hostname(), db)
		}
		if port := u.Port(); port != "" && port != "5432" {
			t.Errorf("duplex: %s=%q: port %s, want 5432", key, raw, port)
		}
		if got := strings.TrimPrefix(u.Path, "/"); got != db {
			t.Errorf("duplex: %s=%q: database %q, want %q (POSTGRES_DB of %s)", key, raw, got, db, db)
		}
		// duplex connects as its least-privilege role, never as postgres.
		if u.User.Username() != "duplex_"+db {
			t.Errorf("duplex: %s=%q: user %q, want duplex_%s (examples/order-to-cash/%s-role.sql)", key, raw, u.User.Username(), db, db)
		}
		if pw, _ := u.User.Password(); pw != rolePassword(db) {
			t.Errorf("duplex: %s=%q: password %q, want $DUPLEX_%s_PASSWORD (%q)", key, raw, pw, strings.ToUpper(db), rolePassword(db))
		}
	}
	if raw := env(t, d, "NATS_URL"); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "nats" || u.Host != "nats:4222" {
			t.Errorf("duplex: NATS_URL=%q, want nats://nats:4222", raw)
		}
	} else {
		t.Error("duplex: NATS_URL is empty: duplex would start an embedded NATS instead of the nats service")
	}

	if len(d.Command) == 0 || d.Command[0] != "run" {
		t.Errorf("duplex: command %q, want run --config ...", d.Command)
	}
	cfgPath, ok := flagValue(d.Command, "--config")
	if !ok {
		t.Fatalf("duplex: command %q has no --config", d.Command)
	}
	host, ok := hostPath(d, cfgPath)
	if !ok {
		t.Fatalf("duplex: --config %s is not inside a bind mount (%v)", cfgPath, d.Volumes)
	}
	mustExist(t, "duplex: --config "+cfgPath, host)
	for _, v := range d.Volumes {
		if v.Type == types.VolumeTypeBind && !v.ReadOnly {
			t.Errorf("duplex: bind mount %s should be read-only", v.Target)
		}
	}
	if !slices.ContainsFunc(d.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == 9464 }) {
		t.Errorf("duplex: metrics port 9464 is not published; ports %+v", d.Ports)
	}
	if d.Restart != types.RestartPolicyUnlessStopped {
		t.Errorf("duplex: restart %q, want %q", d.Restart, types.RestartPolicyUnlessStopped)
	}

	// Named volumes hold the state that must outlive the containers.
	for svc, target := range map[string]string{"crm": "/var/lib/postgresql/data", "erp": "/var/lib/postgresql/data", "nats": ""} {
		s := service(t, p, svc)
		if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && (target == "" || v.Target == target) && p.Volumes[v.Source].Name != ""
		}) {
			t.Errorf("%s: no named volume for its data (%v)", svc, s.Volumes)
		}
	}
}

// dockerfileInstructions reads a Dockerfile into instructions (continuation
// lines joined, comments dropped), each as its keyword and its arguments.
func dockerfileInstructions(t *testing.T, path string) [][2]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][2]string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if more, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(line)
		kw, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, [2]string{strings.ToUpper(kw), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	ins := dockerfileInstructions(t, filepath.Join(root, "Dockerfile"))

	var froms []string
	var builds, entry, cmd []string
	for _, in := range ins {
		switch in[0] {
		case "FROM":
			froms = append(froms, in[1])
		case "RUN":
			if strings.Contains(in[1], "go build") {
				builds = append(builds, in[1])
			}
		case "ENTRYPOINT":
			entry = append(entry, in[1])
		case "CMD":
			cmd = append(cmd, in[1])
		}
	}
	if len(froms) < 2 {
		t.Errorf("Dockerfile: %d stages, want a build and a runtime stage", len(froms))
	}
	if !slices.ContainsFunc(builds, func(b string) bool {
		return strings.Contains(b, "CGO_ENABLED=0") && slices.Contains(strings.Fields(b), "./cmd/duplex")
	}) {
		t.Errorf("Dockerfile: no RUN CGO_ENABLED=0 go build ... ./cmd/duplex; go build runs: %q", builds)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "duplex", "main.go")); err != nil {
		t.Errorf("Dockerfile builds ./cmd/duplex: %v", err)
	}
	if len(entry) == 0 || entry[len(entry)-1] != `["/duplex"]` {
		t.Errorf("Dockerfile: ENTRYPOINT %q, want [\"/duplex\"]", entry)
	}
	if len(cmd) == 0 || !strings.Contains(cmd[len(cmd)-1], `"/etc/duplex/duplex.yaml"`) {
		t.Errorf("Dockerfile: CMD %q, want run --config /etc/duplex/duplex.yaml", cmd)
	}
	// The image's default config comes from the example it copies.
	if !slices.ContainsFunc(ins, func(in [2]string) bool {
		return in[0] == "COPY" && strings.HasPrefix(in[1], "examples/order-to-cash") && strings.HasSuffix(in[1], "/etc/duplex/")
	}) {
		t.Error("Dockerfile: does not COPY examples/order-to-cash to /etc/duplex/")
	}
	mustExist(t, "Dockerfile: default config", filepath.Join(root, "examples", "order-to-cash", "duplex.yaml"))

	// The build context must keep what the build needs.
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pat := strings.Trim(strings.TrimSpace(line), "/")
		if pat == "" || strings.HasPrefix(pat, "#") || strings.HasPrefix(pat, "!") {
			continue
		}
		for _, need := range []string{"go.mod", "go.sum", "cmd", "cmd/duplex", "internal", "examples", "examples/order-to-cash"} {
			if ok, _ := filepath.Match(pat, need); ok {
				t.Errorf(".dockerignore: %q excludes %s, which the image build needs", line, need)
			}
		}
	}
}

// TestComposeConfig loads the configuration the duplex service runs with,
// through the project's own loader and with the environment compose gives
// the service, so a variable the config needs but compose does not set (or
// a mapping file that is not where the config says) fails here.
func TestComposeConfig(t *testing.T) {
	p := loadProject(t)
	d := service(t, p, "duplex")
	cfgPath, ok := flagValue(d.Command, "--config")
	if !ok {
		t.Fatalf("duplex: command %q has no --config", d.Command)
	}
	host, ok := hostPath(d, cfgPath)
	if !ok {
		t.Fatalf("duplex: --config %s is not inside a bind mount", cfgPath)
	}

	var unset []string
	getenv := func(k string) string {
		v, ok := d.Environment[k]
		if !ok || v == nil {
			unset = append(unset, k)
			return ""
		}
		return *v
	}
	cfg, err := config.Load(host, getenv)
	if err != nil {
		t.Fatalf("config.Load(%s) with the duplex service's environment: %v", host, err)
	}
	if len(unset) > 0 {
		t.Errorf("%s references ${%s}, which the duplex service does not set", host, strings.Join(unset, "}, ${"))
	}

	for _, sys := range []string{"crm", "erp"} {
		s := cfg.Systems[sys]
		if s == nil {
			t.Errorf("config: no system %s", sys)
			continue
		}
		u, err := url.Parse(s.DSN)
		if err != nil || u.Hostname() != sys {
			t.Errorf("config: systems.%s.dsn %q does not point at the %s service", sys, s.DSN, sys)
		}
	}
	if cfg.NATS.URL != "nats://nats:4222" {
		t.Errorf("config: nats.url %q, want nats://nats:4222 (the nats service, not embedded)", cfg.NATS.URL)
	}
	if len(cfg.Flows) == 0 {
		t.Error("config: no flows")
	}

	mp := cfg.MappingPath()
	mustExist(t, "config: mapping", mp)
	// The mapping must be visible in the container too: inside a bind mount.
	if !slices.ContainsFunc(d.Volumes, func(v types.ServiceVolumeConfig) bool {
		rel, err := filepath.Rel(v.Source, mp)
		return v.Type == types.VolumeTypeBind && err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}) {
		t.Errorf("config: mapping %s is not inside any bind mount of the duplex service", mp)
	}
}

// TestComposeNATSCluster: the nats-cluster profile runs three NATS nodes
// with JetStream, each with its own store and a name, routed to each
// other, and a duplex whose configuration replicates every stream three
// times and lists the three nodes.
func TestComposeNATSCluster(t *testing.T) {
	p := loadProject(t, "nats-cluster")
	nodes := []string{"nats-1", "nats-2", "nats-3"}
	for _, name := range nodes {
		s := service(t, p, name)
		if !strings.HasPrefix(s.Image, "nats:2.") || strings.HasSuffix(s.Image, ":latest") {
			t.Errorf("%s: image %q, want a pinned nats:2.x", name, s.Image)
		}
		cmd := []string(s.Command)
		if !slices.Contains(cmd, "-js") {
			t.Errorf("%s: JetStream not enabled: %v", name, cmd)
		}
		if v, _ := flagValue(cmd, "--server_name"); v != name {
			t.Errorf("%s: --server_name %q", name, v)
		}
		routes, _ := flagValue(cmd, "--routes")
		for _, other := range nodes {
			if !strings.Contains(routes, "nats://"+other+":6222") {
				t.Errorf("%s: no route to %s in %q", name, other, routes)
			}
		}
		if _, ok := hostPath(s, "/data"); ok {
			t.Errorf("%s: store on a bind mount; want its own volume", name)
		}
		if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && v.Target == "/data" && v.Source == name+"-data"
		}) {
			t.Errorf("%s: volumes %+v, want its own %s-data at /data", name, s.Volumes, name)
		}
		checkNATSAuth(t, s)
	}
	d := service(t, p, "duplex-cluster")
	url := env(t, d, "NATS_URL")
	for _, n := range nodes {
		if !strings.Contains(url, "nats://"+n+":4222") {
			t.Errorf("duplex-cluster: NATS_URL %q does not list %s", url, n)
		}
	}
	cfgPath, ok := flagValue([]string(d.Command), "--config")
	if !ok {
		t.Fatalf("duplex-cluster: no --config in %v", d.Command)
	}
	host, ok := hostPath(d, cfgPath)
	if !ok {
		t.Fatalf("duplex-cluster: %s is not mounted from the repository", cfgPath)
	}
	b, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Stream struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"stream"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Stream.Replicas != 3 {
		t.Errorf("%s: stream.replicas %d, want 3", host, cfg.Stream.Replicas)
	}
}

// checkNATSAuth: a NATS service runs with deploy/nats/nats-server.conf
// (mounted read-only), takes no credentials on its command line, and
// with the environment compose gives it accepts duplex's nkeys and
// nobody else.
func checkNATSAuth(t *testing.T, s types.ServiceConfig) {
	t.Helper()
	conf, ok := flagValue(s.Command, "-c")
	if !ok {
		t.Errorf("%s: command %q has no -c: want deploy/nats/nats-server.conf", s.Name, s.Command)
		return
	}
	for _, a := range s.Command {
		switch strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-") {
		case "user", "pass", "auth", "no_auth_user":
			t.Errorf("%s: command %q sets %s: credentials belong in the configuration file", s.Name, s.Command, a)
		}
	}
	host, ok := hostPath(s, conf)
	if !ok || host != filepath.Join(repoRoot(t), "deploy", "nats", "nats-server.conf") {
		t.Errorf("%s: -c %s is not deploy/nats/nats-server.conf (%s)", s.Name, conf, host)
		return
	}
	for _, v := range s.Volumes {
		if v.Target == conf && !v.ReadOnly {
			t.Errorf("%s: %s is mounted read-write", s.Name, conf)
		}
	}
	for k, v := range s.Environment {
		if v != nil {
			t.Setenv(k, *v)
		}
	}
	opts, err := server.ProcessConfigFile(host)
	if err != nil {
		t.Errorf("%s: %s with the service's environment: %v", s.Name, host, err)
		return
	}
	if len(opts.Nkeys) != len(natsIdentities) || len(opts.Users) > 0 || opts.NoAuthUser != "" {
		t.Errorf("%s: %d nkey users, %d password users, no_auth_user %q: want duplex's %d identities alone", s.Name, len(opts.Nkeys), len(opts.Users), opts.NoAuthUser, len(natsIdentities))
	}
	for _, u := range opts.Nkeys {
		if !nkeys.IsValidPublicUserKey(u.Nkey) {
			t.Errorf("%s: nkey user %q is not a public user key (an unset variable?)", s.Name, u.Nkey)
		}
	}
}

// TestComposeSecurity: compose starts nothing with a default secret (the
// PostgreSQL password and the NATS keys come from .env, and compose
// refuses to start without them), publishes every port on 127.0.0.1 by
// default, pins every image to a version, gives NATS the deployment's
// authentication, and duplex the seeds of the keys NATS checks.
func TestComposeSecurity(t *testing.T) {
	// No .env: refused, saying what to do.
	for _, missing := range []string{"POSTGRES_PASSWORD", "DUPLEX_CRM_PASSWORD", "DUPLEX_ERP_PASSWORD", "DUPLEX_NATS_FLOW_TO_ERP_SEED", "DUPLEX_NATS_CAPTURE_CRM_NKEY"} {
		env := composeEnv(t)
		delete(env, missing)
		_, err := loadProjectEnv(t, env)
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("compose without %s: %v, want a refusal naming it", missing, err)
		}
	}

	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{[A-Z0-9_]*(PASSWORD|SEED|NKEY|TOKEN|SECRET)[A-Z0-9_]*:?-[^}]*\}`).FindAllString(string(raw), -1) {
		t.Errorf("docker-compose.yml: %s gives a secret a default", m)
	}

	env := composeEnv(t)
	p, err := loadProjectEnv(t, env, "monitoring", "nats-cluster")
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`^v?\d+\.\d+(\.\d+)?$`)
	for _, s := range p.Services {
		for _, pc := range s.Ports {
			if pc.Published != "" && pc.HostIP != "127.0.0.1" {
				t.Errorf("%s: port %s published on %q, want 127.0.0.1 by default", s.Name, pc.Published, pc.HostIP)
			}
		}
		if s.Build != nil || s.Image == service(t, p, "duplex").Image {
			continue // built here
		}
		name, tag, _ := strings.Cut(s.Image, ":")
		switch {
		case !pinned.MatchString(tag):
			t.Errorf("%s: image %q is not pinned to a version", s.Name, s.Image)
		case name == "nats" && strings.Count(tag, ".") != 2:
			t.Errorf("%s: image %q: want a NATS release (major.minor.patch)", s.Name, s.Image)
		}
	}
	if p, err := loadProjectEnv(t, func() types.Mapping { e := composeEnv(t); e["DUPLEX_BIND"] = "0.0.0.0"; return e }()); err != nil {
		t.Fatal(err)
	} else if d := service(t, p, "duplex"); len(d.Ports) == 0 || d.Ports[0].HostIP != "0.0.0.0" {
		t.Errorf("DUPLEX_BIND=0.0.0.0: duplex ports %+v, want them on 0.0.0.0", d.Ports)
	}

	checkNATSAuth(t, service(t, p, "nats"))
	// duplex holds the seeds of the keys the server checks.
	n, d := service(t, p, "nats"), service(t, p, "duplex")
	for _, id := range natsIdentities {
		seed, pub := env["DUPLEX_NATS_"+id+"_SEED"], env["DUPLEX_NATS_"+id+"_NKEY"]
		if got := n.Environment["DUPLEX_NATS_"+id+"_NKEY"]; got == nil || *got != pub {
			t.Errorf("nats: DUPLEX_NATS_%s_NKEY is not the .env's", id)
		}
		if got := d.Environment["DUPLEX_NATS_"+id+"_SEED"]; got == nil || publicKey(t, *got) != pub {
			t.Errorf("duplex: DUPLEX_NATS_%s_SEED is not the seed of the key nats checks", id)
		}
		if seed == "" {
			t.Fatalf("no seed for %s", id)
		}
	}

	// The secrets stay out of the repository and the image.
	for _, f := range []string{".gitignore", ".dockerignore"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), f))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Fields(string(b)), ".env") {
			t.Errorf("%s does not list .env", f)
		}
	}
}

// TestGenEnv: deploy/nats/gen-env.sh writes a .env with which compose
// starts: a password, and nkey pairs whose seeds duplex's configuration
// accepts and whose public keys the server's configuration takes.
func TestGenEnv(t *testing.T) {
	root := repoRoot(t)
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "nk"), "github.com/nats-io/nkeys/nk")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build nk: %v\n%s", err, out)
	}
	cmd := exec.Command("sh", filepath.Join(root, "deploy", "nats", "gen-env.sh"))
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gen-env.sh: %v", err)
	}
	env := types.Mapping{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	for _, k := range []string{"POSTGRES_PASSWORD", "DUPLEX_CRM_PASSWORD", "DUPLEX_ERP_PASSWORD"} {
		if len(env[k]) < 32 {
			t.Errorf("%s %q: want a long random password", k, env[k])
		}
	}
	if env["DUPLEX_CRM_PASSWORD"] == env["DUPLEX_ERP_PASSWORD"] || env["DUPLEX_CRM_PASSWORD"] == env["POSTGRES_PASSWORD"] {
		t.Error("gen-env.sh: the roles' passwords are not each their own")
	}
	p, err := loadProjectEnv(t, env)
	if err != nil {
		t.Fatalf("compose with gen-env.sh's output: %v", err)
	}
	checkNATSAuth(t, service(t, p, "nats"))
	d := service(t, p, "duplex")
	for _, id := range natsIdentities {
		if publicKey(t, *d.Environment["DUPLEX_NATS_"+id+"_SEED"]) != env["DUPLEX_NATS_"+id+"_NKEY"] {
			t.Errorf("gen-env.sh: the seed and key of %s are not a pair", id)
		}
	}
}
