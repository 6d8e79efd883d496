package k8s_test

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/process"
)

// Minimal shapes of the custom resources, decoded strictly too: a field
// the shapes do not know fails the test (add it here, checked, if needed).
type prometheusRule struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Metadata   objectMeta         `json:"metadata"`
	Spec       prometheusRuleSpec `json:"spec"`
}

type objectMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
}

type prometheusRuleSpec struct {
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
}

type scaledObject struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval int32  `json:"pollingInterval"`
		CooldownPeriod  int32  `json:"cooldownPeriod"`
		Fallback        *struct {
			FailureThreshold int32 `json:"failureThreshold"`
			Replicas         int32 `json:"replicas"`
		} `json:"fallback"`
		Advanced *struct {
			HorizontalPodAutoscalerConfig struct {
				Behavior autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// overlay is a kustomize build, decoded.
type overlay struct {
	name         string
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	rules        []*prometheusRule
	scalers      []*scaledObject
}

// build runs kustomize on dir in the process, as `kubectl apply -k` would,
// and decodes every resource strictly into its API type.
func build(dir string) (*overlay, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	o := &overlay{name: filepath.Base(dir), deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, services: map[string]*corev1.Service{}}
	var problems []string
	for _, r := range m.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		var v any
		switch r.GetKind() {
		case "Deployment":
			d := &appsv1.Deployment{}
			o.deployments[r.GetName()], v = d, d
		case "StatefulSet":
			s := &appsv1.StatefulSet{}
			o.statefulSets[r.GetName()], v = s, s
		case "ConfigMap":
			c := &corev1.ConfigMap{}
			o.configMaps[r.GetName()], v = c, c
		case "Secret":
			s := &corev1.Secret{}
			o.secrets[r.GetName()], v = s, s
		case "Service":
			s := &corev1.Service{}
			o.services[r.GetName()], v = s, s
		case "PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			o.pdbs, v = append(o.pdbs, p), p
		case "NetworkPolicy":
			p := &networkingv1.NetworkPolicy{}
			o.policies, v = append(o.policies, p), p
		case "HorizontalPodAutoscaler":
			h := &autoscalingv2.HorizontalPodAutoscaler{}
			o.hpas, v = append(o.hpas, h), h
		case "PrometheusRule":
			p := &prometheusRule{}
			o.rules, v = append(o.rules, p), p
		case "ScaledObject":
			s := &scaledObject{}
			o.scalers, v = append(o.scalers, s), s
		default:
			problems = append(problems, fmt.Sprintf("%s %s: a kind the tests do not decode and check", r.GetKind(), r.GetName()))
			continue
		}
		if err := strictDecode(doc, v); err != nil {
			problems = append(problems, fmt.Sprintf("%s %s: %v\n%s", r.GetKind(), r.GetName(), err, doc))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s:\n%s", dir, strings.Join(problems, "\n"))
	}
	return o, nil
}

// The overlays, and a build of components/hpa (testdata/hpa).
var overlayDirs = []string{"overlays/dev", "overlays/prod", "testdata/hpa"}

func TestOverlays(t *testing.T) {
	registered, err := registeredMetrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range overlayDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			o, err := build(dir)
			if err != nil {
				t.Fatal(err)
			}
			checkOverlay(t, o, registered)
		})
	}
}

// checkOverlay runs every check on o.
func checkOverlay(r reporter, o *overlay, registered []string) {
	for _, svc := range jetprojServices {
		checkDeployment(r, o, svc)
	}
	checkAvailability(r, o)
	checkServiceSelectors(r, o)
	checkNetworkPolicy(r, o)
	checkNATS(r, o)
	checkMonitoring(r, o, registered)
	checkScaling(r, o, registered)
}

// containerEnv is the environment Kubernetes gives container c of pod:
// envFrom sources, then env (which wins), each reference resolved. where
// tells where each variable comes from.
func containerEnv(r reporter, o *overlay, owner string, c corev1.Container) (env, where map[string]string) {
	env, where = map[string]string{}, map[string]string{}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := o.configMaps[from.ConfigMapRef.Name]
			if !ok {
				r.Errorf("%s: envFrom ConfigMap %s does not exist", owner, from.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[from.Prefix+k], where[from.Prefix+k] = v, "ConfigMap "+cm.Name
			}
		case from.SecretRef != nil:
			s, ok := o.secrets[from.SecretRef.Name]
			if !ok {
				r.Errorf("%s: envFrom Secret %s does not exist", owner, from.SecretRef.Name)
				continue
			}
			for k, v := range secretData(s) {
				env[from.Prefix+k], where[from.Prefix+k] = v, "Secret "+s.Name
			}
		}
	}
	for _, e := range c.Env {
		where[e.Name] = "env"
		switch vf := e.ValueFrom; {
		case vf == nil:
			env[e.Name] = e.Value
		case vf.FieldRef != nil:
			env[e.Name] = owner + "-7f9c5d6b8-x2x4q" // what metadata.name looks like
		case vf.ConfigMapKeyRef != nil:
			v, ok := o.configMaps[vf.ConfigMapKeyRef.Name].Data[vf.ConfigMapKeyRef.Key]
			if !ok {
				r.Errorf("%s: %s: ConfigMap key %s/%s does not exist", owner, e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
			}
			env[e.Name] = v
		case vf.SecretKeyRef != nil:
			v, ok := secretData(o.secrets[vf.SecretKeyRef.Name])[vf.SecretKeyRef.Key]
			if !ok {
				r.Errorf("%s: %s: Secret key %s/%s does not exist", owner, e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			env[e.Name] = v
		default:
			r.Errorf("%s: %s: a valueFrom the tests do not resolve", owner, e.Name)
		}
	}
	return env, where
}

func secretData(s *corev1.Secret) map[string]string {
	out := map[string]string{}
	if s == nil {
		return out
	}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	for k, v := range s.StringData {
		out[k] = v
	}
	return out
}

// materialize writes the files that c's volume mounts show (ConfigMap and
// Secret keys, empty directories) under a new directory, the container's
// root, and returns it. transform may change a file's content.
func materialize(r reporter, o *overlay, owner string, pod corev1.PodSpec, c corev1.Container, transform func(volume, key, content string) string) string {
	root, err := os.MkdirTemp("", "jetproj-deploy-")
	if err != nil {
		r.Errorf("%v", err)
		return ""
	}
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			r.Errorf("%s: volume mount %s names no volume of the pod", owner, m.Name)
			continue
		}
		v := pod.Volumes[i]
		var files map[string]string
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			s, ok := o.secrets[v.Secret.SecretName]
			if !ok {
				r.Errorf("%s: volume %s: Secret %s does not exist", owner, v.Name, v.Secret.SecretName)
				continue
			}
			files, items = secretData(s), v.Secret.Items
		case v.ConfigMap != nil:
			cm, ok := o.configMaps[v.ConfigMap.Name]
			if !ok {
				r.Errorf("%s: volume %s: ConfigMap %s does not exist", owner, v.Name, v.ConfigMap.Name)
				continue
			}
			files, items = cm.Data, v.ConfigMap.Items
		}
		dir := filepath.Join(root, m.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			r.Errorf("%v", err)
			continue
		}
		for key, content := range files {
			name := key
			if len(items) > 0 {
				j := slices.IndexFunc(items, func(it corev1.KeyToPath) bool { return it.Key == key })
				if j < 0 {
					continue
				}
				name = items[j].Path
			}
			if transform != nil {
				content = transform(v.Name, key, content)
			}
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				r.Errorf("%v", err)
			}
		}
	}
	return root
}

// inRoot points absolute paths into root: a mounted file's path as the
// container sees it becomes its path in the materialized root.
func inRoot(root string, env map[string]string, mounts []corev1.VolumeMount) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
		for _, m := range mounts {
			if strings.HasPrefix(v, strings.TrimSuffix(m.MountPath, "/")+"/") {
				out[k] = filepath.Join(root, v)
			}
		}
	}
	return out
}

func checkDeployment(r reporter, o *overlay, svc string) {
	d, ok := o.deployments[svc]
	if !ok {
		r.Errorf("%s: no Deployment %s", o.name, svc)
		return
	}
	pod := d.Spec.Template
	if d.Spec.Selector == nil || !selects(d.Spec.Selector.MatchLabels, pod.Labels) {
		r.Errorf("%s: the Deployment's selector does not select its own pods %v", svc, pod.Labels)
	}
	if pod.Labels["app.kubernetes.io/name"] != svc || pod.Labels["app.kubernetes.io/part-of"] != "jetproj" {
		r.Errorf("%s: pods need app.kubernetes.io/name=%s and app.kubernetes.io/part-of=jetproj (selectors and the network policy use them), have %v", svc, svc, pod.Labels)
	}
	if a := pod.Spec.AutomountServiceAccountToken; a == nil || *a {
		r.Errorf("%s: automountServiceAccountToken must be false: the services never call the Kubernetes API", svc)
	}
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		r.Errorf("%s: want exactly one container, no init containers", svc)
		return
	}
	c := pod.Spec.Containers[0]
	if c.Name != svc {
		r.Errorf("%s: container named %q", svc, c.Name)
	}
	image, tag, _ := strings.Cut(c.Image, ":")
	if image != "jetproj/"+svc || tag == "" || tag == "latest" {
		r.Errorf("%s: image %q, want jetproj/%s with a pinned tag (the overlay's images: entry)", svc, c.Image, svc)
	}
	if len(c.Command) != 0 || (len(c.Args) > 0 && !slices.Equal(c.Args, []string{"run"})) {
		r.Errorf("%s: command %v args %v: the image's entrypoint with `run` is the service", svc, c.Command, c.Args)
	}
	checkPodSecurity(r, svc, pod.Spec, c)
	checkResources(r, svc, c)

	// The configuration, loaded as the service loads it.
	env, where := containerEnv(r, o, svc, c)
	for k := range env {
		if !slices.Contains(services[svc].vars, k) {
			r.Errorf("%s: %s sets %s, which the %s's configuration does not declare", svc, where[k], k, svc)
		}
	}
	for _, required := range []string{"DATABASE_URL", "NATS_URL"} {
		if env[required] == "" {
			r.Errorf("%s: %s is not set (an empty NATS_URL starts an embedded development server)", svc, required)
		}
	}
	root := materialize(r, o, svc, pod.Spec, c, nil)
	defer os.RemoveAll(root)
	opsAddr, loadErr := services[svc].load(inRoot(root, env, c.VolumeMounts))
	if loadErr != nil {
		r.Errorf("%s: the service would refuse this configuration at start: %v", svc, loadErr)
	}
	if creds := env["NATS_CREDS"]; creds != "" && !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return strings.HasPrefix(creds, m.MountPath+"/") && m.ReadOnly
	}) {
		r.Errorf("%s: NATS_CREDS %s is not in a read-only mounted volume", svc, creds)
	}

	// Probes on the operations endpoint the service serves.
	if _, port, err := net.SplitHostPort(opsAddr); loadErr == nil && (err != nil || port != strconv.Itoa(opsserver.DefaultPort)) {
		r.Errorf("%s: OPS_ADDR %q: the probes and the scrape annotations expect port %d", svc, opsAddr, opsserver.DefaultPort)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.ContainerPort == opsserver.DefaultPort }) {
		r.Errorf("%s: the container does not declare port %d", svc, opsserver.DefaultPort)
	}
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, opsserver.HealthPath},
		{"readiness", c.ReadinessProbe, opsserver.ReadyPath},
		{"startup", c.StartupProbe, opsserver.HealthPath},
	} {
		if p.probe == nil && p.what == "startup" {
			continue
		}
		if p.probe == nil || p.probe.HTTPGet == nil {
			r.Errorf("%s: no HTTP %s probe", svc, p.what)
			continue
		}
		if got := probePort(c, p.probe.HTTPGet); p.probe.HTTPGet.Path != p.path || got != opsserver.DefaultPort {
			r.Errorf("%s: %s probe GET %s on port %d; the service serves %s on %d", svc, p.what, p.probe.HTTPGet.Path, got, p.path, opsserver.DefaultPort)
		}
	}
	if a := pod.Annotations; a["prometheus.io/scrape"] == "true" &&
		(a["prometheus.io/port"] != strconv.Itoa(opsserver.DefaultPort) || a["prometheus.io/path"] != opsserver.MetricsPath) {
		r.Errorf("%s: scrape annotations %v, the service serves %s on %d", svc, a, opsserver.MetricsPath, opsserver.DefaultPort)
	}
}

func probePort(c corev1.Container, h *corev1.HTTPGetAction) int32 {
	if h.Port.StrVal == "" {
		return h.Port.IntVal
	}
	for _, p := range c.Ports {
		if p.Name == h.Port.StrVal {
			return p.ContainerPort
		}
	}
	return -1
}

// projectorHeap is the design's memory goal: projector RSS ≤ 300 MB with 1M
// known partitions.
const projectorHeap = 300_000_000

func checkResources(r reporter, svc string, c corev1.Container) {
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
		r.Errorf("%s: cpu and memory requests and a memory limit are required, have %v", svc, c.Resources)
		return
	}
	if req.Memory().Cmp(*lim.Memory()) > 0 {
		r.Errorf("%s: memory request %v above the limit %v", svc, req.Memory(), lim.Memory())
	}
	if svc == "projector" {
		// The projector sets GOMEMLIMIT to process.MemLimitFraction of the limit.
		soft := float64(lim.Memory().Value()) * process.MemLimitFraction
		if soft < projectorHeap {
			r.Errorf("projector: memory limit %v gives GOMEMLIMIT %.0f MB, below the %d MB the projector needs with 1M partitions",
				lim.Memory(), soft/1e6, projectorHeap/1_000_000)
		}
	}
}

// checkAvailability: the feeder and the emitter run an active and a standby
// in production; every service has a disruption budget; the projector's
// pods spread over nodes.
func checkAvailability(r reporter, o *overlay) {
	for _, svc := range jetprojServices {
		d, ok := o.deployments[svc]
		if !ok {
			continue
		}
		budgets := 0
		for _, b := range o.pdbs {
			if b.Spec.Selector != nil && selects(b.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				budgets++
				if b.Spec.MaxUnavailable == nil && b.Spec.MinAvailable == nil {
					r.Errorf("PodDisruptionBudget %s: neither maxUnavailable nor minAvailable", b.Name)
				}
			}
		}
		if budgets != 1 {
			r.Errorf("%s: %d PodDisruptionBudgets select its pods, want 1", svc, budgets)
		}
		spread := false
		for _, s := range d.Spec.Template.Spec.TopologySpreadConstraints {
			if s.TopologyKey == "kubernetes.io/hostname" && s.LabelSelector != nil && selects(s.LabelSelector.MatchLabels, d.Spec.Template.Labels) {
				spread = true
			}
		}
		if !spread {
			r.Errorf("%s: no topologySpreadConstraint over kubernetes.io/hostname selects its pods", svc)
		}
		if o.name != "dev" && (svc == "feeder" || svc == "emitter") && (d.Spec.Replicas == nil || *d.Spec.Replicas != 2) {
			r.Errorf("%s: want 2 replicas (one active by its lease, one standby), have %v", svc, d.Spec.Replicas)
		}
	}
}

// checkServiceSelectors: every Service selects pods that serve its ports.
func checkServiceSelectors(r reporter, o *overlay) {
	type podTemplate struct {
		owner string
		t     corev1.PodTemplateSpec
	}
	var pods []podTemplate
	for n, d := range o.deployments {
		pods = append(pods, podTemplate{"Deployment " + n, d.Spec.Template})
	}
	for n, s := range o.statefulSets {
		pods = append(pods, podTemplate{"StatefulSet " + n, s.Spec.Template})
		if _, ok := o.services[s.Spec.ServiceName]; !ok {
			r.Errorf("StatefulSet %s: its serviceName %s is no Service", n, s.Spec.ServiceName)
		}
	}
	for _, name := range sortedKeys(o.services) {
		svc := o.services[name]
		var selected []podTemplate
		for _, p := range pods {
			if selects(svc.Spec.Selector, p.t.Labels) {
				selected = append(selected, p)
			}
		}
		if len(selected) == 0 {
			r.Errorf("Service %s: selector %v selects no pods", name, svc.Spec.Selector)
			continue
		}
		for _, port := range svc.Spec.Ports {
			for _, p := range selected {
				found := false
				for _, c := range p.t.Spec.Containers {
					for _, cp := range c.Ports {
						want := port.TargetPort
						if (want.StrVal != "" && cp.Name == want.StrVal) || (want.StrVal == "" && cp.ContainerPort == max(want.IntVal, 0)) ||
							(want.StrVal == "" && want.IntVal == 0 && cp.ContainerPort == port.Port) {
							found = true
						}
					}
				}
				if !found {
					r.Errorf("Service %s: port %s (target %s) is not a port of %s", name, port.Name, port.TargetPort.String(), p.owner)
				}
			}
		}
	}
}

// checkNetworkPolicy: every service's pods are isolated: ingress only to
// the operations port, egress only to NATS, PostgreSQL and DNS.
func checkNetworkPolicy(r reporter, o *overlay) {
	for _, svc := range jetprojServices {
		d, ok := o.deployments[svc]
		if !ok {
			continue
		}
		env, _ := containerEnv(&recorder{}, o, svc, d.Spec.Template.Spec.Containers[0])
		wantEgress := map[string]bool{"TCP/53": false, "UDP/53": false}
		if u, err := url.Parse(env["DATABASE_URL"]); err == nil {
			wantEgress["TCP/"+cmp(u.Port(), "5432")] = false
		}
		for _, s := range strings.Split(env["NATS_URL"], ",") {
			if u, err := url.Parse(strings.TrimSpace(s)); err == nil {
				wantEgress["TCP/"+cmp(u.Port(), "4222")] = false
			}
		}
		covered := false
		for _, p := range o.policies {
			if !selects(p.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
				continue
			}
			covered = true
			if !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
				r.Errorf("NetworkPolicy %s: policyTypes %v, want Ingress and Egress", p.Name, p.Spec.PolicyTypes)
			}
			for _, in := range p.Spec.Ingress {
				if len(in.Ports) == 0 || len(in.From) == 0 {
					r.Errorf("NetworkPolicy %s: an ingress rule without ports or sources admits everything", p.Name)
				}
				for _, port := range in.Ports {
					if port.Port == nil || port.Port.IntVal != opsserver.DefaultPort {
						r.Errorf("NetworkPolicy %s: ingress on port %v; the services serve only %d", p.Name, port.Port, opsserver.DefaultPort)
					}
				}
			}
			for _, out := range p.Spec.Egress {
				if len(out.Ports) == 0 {
					r.Errorf("NetworkPolicy %s: an egress rule without ports admits everything", p.Name)
				}
				for _, port := range out.Ports {
					proto := "TCP"
					if port.Protocol != nil {
						proto = string(*port.Protocol)
					}
					key := proto + "/" + port.Port.String()
					if _, ok := wantEgress[key]; !ok {
						r.Errorf("NetworkPolicy %s: egress to %s, which %s does not need", p.Name, key, svc)
					}
					wantEgress[key] = true
				}
			}
		}
		if !covered {
			r.Errorf("%s: no NetworkPolicy selects its pods", svc)
			continue
		}
		for _, k := range sortedKeys(wantEgress) {
			if !wantEgress[k] {
				r.Errorf("%s: the network policy does not allow egress to %s (NATS_URL, DATABASE_URL, DNS)", svc, k)
			}
		}
	}
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// requiredAlerts must exist wherever alerts are deployed.
var requiredAlerts = []string{"JetprojProjectionLagGrowing", "JetprojPartitionParked", "JetprojFeederNoLeaseHolder", "JetprojEmitterNoLeaseHolder", "JetprojProjectionUnowned"}

var promDuration = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)

func checkMonitoring(r reporter, o *overlay, registered []string) {
	if o.name == "prod" && len(o.rules) == 0 {
		r.Errorf("prod: no PrometheusRule")
	}
	alerts := map[string]bool{}
	for _, rule := range o.rules {
		for _, g := range rule.Spec.Groups {
			for _, a := range g.Rules {
				where := "PrometheusRule " + rule.Metadata.Name + " alert " + a.Alert
				if a.Alert == "" || alerts[a.Alert] {
					r.Errorf("%s: an alert needs a unique name", where)
				}
				alerts[a.Alert] = true
				checkQuery(r, where, a.Expr, registered)
				if a.For != "" && !promDuration.MatchString(a.For) {
					r.Errorf("%s: for %q is not a duration", where, a.For)
				}
				if s := a.Labels["severity"]; s != "warning" && s != "critical" {
					r.Errorf("%s: severity %q, want warning or critical", where, s)
				}
				if a.Annotations["summary"] == "" {
					r.Errorf("%s: no summary annotation", where)
				}
			}
		}
	}
	if len(o.rules) > 0 {
		for _, want := range requiredAlerts {
			if !alerts[want] {
				r.Errorf("no alert %s", want)
			}
		}
	}
}

// checkScaling: an autoscaler targets the projector's Deployment, which
// then leaves its replica count to it; bounds are sane.
func checkScaling(r reporter, o *overlay, registered []string) {
	type scaler struct {
		what, target, kind string
		min, max           int32
	}
	var scalers []scaler
	for _, s := range o.scalers {
		sc := scaler{what: "ScaledObject " + s.Metadata.Name, target: s.Spec.ScaleTargetRef.Name, kind: cmp(s.Spec.ScaleTargetRef.Kind, "Deployment"), min: 0, max: 100}
		if s.Spec.MinReplicaCount != nil {
			sc.min = *s.Spec.MinReplicaCount
		}
		if s.Spec.MaxReplicaCount != nil {
			sc.max = *s.Spec.MaxReplicaCount
		}
		scalers = append(scalers, sc)
		if len(s.Spec.Triggers) == 0 {
			r.Errorf("%s: no triggers", sc.what)
		}
		for _, tr := range s.Spec.Triggers {
			if tr.Type != "prometheus" {
				r.Errorf("%s: trigger %s: only prometheus triggers are checked", sc.what, tr.Type)
				continue
			}
			checkQuery(r, sc.what, tr.Metadata["query"], registered)
			if v, err := strconv.ParseFloat(tr.Metadata["threshold"], 64); err != nil || v <= 0 {
				r.Errorf("%s: threshold %q, want a positive number", sc.what, tr.Metadata["threshold"])
			}
			if u, err := url.Parse(tr.Metadata["serverAddress"]); err != nil || u.Host == "" {
				r.Errorf("%s: serverAddress %q is not a URL", sc.what, tr.Metadata["serverAddress"])
			}
		}
		if f := s.Spec.Fallback; f != nil && (f.Replicas < sc.min || f.Replicas > sc.max) {
			r.Errorf("%s: fallback replicas %d outside %d..%d", sc.what, f.Replicas, sc.min, sc.max)
		}
	}
	for _, h := range o.hpas {
		sc := scaler{what: "HorizontalPodAutoscaler " + h.Name, target: h.Spec.ScaleTargetRef.Name, kind: h.Spec.ScaleTargetRef.Kind, min: 1, max: h.Spec.MaxReplicas}
		if h.Spec.MinReplicas != nil {
			sc.min = *h.Spec.MinReplicas
		}
		if h.Spec.ScaleTargetRef.APIVersion != "apps/v1" {
			r.Errorf("%s: scaleTargetRef.apiVersion %q", sc.what, h.Spec.ScaleTargetRef.APIVersion)
		}
		for _, m := range h.Spec.Metrics {
			if m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
				c := o.deployments[sc.target]
				if c == nil || c.Spec.Template.Spec.Containers[0].Resources.Requests.Cpu().IsZero() {
					r.Errorf("%s: CPU utilization needs a CPU request on %s", sc.what, sc.target)
				}
			}
		}
		scalers = append(scalers, sc)
	}
	if o.name == "prod" && len(scalers) == 0 {
		r.Errorf("prod: nothing scales the projector")
	}
	for _, s := range scalers {
		d, ok := o.deployments[s.target]
		if s.kind != "Deployment" || !ok {
			r.Errorf("%s: its target %s %s is not a Deployment here", s.what, s.kind, s.target)
			continue
		}
		if s.target != "projector" {
			r.Errorf("%s: scales %s; only the projector shares its work among replicas (the others run one active instance)", s.what, s.target)
		}
		if s.min < 1 || s.min > s.max || s.max > 64 {
			r.Errorf("%s: replicas %d..%d; want 1 ≤ min ≤ max ≤ 64 (a projection's slots)", s.what, s.min, s.max)
		}
		if d.Spec.Replicas != nil {
			r.Errorf("Deployment %s sets replicas: %d while %s scales it: every apply would reset the count", s.target, *d.Spec.Replicas, s.what)
		}
	}
	if len(scalers) > 1 {
		r.Errorf("%d autoscalers; one at most (they would fight)", len(scalers))
	}
}
