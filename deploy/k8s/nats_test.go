package k8s_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// natsServerVersion is the major.minor of the nats-server module the code
// is built and tested with (go.mod): the images run the same.
func natsServerVersion() string {
	return goModVersion(`github.com/nats-io/nats-server/v2 v`)
}

// checkNATSImage: the official image, of the version the code is tested with.
func checkNATSImage(r reporter, where, image string) {
	name, tag, _ := strings.Cut(image, ":")
	if want := natsServerVersion(); name != "nats" || (tag != want+"-alpine" && !strings.HasPrefix(tag, want+".")) {
		r.Errorf("%s: image %q, want nats:%s-alpine (or a %s.x tag): the nats-server version in go.mod, which the tests run", where, image, want, want)
	}
}

// testOperator stands for what `nsc` makes (deploy/k8s/README.md): an
// operator, its system account and an account with JetStream; conf is the
// auth.conf that `nsc generate config --mem-resolver` writes, the one that
// replaces the placeholder of Secret nats-auth, and creds a user's
// credentials file in that account.
type testOperator struct {
	conf  string
	creds []byte
}

var testAuthOperator = sync.OnceValue(func() testOperator {
	must := func(s string, err error) string {
		if err != nil {
			panic(err)
		}
		return s
	}
	op, _ := nkeys.CreateOperator()
	sys, _ := nkeys.CreateAccount()
	app, _ := nkeys.CreateAccount()
	user, _ := nkeys.CreateUser()
	opPub, sysPub, appPub, userPub := must(op.PublicKey()), must(sys.PublicKey()), must(app.PublicKey()), must(user.PublicKey())
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name, oc.SystemAccount = "jetproj", sysPub
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	ac := jwt.NewAccountClaims(appPub)
	ac.Name = "JETPROJ"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{DiskStorage: -1, MemoryStorage: -1, Streams: -1, Consumer: -1}
	uc := jwt.NewUserClaims(userPub)
	uc.Name = "feeder"
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(must(uc.Encode(app)), seed)
	if err != nil {
		panic(err)
	}
	conf := fmt.Sprintf("operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
		must(oc.Encode(op)), sysPub, sysPub, must(sc.Encode(op)), appPub, must(ac.Encode(op)))
	return testOperator{conf: conf, creds: creds}
})

func testAuth() string { return testAuthOperator().conf }

// natsPodSpec is the NATS pod with its claimed volumes, as a pod of the
// StatefulSet has them.
func natsPodSpec(s *appsv1.StatefulSet) corev1.PodSpec {
	spec := *s.Spec.Template.Spec.DeepCopy()
	for _, t := range s.Spec.VolumeClaimTemplates {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: t.Name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	return spec
}

var confVar = regexp.MustCompile(`\$([A-Z_][A-Z0-9_]*)`)

// checkNATS holds the NATS StatefulSet and its configuration, parsed by the
// nats-server the code uses, against the services that connect to it.
func checkNATS(r reporter, o *overlay) {
	s, ok := o.statefulSets["nats"]
	if !ok {
		r.Errorf("%s: no StatefulSet nats", o.name)
		return
	}
	replicas := int32(1)
	if s.Spec.Replicas != nil {
		replicas = *s.Spec.Replicas
	}
	if replicas != 1 && replicas != 3 && replicas != 5 {
		r.Errorf("NATS: %d servers; JetStream's quorum wants 1, 3 or 5", replicas)
	}
	if o.name == "prod" && replicas != 3 {
		r.Errorf("prod: NATS has %d servers, want a 3-node cluster", replicas)
	}
	pod := s.Spec.Template
	if s.Spec.Selector == nil || !selects(s.Spec.Selector.MatchLabels, pod.Labels) {
		r.Errorf("NATS: the StatefulSet's selector does not select its pods")
	}
	if len(pod.Spec.Containers) != 1 {
		r.Errorf("NATS: want one container")
		return
	}
	c := pod.Spec.Containers[0]
	checkNATSImage(r, "NATS StatefulSet", c.Image)
	checkPodSecurity(r, "nats", pod.Spec, c)
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		r.Errorf("NATS: memory request and limit required")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}

	// The configuration file as the server sees it.
	i := slices.Index(c.Args, "-c")
	if i < 0 || i+1 >= len(c.Args) {
		r.Errorf("NATS: args %v do not name a configuration file (-c)", c.Args)
		return
	}
	root := materialize(r, o, "nats", natsPodSpec(s), c, func(volume, key, content string) string {
		if strings.Contains(content, "REPLACE_WITH") {
			return testAuth() // the placeholder replaced, as deploy/k8s/README.md says
		}
		return content
	})
	defer os.RemoveAll(root)
	conf := filepath.Join(root, c.Args[i+1])
	b, err := os.ReadFile(conf)
	if err != nil {
		r.Errorf("NATS: -c %s is not a mounted file: %v", c.Args[i+1], err)
		return
	}
	env, _ := containerEnv(r, o, "nats", c)
	for _, m := range confVar.FindAllStringSubmatch(string(b), -1) {
		v, ok := env[m[1]]
		if !ok {
			r.Errorf("NATS: the configuration uses $%s, which the container's environment does not set", m[1])
			continue
		}
		if m[1] == "POD_NAME" {
			v = "nats-0"
		}
		os.Setenv(m[1], v)
		defer os.Unsetenv(m[1])
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		r.Errorf("NATS: nats-server refuses its configuration: %v", err)
		return
	}
	if !opts.JetStream {
		r.Errorf("NATS: JetStream is not enabled")
	}
	// The store on the StatefulSet's persistent volumes.
	persisted := false
	for _, t := range s.Spec.VolumeClaimTemplates {
		for _, m := range c.VolumeMounts {
			if m.Name == t.Name && (opts.StoreDir == m.MountPath || strings.HasPrefix(opts.StoreDir, m.MountPath+"/")) {
				persisted = true
				size := t.Spec.Resources.Requests[corev1.ResourceStorage]
				if opts.JetStreamMaxStore > 0 && size.Value() < opts.JetStreamMaxStore {
					r.Errorf("NATS: max_file_store %d bytes exceeds the volume's %v", opts.JetStreamMaxStore, &size)
				}
			}
		}
	}
	if !persisted {
		r.Errorf("NATS: store_dir %q is not on a volumeClaimTemplate's volume", opts.StoreDir)
	}
	if ports["client"] != int32(opts.Port) || ports["monitor"] != int32(opts.HTTPPort) {
		r.Errorf("NATS: the server listens on %d (clients) and %d (monitoring), the container declares %v", opts.Port, opts.HTTPPort, ports)
	}
	for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || probePort(c, p.HTTPGet) != int32(opts.HTTPPort) || !strings.HasPrefix(p.HTTPGet.Path, "/healthz") {
			r.Errorf("NATS: %s probe must GET /healthz on the monitoring port %d", what, opts.HTTPPort)
		}
	}

	// Clustering: a route to every server by its stable name.
	headless, ok := o.services[s.Spec.ServiceName]
	if !ok || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		r.Errorf("NATS: serviceName %s must be a headless Service publishing not-ready addresses (routes form before readiness)", s.Spec.ServiceName)
	}
	if replicas > 1 {
		if opts.Cluster.Name == "" || int32(opts.Cluster.Port) != ports["cluster"] {
			r.Errorf("NATS: cluster name %q port %d, container cluster port %d", opts.Cluster.Name, opts.Cluster.Port, ports["cluster"])
		}
		var hosts []string
		for _, u := range opts.Routes {
			hosts = append(hosts, u.Host)
		}
		for i := range replicas {
			want := fmt.Sprintf("nats-%d.%s:%d", i, s.Spec.ServiceName, opts.Cluster.Port)
			if !slices.Contains(hosts, want) {
				r.Errorf("NATS: no route to %s (routes %v)", want, hosts)
			}
		}
		if len(hosts) != int(replicas) {
			r.Errorf("NATS: %d routes for %d servers", len(hosts), replicas)
		}
	} else if len(opts.Routes) > 0 {
		r.Errorf("NATS: a single server with routes %v waits for peers that do not exist", opts.Routes)
	}
	// The options as a whole, as the server validates them before it starts.
	opts.StoreDir = filepath.Join(root, opts.StoreDir)
	if _, err := server.NewServer(opts); err != nil {
		r.Errorf("NATS: nats-server refuses its options: %v", err)
	}

	// The clients: a Service on the client port, authentication agreed,
	// no more JetStream replicas than servers.
	serverAuth := len(opts.TrustedOperators) > 0 || len(opts.Users) > 0 || len(opts.Nkeys) > 0 || opts.Authorization != ""
	for _, svc := range jetprojServices {
		d, ok := o.deployments[svc]
		if !ok {
			continue
		}
		env, _ := containerEnv(&recorder{}, o, svc, d.Spec.Template.Spec.Containers[0])
		checkNATSURL(r, o, svc, env["NATS_URL"], pod.Labels, int32(opts.Port))
		clientAuth := env["NATS_CREDS"] != "" || env["NATS_USER"] != "" || env["NATS_TOKEN"] != "" || env["NATS_NKEY_SEED"] != ""
		switch {
		case serverAuth && !clientAuth:
			r.Errorf("%s: the NATS servers require authentication, the service sets none", svc)
		case !serverAuth && clientAuth:
			r.Errorf("%s: sends NATS credentials to servers that do not authenticate", svc)
		case len(opts.TrustedOperators) > 0 && env["NATS_CREDS"] == "":
			r.Errorf("%s: the NATS servers use an operator: the service needs NATS_CREDS", svc)
		}
		for _, k := range []string{"FEEDER_STREAM_REPLICAS", "PROJECTOR_STORE_REPLICAS", "EMITTER_STREAM_REPLICAS"} {
			if v, ok := env[k]; ok {
				if n, err := strconv.Atoi(v); err == nil && int32(n) > replicas {
					r.Errorf("%s: %s=%d with %d NATS servers", svc, k, n, replicas)
				}
			}
		}
	}
	if o.name == "prod" && !serverAuth {
		r.Errorf("prod: the NATS servers accept anyone")
	}
}

// checkNATSURL: every server in NATS_URL is a Service of the overlay that
// selects the NATS pods, on the client port.
func checkNATSURL(r reporter, o *overlay, svc, natsURL string, natsLabels map[string]string, clientPort int32) {
	for _, u := range strings.Split(natsURL, ",") {
		host, port, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(u), "nats://"), ":")
		name, _, _ := strings.Cut(host, ".")
		target, ok := o.services[name]
		if !ok || !selects(target.Spec.Selector, natsLabels) {
			r.Errorf("%s: NATS_URL %s: no Service %s selecting the NATS pods", svc, u, name)
			continue
		}
		p := 4222
		if port != "" {
			p, _ = strconv.Atoi(port)
		}
		if !slices.ContainsFunc(target.Spec.Ports, func(sp corev1.ServicePort) bool {
			return sp.Port == int32(p) && (sp.TargetPort.IntVal == clientPort || sp.TargetPort.StrVal == "client")
		}) {
			r.Errorf("%s: NATS_URL %s: Service %s does not forward port %d to the servers' client port %d", svc, u, name, p, clientPort)
		}
	}
}

// checkPodSecurity: non-root, RuntimeDefault seccomp, read-only root, no
// privilege escalation, no capabilities.
func checkPodSecurity(r reporter, owner string, pod corev1.PodSpec, c corev1.Container) {
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		(sc.RunAsUser != nil && *sc.RunAsUser == 0) || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		r.Errorf("%s: the pod's securityContext must set runAsNonRoot (a non-zero runAsUser) and seccompProfile RuntimeDefault", owner)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
		(sc.Privileged != nil && *sc.Privileged) {
		r.Errorf("%s: the container's securityContext must set readOnlyRootFilesystem, allowPrivilegeEscalation: false, drop ALL capabilities and add none", owner)
	}
}
