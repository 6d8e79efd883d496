package k8s_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/jetproj/jetproj/pkg/config"
	"github.com/jetproj/jetproj/pkg/demo"
	"github.com/jetproj/jetproj/pkg/emittersvc"
	"github.com/jetproj/jetproj/pkg/feedersvc"
	"github.com/jetproj/jetproj/pkg/opsserver"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// serviceVars are the variables each service reads.
var serviceVars = map[string][]string{
	"feeder":    varNames(feedersvc.Config{}),
	"projector": varNames(projectorsvc.Config{}),
	"emitter":   varNames(emittersvc.Config{}),
	"demo":      varNames(demo.WriterConfig{}),
}

func varNames(v any) []string {
	vars, err := config.Vars(v)
	if err != nil {
		panic(err)
	}
	var out []string
	for _, x := range vars {
		out = append(out, x.Key)
	}
	return out
}

// strict decodes one manifest into v, refusing unknown fields.
func strict(t *testing.T, doc []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
}

// Minimal shapes of the custom resources, decoded strictly too.
type prometheusRule struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
	Spec       struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

type scaledObject struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
	Spec       struct {
		ScaleTargetRef struct {
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount int `json:"minReplicaCount"`
		MaxReplicaCount int `json:"maxReplicaCount"`
		CooldownPeriod  int `json:"cooldownPeriod"`
		Triggers        []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// overlay is a built overlay, decoded.
type overlay struct {
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	rules        []*prometheusRule
	scalers      []*scaledObject
}

func build(t *testing.T, dir string) *overlay {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	o := &overlay{deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, services: map[string]*corev1.Service{}}
	for _, r := range m.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			strict(t, doc, &d)
			o.deployments[d.Name] = &d
		case "StatefulSet":
			var s appsv1.StatefulSet
			strict(t, doc, &s)
			o.statefulSets[s.Name] = &s
		case "ConfigMap":
			var c corev1.ConfigMap
			strict(t, doc, &c)
			o.configMaps[c.Name] = &c
		case "Secret":
			var s corev1.Secret
			strict(t, doc, &s)
			o.secrets[s.Name] = &s
		case "Service":
			var s corev1.Service
			strict(t, doc, &s)
			o.services[s.Name] = &s
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			strict(t, doc, &p)
			o.pdbs = append(o.pdbs, &p)
		case "NetworkPolicy":
			var p networkingv1.NetworkPolicy
			strict(t, doc, &p)
			o.policies = append(o.policies, &p)
		case "PrometheusRule":
			var p prometheusRule
			strict(t, doc, &p)
			o.rules = append(o.rules, &p)
		case "ScaledObject":
			var s scaledObject
			strict(t, doc, &s)
			o.scalers = append(o.scalers, &s)
		default:
			t.Errorf("%s %s: a kind the tests do not check", r.GetKind(), r.GetName())
		}
	}
	return o
}

func TestOverlays(t *testing.T) {
	for _, name := range []string{"dev", "prod"} {
		t.Run(name, func(t *testing.T) {
			o := build(t, filepath.Join("overlays", name))
			checkServices(t, o)
			checkNATS(t, o)
			checkPolicies(t, o)
			checkMonitoring(t, o)
		})
	}
}

// selects reports whether selector matches labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkServices(t *testing.T, o *overlay) {
	for _, svc := range []string{"feeder", "projector", "emitter"} {
		d, ok := o.deployments[svc]
		if !ok {
			t.Errorf("no Deployment %s", svc)
			continue
		}
		pod := d.Spec.Template
		if !selects(d.Spec.Selector.MatchLabels, pod.Labels) {
			t.Errorf("%s: selector %v does not select its pods %v", svc, d.Spec.Selector.MatchLabels, pod.Labels)
		}
		if pod.Labels["app.kubernetes.io/part-of"] != "jetproj" {
			t.Errorf("%s: pods lack app.kubernetes.io/part-of=jetproj (the network policy selects it)", svc)
		}
		if sc := pod.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext must run as non-root with the RuntimeDefault seccomp profile", svc)
		}
		if len(pod.Spec.Containers) != 1 {
			t.Fatalf("%s: %d containers", svc, len(pod.Spec.Containers))
		}
		c := pod.Spec.Containers[0]
		if !strings.HasPrefix(c.Image, "jetproj/"+svc+":") {
			t.Errorf("%s: image %q, want jetproj/%s:<tag>", svc, c.Image, svc)
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: container securityContext must have a read-only root, no privilege escalation, every capability dropped", svc)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: cpu and memory requests and a memory limit are required", svc)
		}
		// Probes on the endpoint the service serves.
		ports := map[string]int32{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			want := map[string]string{"liveness": opsserver.HealthPath, "readiness": opsserver.ReadyPath}[what]
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", svc, what)
				continue
			}
			port := p.HTTPGet.Port.IntVal
			if p.HTTPGet.Port.StrVal != "" {
				port = ports[p.HTTPGet.Port.StrVal]
			}
			if p.HTTPGet.Path != want || port != opsserver.DefaultPort {
				t.Errorf("%s: %s probe %s on port %d, the service serves %s on %d", svc, what, p.HTTPGet.Path, port, want, opsserver.DefaultPort)
			}
		}
		// Every variable set is one the service reads.
		known := serviceVars[svc]
		set := map[string]string{}
		for _, e := range c.Env {
			set[e.Name] = "env"
		}
		for _, from := range c.EnvFrom {
			switch {
			case from.ConfigMapRef != nil:
				cm, ok := o.configMaps[from.ConfigMapRef.Name]
				if !ok {
					t.Errorf("%s: envFrom ConfigMap %s does not exist", svc, from.ConfigMapRef.Name)
					continue
				}
				for k := range cm.Data {
					set[k] = "ConfigMap " + cm.Name
				}
			case from.SecretRef != nil:
				s, ok := o.secrets[from.SecretRef.Name]
				if !ok {
					t.Errorf("%s: envFrom Secret %s does not exist", svc, from.SecretRef.Name)
					continue
				}
				for k := range s.StringData {
					set[k] = "Secret " + s.Name
				}
				for k := range s.Data {
					set[k] = "Secret " + s.Name
				}
			}
		}
		for k, where := range set {
			if slices.Contains(known, k) {
				continue
			}
			// A shared ConfigMap may hold another service's variables; the
			// service ignores prefixes it does not own.
			if strings.HasPrefix(where, "ConfigMap") && ownedByAnother(svc, k) {
				continue
			}
			t.Errorf("%s: %s sets %s, which the service does not read", svc, where, k)
		}
		for _, required := range []string{"DATABASE_URL", "NATS_URL"} {
			if _, ok := set[required]; !ok {
				t.Errorf("%s: %s not set", svc, required)
			}
		}
		// Mounted files the configuration points at.
		if path := o.configMaps["jetproj-config"].Data["NATS_CREDS"]; path != "" {
			mounted := false
			for _, m := range c.VolumeMounts {
				if strings.HasPrefix(path, m.MountPath+"/") {
					mounted = true
				}
			}
			if !mounted {
				t.Errorf("%s: NATS_CREDS %s is not under a mounted volume", svc, path)
			}
		}
	}
	// The projector: a disruption budget and spread over nodes.
	p := o.deployments["projector"]
	budgeted := false
	for _, b := range o.pdbs {
		if selects(b.Spec.Selector.MatchLabels, p.Spec.Template.Labels) {
			budgeted = true
		}
	}
	if !budgeted {
		t.Error("no PodDisruptionBudget selects the projector's pods")
	}
	spread := p.Spec.Template.Spec.TopologySpreadConstraints
	if len(spread) == 0 || !selects(spread[0].LabelSelector.MatchLabels, p.Spec.Template.Labels) {
		t.Error("the projector's pods are not spread over nodes")
	}
	if f := o.deployments["feeder"]; f.Spec.Replicas == nil {
		t.Error("feeder: replicas unset")
	}
}

// ownedByAnother reports whether k is a variable of another jetproj
// service, with a prefix svc does not check.
func ownedByAnother(svc, k string) bool {
	for other, vars := range serviceVars {
		if other != svc && slices.Contains(vars, k) {
			return true
		}
	}
	return false
}

func checkNATS(t *testing.T, o *overlay) {
	s, ok := o.statefulSets["nats"]
	if !ok {
		t.Fatal("no NATS StatefulSet")
	}
	if s.Spec.Replicas == nil || *s.Spec.Replicas != 3 {
		t.Error("NATS: want a 3-node cluster")
	}
	if len(s.Spec.VolumeClaimTemplates) == 0 {
		t.Error("NATS: JetStream needs persistent volumes")
	}
	conf := o.configMaps["nats-config"].Data["nats.conf"]
	for i := range 3 {
		if !strings.Contains(conf, fmt.Sprintf("nats-%d.%s", i, s.Spec.ServiceName)) {
			t.Errorf("NATS config does not route to nats-%d.%s", i, s.Spec.ServiceName)
		}
	}
	if !strings.Contains(conf, "jetstream") {
		t.Error("NATS config without JetStream")
	}
	svc, ok := o.services["nats"]
	if !ok || !selects(svc.Spec.Selector, s.Spec.Template.Labels) {
		t.Error("Service nats does not select the NATS pods")
	}
	if url := o.configMaps["jetproj-config"].Data["NATS_URL"]; !strings.Contains(url, "//nats:4222") {
		t.Errorf("NATS_URL %q does not name Service nats", url)
	}
}

func checkPolicies(t *testing.T, o *overlay) {
	if len(o.policies) == 0 {
		t.Fatal("no NetworkPolicy")
	}
	for _, svc := range []string{"feeder", "projector", "emitter"} {
		covered := false
		for _, p := range o.policies {
			if selects(p.Spec.PodSelector.MatchLabels, o.deployments[svc].Spec.Template.Labels) {
				covered = true
				for _, in := range p.Spec.Ingress {
					for _, port := range in.Ports {
						if port.Port.IntVal != opsserver.DefaultPort {
							t.Errorf("%s: ingress on port %v, only the operations port is served", p.Name, port.Port)
						}
					}
				}
			}
		}
		if !covered {
			t.Errorf("no NetworkPolicy selects %s", svc)
		}
	}
}

// metricName finds jetproj metric names in PromQL.
var metricName = regexp.MustCompile(`jetproj_[a-z_]+`)

// exported lists the jetproj metric names the code registers.
func exported(t *testing.T) []string {
	t.Helper()
	var names []string
	root := filepath.Join("..", "..", "pkg")
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range regexp.MustCompile(`Name: *"(jetproj_[a-z_]+)"`).FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func checkMonitoring(t *testing.T, o *overlay) {
	known := exported(t)
	if len(known) < 5 {
		t.Fatalf("found only %d metric names in pkg: %v", len(known), known)
	}
	var exprs []string
	alerts := map[string]bool{}
	for _, r := range o.rules {
		for _, g := range r.Spec.Groups {
			for _, rule := range g.Rules {
				exprs = append(exprs, rule.Expr)
				alerts[rule.Alert] = true
			}
		}
	}
	for _, want := range []string{"JetprojProjectionLagGrowing", "JetprojPartitionParked", "JetprojFeederNoLeaseHolder"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
	if len(o.scalers) != 1 || o.scalers[0].Spec.ScaleTargetRef.Name != "projector" {
		t.Fatalf("want one ScaledObject scaling the projector")
	}
	if _, ok := o.deployments[o.scalers[0].Spec.ScaleTargetRef.Name]; !ok {
		t.Error("the ScaledObject's target is not a Deployment")
	}
	for _, tr := range o.scalers[0].Spec.Triggers {
		exprs = append(exprs, tr.Metadata["query"])
	}
	for _, e := range exprs {
		names := metricName.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("%q uses no jetproj metric", e)
		}
		for _, n := range names {
			if !slices.Contains(known, n) {
				t.Errorf("%q uses %s, which no service exports", e, n)
			}
		}
	}
}

// TestCompose decodes docker-compose.yml with the compose loader and holds it
// against the services.
func TestCompose(t *testing.T) {
	ctx := context.Background()
	opts, err := cli.NewProjectOptions([]string{filepath.Join("..", "..", "docker-compose.yml")}, cli.WithName("jetproj"), cli.WithResolvedPaths(false))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	want := []string{"postgres", "nats", "feeder", "projector", "emitter", "demo"}
	for _, name := range want {
		if _, err := p.GetService(name); err != nil {
			t.Errorf("compose: %v", err)
		}
	}
	nats, _ := p.GetService("nats")
	if !slices.Contains(nats.Command, "-js") || len(nats.Volumes) == 0 {
		t.Error("compose: NATS needs JetStream (-js) on a persisted volume")
	}
	for name, vars := range serviceVars {
		s, err := p.GetService(name)
		if err != nil {
			continue
		}
		if s.Build == nil || s.Build.Target != name {
			t.Errorf("compose %s: build target %v, want the Dockerfile's %q", name, s.Build, name)
		}
		for k := range s.Environment {
			if !slices.Contains(vars, k) {
				t.Errorf("compose %s: sets %s, which the service does not read", name, k)
			}
		}
		if name == "demo" {
			continue
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) < 3 || s.HealthCheck.Test[len(s.HealthCheck.Test)-1] != "healthcheck" {
			t.Errorf("compose %s: health check must run the binary's healthcheck command, got %v", name, s.HealthCheck)
		}
		for dep, cond := range s.DependsOn {
			if cond.Condition != types.ServiceConditionHealthy {
				t.Errorf("compose %s: depends on %s without waiting for it to be healthy", name, dep)
			}
		}
	}
	proj, _ := p.GetService("projector")
	if proj.Deploy == nil || proj.Deploy.Replicas == nil || *proj.Deploy.Replicas != 2 {
		t.Error("compose: want 2 projector replicas")
	}
	for _, name := range []string{"postgres", "nats"} {
		if s, _ := p.GetService(name); s.HealthCheck == nil {
			t.Errorf("compose %s: no health check", name)
		}
	}
}

// TestDockerfile checks the targets: one per service with a main package,
// static, non-root, on a minimal base.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("CGO_ENABLED=0")) {
		t.Error("Dockerfile: binaries must be static (CGO_ENABLED=0)")
	}
	targets := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^FROM (\S+) AS (\S+)$`).FindAllSubmatch(b, -1) {
		targets[string(m[2])] = true
	}
	if !regexp.MustCompile(`(?m)^FROM gcr\.io/distroless/static[^ ]*:nonroot AS base$`).Match(b) {
		t.Error("Dockerfile: the runtime base must be distroless static, nonroot")
	}
	if !regexp.MustCompile(`(?m)^USER 65532:65532$`).Match(b) {
		t.Error("Dockerfile: USER must be the non-root 65532")
	}
	entries, err := os.ReadDir(filepath.Join("..", "..", "services"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !targets[e.Name()] {
			t.Errorf("Dockerfile: no target for services/%s", e.Name())
		}
		if !bytes.Contains(b, []byte("./services/"+e.Name())) {
			t.Errorf("Dockerfile: services/%s is not built", e.Name())
		}
	}
}
