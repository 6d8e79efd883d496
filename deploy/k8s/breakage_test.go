package k8s_test

import (
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	corev1 "k8s.io/api/core/v1"
)

// TestChecksCatchBreakage breaks the manifests one way at a time, in
// memory, and requires the checks to say so: a check that cannot fail
// proves nothing.
func TestChecksCatchBreakage(t *testing.T) {
	registered, err := registeredMetrics()
	if err != nil {
		t.Fatal(err)
	}
	container := func(o *overlay, svc string) *corev1.Container {
		return &o.deployments[svc].Spec.Template.Spec.Containers[0]
	}
	natsContainer := func(o *overlay) *corev1.Container {
		return &o.statefulSets["nats"].Spec.Template.Spec.Containers[0]
	}
	overlayCases := []struct {
		name   string
		break_ func(o *overlay)
		want   string
	}{
		{"unknown variable in a ConfigMap", func(o *overlay) { o.configMaps["jetproj-projector"].Data["PROJECTOR_LEASE_TIME"] = "6s" }, "does not declare"},
		{"another service's variable", func(o *overlay) { o.configMaps["jetproj-feeder"].Data["EMITTER_BATCH_SIZE"] = "10" }, "EMITTER_BATCH_SIZE"},
		{"invalid value", func(o *overlay) { o.configMaps["jetproj-projector"].Data["PROJECTOR_STORE_REPLICAS"] = "2" }, "PROJECTOR_STORE_REPLICAS"},
		{"unknown variable in env", func(o *overlay) {
			c := container(o, "emitter")
			c.Env = append(c.Env, corev1.EnvVar{Name: "EMITTER_REPLICAS", Value: "2"})
		}, "EMITTER_REPLICAS"},
		{"DATABASE_URL missing", func(o *overlay) { delete(o.secrets["jetproj-database"].StringData, "DATABASE_URL") }, "DATABASE_URL"},
		{"envFrom a missing ConfigMap", func(o *overlay) { delete(o.configMaps, "jetproj-emitter") }, "does not exist"},
		{"credentials file not mounted", func(o *overlay) { container(o, "feeder").VolumeMounts = nil }, "NATS_CREDS"},
		{"credentials file missing from its Secret", func(o *overlay) {
			o.secrets["jetproj-nats-projector"].StringData = map[string]string{"other.creds": "x"}
		}, "NATS_CREDS"},
		{"liveness probe path", func(o *overlay) { container(o, "feeder").LivenessProbe.HTTPGet.Path = "/health" }, "liveness probe"},
		{"readiness probe port", func(o *overlay) {
			p := &container(o, "projector").ReadinessProbe.HTTPGet.Port
			p.Type, p.IntVal, p.StrVal = 0, 9090, "" // intstr.Int
		}, "readiness probe"},
		{"OPS_ADDR elsewhere", func(o *overlay) { o.configMaps["jetproj-config"].Data["OPS_ADDR"] = ":9090" }, "OPS_ADDR"},
		{"runs as root", func(o *overlay) { o.deployments["emitter"].Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil }, "runAsNonRoot"},
		{"writable root filesystem", func(o *overlay) { container(o, "projector").SecurityContext.ReadOnlyRootFilesystem = nil }, "readOnlyRootFilesystem"},
		{"capability added", func(o *overlay) {
			container(o, "feeder").SecurityContext.Capabilities.Add = []corev1.Capability{"NET_ADMIN"}
		}, "capabilities"},
		{"no memory limit", func(o *overlay) { delete(container(o, "emitter").Resources.Limits, corev1.ResourceMemory) }, "memory limit"},
		{"projector limit below the memory goal", func(o *overlay) {
			limits := container(o, "projector").Resources.Limits
			q := limits[corev1.ResourceMemory]
			q.Set(300 << 20)
			limits[corev1.ResourceMemory] = q
		}, "GOMEMLIMIT"},
		{"image latest", func(o *overlay) { container(o, "feeder").Image = "jetproj/feeder:latest" }, "pinned tag"},
		{"selector misses the pods", func(o *overlay) {
			o.deployments["emitter"].Spec.Selector.MatchLabels["app.kubernetes.io/name"] = "emiter"
		}, "selector"},
		{"PDB selects nothing", func(o *overlay) {
			for _, b := range o.pdbs {
				if b.Name == "projector" {
					b.Spec.Selector.MatchLabels = map[string]string{"app": "projector"}
				}
			}
		}, "PodDisruptionBudgets"},
		{"no spread", func(o *overlay) { o.deployments["projector"].Spec.Template.Spec.TopologySpreadConstraints = nil }, "topologySpreadConstraint"},
		{"one feeder", func(o *overlay) { one := int32(1); o.deployments["feeder"].Spec.Replicas = &one }, "standby"},
		{"Service selects nothing", func(o *overlay) { o.services["nats"].Spec.Selector = map[string]string{"app": "nats"} }, "selects no pods"},
		{"NetworkPolicy selects nothing", func(o *overlay) { o.policies[0].Spec.PodSelector.MatchLabels = map[string]string{"app": "jetproj"} }, "no NetworkPolicy"},
		{"ingress on another port", func(o *overlay) { o.policies[0].Spec.Ingress[0].Ports[0].Port.IntVal = 9090 }, "ingress on port"},
		{"no egress to PostgreSQL", func(o *overlay) { o.policies[0].Spec.Egress[0].Ports = o.policies[0].Spec.Egress[0].Ports[:1] }, "TCP/5432"},
		{"alert on an unknown metric", func(o *overlay) {
			o.rules[0].Spec.Groups[0].Rules[0].Expr = "max by (projection) (jetproj_projector_lag_messages) > 1000"
		}, "jetproj_projector_lag_messages"},
		{"alert removed", func(o *overlay) { o.rules[0].Spec.Groups[0].Rules = o.rules[0].Spec.Groups[0].Rules[1:] }, "no alert JetprojProjectionLagGrowing"},
		{"unbalanced query", func(o *overlay) { o.scalers[0].Spec.Triggers[0].Metadata["query"] = "max(jetproj_projector_lag" }, "unbalanced"},
		{"scaler on an unknown metric", func(o *overlay) { o.scalers[0].Spec.Triggers[0].Metadata["query"] = "sum(jetproj_lag)" }, "jetproj_lag"},
		{"scaler and replicas", func(o *overlay) { n := int32(3); o.deployments["projector"].Spec.Replicas = &n }, "every apply would reset"},
		{"scaler on the feeder", func(o *overlay) { o.scalers[0].Spec.ScaleTargetRef.Name = "feeder" }, "only the projector"},
		{"NATS of two", func(o *overlay) { n := int32(2); o.statefulSets["nats"].Spec.Replicas = &n }, "quorum"},
		{"NATS route missing", func(o *overlay) {
			c := o.configMaps["nats-config"]
			c.Data["nats.conf"] = strings.Replace(c.Data["nats.conf"], "nats://nats-2.nats-headless:6222", "", 1)
		}, "no route to nats-2"},
		{"NATS without JetStream", func(o *overlay) {
			c := o.configMaps["nats-config"]
			c.Data["nats.conf"] = strings.Replace(c.Data["nats.conf"], "jetstream {", "jetstream_off {", 1)
		}, "nats-server refuses"},
		{"NATS store not persisted", func(o *overlay) { o.statefulSets["nats"].Spec.VolumeClaimTemplates = nil }, "store_dir"},
		{"NATS without authentication", func(o *overlay) {
			o.secrets["nats-auth"].StringData["auth.conf"] = "# none\n"
		}, "do not authenticate"},
		{"NATS image version", func(o *overlay) { natsContainer(o).Image = "nats:2.9-alpine" }, "go.mod"},
		{"NATS_URL names no Service", func(o *overlay) { o.configMaps["jetproj-config"].Data["NATS_URL"] = "nats://nats-client:4222" }, "NATS_URL"},
		{"more stream replicas than servers", func(o *overlay) { o.configMaps["jetproj-feeder"].Data["FEEDER_STREAM_REPLICAS"] = "5" }, "NATS servers"},
	}
	for _, c := range overlayCases {
		t.Run(c.name, func(t *testing.T) {
			o, err := build("overlays/prod")
			if err != nil {
				t.Fatal(err)
			}
			var clean recorder
			checkOverlay(&clean, o, registered)
			if len(clean.errs) > 0 {
				t.Fatalf("prod fails before breaking it: %v", clean.errs)
			}
			c.break_(o)
			var rec recorder
			checkOverlay(&rec, o, registered)
			expectCaught(t, rec.errs, c.want)
		})
	}

	d, programs := readDockerfile(t)
	entrypoints := checkDockerfile(&recorder{}, d, programs)
	composeCases := []struct {
		name   string
		break_ func(p *types.Project)
		want   string
	}{
		{"one projector", func(p *types.Project) { n := 1; p.Services["projector"].Deploy.Replicas = &n }, "replicas: 2"},
		{"unknown variable", func(p *types.Project) { setEnv(p, "feeder", "FEEDER_LEASE", "6s") }, "FEEDER_LEASE"},
		{"invalid value", func(p *types.Project) { setEnv(p, "demo", "DEMO_RATE", "0") }, "DEMO_RATE"},
		{"healthcheck with wget", func(p *types.Project) {
			s := p.Services["emitter"]
			s.HealthCheck.Test = types.HealthCheckTest{"CMD", "wget", "-q", "http://127.0.0.1:8080/readyz"}
			p.Services["emitter"] = s
		}, "health check"},
		{"not waiting for NATS", func(p *types.Project) {
			s := p.Services["projector"]
			s.DependsOn["nats"] = types.ServiceDependency{Condition: types.ServiceConditionStarted}
			p.Services["projector"] = s
		}, "healthy"},
		{"NATS store in the container", func(p *types.Project) {
			s := p.Services["nats"]
			s.Volumes = nil
			p.Services["nats"] = s
		}, "not on a volume"},
		{"NATS without JetStream", func(p *types.Project) {
			s := p.Services["nats"]
			s.Command = types.ShellCommand{"-m", "8222"}
			p.Services["nats"] = s
		}, "-js"},
		{"no restart", func(p *types.Project) {
			s := p.Services["feeder"]
			s.Restart = ""
			p.Services["feeder"] = s
		}, "restart"},
		{"wrong password", func(p *types.Project) {
			setEnv(p, "emitter", "DATABASE_URL", "postgres://jetproj:secret@postgres:5432/jetproj?sslmode=disable")
		}, "DATABASE_URL"},
		{"wrong target", func(p *types.Project) { p.Services["demo"].Build.Target = "feeder" }, "target"},
	}
	for _, c := range composeCases {
		t.Run("compose "+c.name, func(t *testing.T) {
			p := loadCompose(t)
			var clean recorder
			checkCompose(&clean, p, entrypoints)
			if len(clean.errs) > 0 {
				t.Fatalf("docker-compose.yml fails before breaking it: %v", clean.errs)
			}
			c.break_(p)
			var rec recorder
			checkCompose(&rec, p, entrypoints)
			expectCaught(t, rec.errs, c.want)
		})
	}

	dockerCases := []struct{ name, from, to, want string }{
		{"cgo", "CGO_ENABLED=0 ", "", "CGO_ENABLED=0"},
		{"root", "USER 65532:65532", "USER root", "non-root"},
		{"no demo target", "AS demo", "AS demo-writer", "no target demo"},
		{"emitter not built", "./services/emitter ", "", "does not build ./services/emitter"},
		{"base with a shell", "gcr.io/distroless/static-debian12:nonroot", "debian:12", "distroless"},
		{"old Go", "GO_VERSION=1.26", "GO_VERSION=1.22", "go.mod's go version"},
		{"wrong binary", "COPY --from=build /out/projector", "COPY --from=build /out/feeder", "ENTRYPOINT"},
		{"workspace build", "ENV GOWORK=off", "", "GOWORK=off"},
	}
	for _, c := range dockerCases {
		t.Run("Dockerfile "+c.name, func(t *testing.T) {
			b, err := readFile(repoRoot, "Dockerfile")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b, c.from) {
				t.Fatalf("Dockerfile has no %q to break", c.from)
			}
			d, err := parseDockerfile([]byte(strings.Replace(b, c.from, c.to, 1)))
			if err != nil {
				t.Fatal(err)
			}
			var rec recorder
			checkDockerfile(&rec, d, programs)
			expectCaught(t, rec.errs, c.want)
		})
	}
}

func expectCaught(t *testing.T, errs []string, want string) {
	t.Helper()
	for _, e := range errs {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Errorf("the checks did not catch it: want a problem mentioning %q, got %d:\n%s", want, len(errs), strings.Join(errs, "\n"))
}

func setEnv(p *types.Project, service, k, v string) {
	s := p.Services[service]
	s.Environment[k] = &v
	p.Services[service] = s
}
