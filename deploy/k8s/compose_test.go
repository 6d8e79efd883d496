package k8s_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/jetproj/jetproj/internal/opsserver"
)

// loadCompose loads docker-compose.yml, with the files named layered over
// it (docker compose -f docker-compose.yml -f <file> …).
func loadCompose(t *testing.T, over ...string) *types.Project {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "docker-compose.yml")}
	for _, f := range over {
		files = append(files, filepath.Join(repoRoot, f))
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithName("jetproj"), cli.WithResolvedPaths(false), cli.WithEnv([]string{}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

// TestCompose loads docker-compose.yml with the compose loader and holds it
// against the services, the Dockerfile and itself.
func TestCompose(t *testing.T) {
	d, programs := readDockerfile(t)
	entrypoints := checkDockerfile(&recorder{}, d, programs) // TestDockerfile reports its problems
	checkCompose(t, loadCompose(t), entrypoints)
}

func composeEnv(s types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			env[k] = *v
		} else {
			env[k] = ""
		}
	}
	return env
}

func checkCompose(r reporter, p *types.Project, entrypoints map[string][]string) {
	get := func(name string) (types.ServiceConfig, bool) {
		s, ok := p.Services[name]
		if !ok {
			r.Errorf("compose: no service %s", name)
		}
		return s, ok
	}
	// PostgreSQL: 13 or later (xid8, pg_current_xact_id), data on a volume.
	pg, ok := get("postgres")
	if ok {
		_, tag, _ := strings.Cut(pg.Image, ":")
		major, _, _ := strings.Cut(tag, ".")
		if n, err := strconv.Atoi(strings.Split(major, "-")[0]); err != nil || n < 13 {
			r.Errorf("compose postgres: image %q, want postgres:13 or later (the feeder's transaction horizon needs xid8)", pg.Image)
		}
		checkNamedVolume(r, p, "postgres", pg, "/var/lib/postgresql/data")
	}
	// NATS: JetStream, its store on a named volume, monitored.
	natsPort := 4222
	if _, ok := get("nats"); ok {
		natsPort = checkNATSService(r, p, "nats")
	}
	for _, name := range []string{"postgres", "nats"} {
		if s, ok := p.Services[name]; ok && (s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0) {
			r.Errorf("compose %s: no health check; the services wait for it to be healthy", name)
		}
	}

	for _, name := range []string{"feeder", "projector", "emitter", "demo"} {
		s, ok := get(name)
		if !ok {
			continue
		}
		if s.Build == nil || s.Build.Target != name || entrypoints[name] == nil {
			r.Errorf("compose %s: build %+v, want the Dockerfile's target %q", name, s.Build, name)
		}
		if image, _, _ := strings.Cut(s.Image, ":"); image != "jetproj/"+name {
			r.Errorf("compose %s: image %q, want jetproj/%s", name, s.Image, name)
		}
		env := composeEnv(s)
		checkVars(r, name, "compose", env)
		opsAddr, err := services[name].load(env)
		if err != nil {
			r.Errorf("compose %s: the program would refuse this configuration at start: %v", name, err)
		}
		if u, err := url.Parse(env["DATABASE_URL"]); err != nil || u.Hostname() != "postgres" {
			r.Errorf("compose %s: DATABASE_URL %q does not name service postgres", name, env["DATABASE_URL"])
		} else if pg.Environment != nil {
			pw, _ := u.User.Password()
			pe := composeEnv(pg)
			if u.User.Username() != pe["POSTGRES_USER"] || pw != pe["POSTGRES_PASSWORD"] || strings.TrimPrefix(u.Path, "/") != pe["POSTGRES_DB"] || cmp(u.Port(), "5432") != "5432" {
				r.Errorf("compose %s: DATABASE_URL %q does not match the postgres service's user, password, database and port", name, env["DATABASE_URL"])
			}
		}
		if !slices.Contains([]string{"unless-stopped", "always", "on-failure"}, s.Restart) {
			r.Errorf("compose %s: restart %q, want unless-stopped", name, s.Restart)
		}
		needs := []string{"postgres"}
		if name != "demo" {
			needs = append(needs, "nats")
			// One URL, or one per node of a NATS cluster (docker-compose.cluster.yml).
			for _, raw := range strings.Split(env["NATS_URL"], ",") {
				u, err := url.Parse(strings.TrimSpace(raw))
				if err != nil || !isNATSService(p, u.Hostname()) || cmp(u.Port(), "4222") != strconv.Itoa(natsPort) {
					r.Errorf("compose %s: NATS_URL %q, want nats://nats:%d (or every node of the cluster)", name, env["NATS_URL"], natsPort)
					break
				}
			}
			// No shell in the image: the program is its own health check.
			want := append([]string{"CMD"}, append(slices.Clone(entrypoints[name]), "healthcheck")...)
			if s.HealthCheck == nil || !slices.Equal(s.HealthCheck.Test, want) {
				var got []string
				if s.HealthCheck != nil {
					got = s.HealthCheck.Test
				}
				r.Errorf("compose %s: health check %v, want %v (the image has no shell or wget)", name, got, want)
			}
			if _, port, splitErr := net.SplitHostPort(opsAddr); err == nil && (splitErr != nil || port == "0") {
				r.Errorf("compose %s: OPS_ADDR %q: the health check needs the operations endpoint on a fixed port", name, opsAddr)
			}
		}
		for _, dep := range needs {
			if c, ok := s.DependsOn[dep]; !ok || c.Condition != types.ServiceConditionHealthy {
				r.Errorf("compose %s: must wait for %s to be healthy (depends_on condition service_healthy)", name, dep)
			}
		}
		for dep, c := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				r.Errorf("compose %s: depends on unknown service %s", name, dep)
			} else if c.Condition == types.ServiceConditionHealthy && target.HealthCheck == nil {
				r.Errorf("compose %s: waits for %s to be healthy, which has no health check", name, dep)
			}
		}
	}
	if s, ok := p.Services["demo"]; ok && !slices.Equal([]string(s.Command), []string{"write"}) {
		r.Errorf("compose demo: command %v, want [write] (append example events forever)", s.Command)
	}
	if s, ok := p.Services["projector"]; ok {
		if s.Deploy == nil || s.Deploy.Replicas == nil || *s.Deploy.Replicas != 2 {
			r.Errorf("compose projector: want deploy.replicas: 2")
		}
		if s.ContainerName != "" || slices.ContainsFunc(s.Ports, func(p types.ServicePortConfig) bool { return p.Published != "" && !strings.Contains(p.Published, "-") }) {
			r.Errorf("compose projector: a container name or a fixed published port allows one replica only")
		}
	}
}

// isNATSService reports whether the project has a NATS server service of
// that name.
func isNATSService(p *types.Project, name string) bool {
	s, ok := p.Services[name]
	image, _, _ := strings.Cut(s.Image, ":")
	return ok && image == "nats"
}

// natsFlag returns the value after the first of names in a nats-server
// command line; empty if absent.
func natsFlag(cmd []string, names ...string) string {
	for i, a := range cmd {
		if slices.Contains(names, a) && i+1 < len(cmd) {
			return cmd[i+1]
		}
	}
	return ""
}

// checkNATSService holds a NATS service to what the stack needs:
// JetStream, its store on a named volume, a health check on its monitoring
// port. It returns the client port.
func checkNATSService(r reporter, p *types.Project, name string) int {
	nats := p.Services[name]
	port := 4222
	where := "compose " + name
	checkNATSImage(r, where, nats.Image)
	cmd := []string(nats.Command)
	if !slices.Contains(cmd, "-js") && !slices.Contains(cmd, "--jetstream") {
		r.Errorf("%s: command %v without -js", where, cmd)
	}
	if sd := natsFlag(cmd, "-sd", "--store_dir"); sd == "" {
		r.Errorf("%s: no store directory (-sd): JetStream would keep its data in the container", where)
	} else {
		checkNamedVolume(r, p, name, nats, sd)
	}
	if v := natsFlag(cmd, "-p", "--port"); v != "" {
		port, _ = strconv.Atoi(v)
	}
	if m := natsFlag(cmd, "-m", "--http_port"); m == "" || nats.HealthCheck == nil || !strings.Contains(strings.Join(nats.HealthCheck.Test, " "), ":"+m+"/healthz") {
		r.Errorf("%s: the health check must GET /healthz on the monitoring port (-m %s)", where, m)
	}
	return port
}

// checkNamedVolume: dir of service s is a named volume of the project.
func checkNamedVolume(r reporter, p *types.Project, name string, s types.ServiceConfig, dir string) {
	for _, v := range s.Volumes {
		if v.Target == dir {
			if _, ok := p.Volumes[v.Source]; v.Type != types.VolumeTypeVolume || !ok {
				r.Errorf("compose %s: %s is on %s %q, want a named volume declared under volumes:", name, dir, v.Type, v.Source)
			}
			return
		}
	}
	r.Errorf("compose %s: %s is not on a volume: its data would not survive the container", name, dir)
}

// TestHealthcheckCommand: `<program> healthcheck`, the compose health check
// of each service, exits 0 when its /readyz answers 200, 1 when it does not.
func TestHealthcheckCommand(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != opsserver.ReadyPath {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	for _, name := range []string{"feeder", "projector", "emitter"} {
		status = http.StatusOK
		if code := services[name].healthcheck(map[string]string{"OPS_ADDR": addr}); code != 0 {
			t.Errorf("%s healthcheck: exit %d with /readyz answering 200, want 0", name, code)
		}
		status = http.StatusServiceUnavailable
		if code := services[name].healthcheck(map[string]string{"OPS_ADDR": addr}); code != 1 {
			t.Errorf("%s healthcheck: exit %d with /readyz answering 503, want 1", name, code)
		}
	}
}
