package deploy_test

import (
	"bufio"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
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

// loadProject loads ../docker-compose.yml with the compose-spec loader:
// schema validation, interpolation, normalisation and path resolution, as
// `docker compose config` does. None of that needs a Docker engine.
func loadProject(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	root := repoRoot(t)
	file := filepath.Join(root, "docker-compose.yml")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: types.Mapping{"POSTGRES_PASSWORD": testPassword},
	}, func(o *loader.Options) {
		o.ResolvePaths = true // bind sources and build context as absolute host paths
		o.Profiles = profiles
	})
	if err != nil {
		t.Fatalf("load %s: %v", file, err)
	}
	return p
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
		if pw, _ := u.User.Password(); pw != testPassword {
			t.Errorf("duplex: %s=%q: password %q, want $POSTGRES_PASSWORD (%q)", key, raw, pw, testPassword)
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
		if len(s.Volumes) != 1 || s.Volumes[0].Target != "/data" || s.Volumes[0].Source != name+"-data" {
			t.Errorf("%s: volumes %+v, want its own %s-data at /data", name, s.Volumes, name)
		}
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
