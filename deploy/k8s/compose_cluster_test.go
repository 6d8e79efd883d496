package k8s_test

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

// natsNodes are the NATS services of docker-compose.cluster.yml.
var natsNodes = []string{"nats", "nats-2", "nats-3"}

// TestComposeCluster loads docker-compose.yml with docker-compose.cluster.yml
// layered over it, holds the result to everything TestCompose checks, and
// checks the cluster: three JetStream servers with distinct names, one
// cluster name, routes to the two others and a store volume each; every
// service names all three in NATS_URL, waits for each to be healthy and
// creates its streams and buckets with 3 replicas.
func TestComposeCluster(t *testing.T) {
	d, programs := readDockerfile(t)
	entrypoints := checkDockerfile(&recorder{}, d, programs)
	p := loadCompose(t, "docker-compose.cluster.yml")
	checkCompose(t, p, entrypoints)
	checkComposeCluster(t, p)
}

func checkComposeCluster(r reporter, p *types.Project) {
	names, clusters, volumes := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, node := range natsNodes {
		s, ok := p.Services[node]
		if !ok || !isNATSService(p, node) {
			r.Errorf("compose cluster: no NATS service %s", node)
			continue
		}
		checkNATSService(r, p, node)
		cmd := []string(s.Command)
		name := natsFlag(cmd, "-n", "--name", "--server_name")
		if name == "" || names[name] {
			r.Errorf("compose cluster %s: server name %q missing or not unique", node, name)
		}
		names[name] = true
		clusters[natsFlag(cmd, "--cluster_name")] = true
		if listen := natsFlag(cmd, "--cluster"); !strings.HasSuffix(listen, ":6222") {
			r.Errorf("compose cluster %s: --cluster %q, want the routes listening on 6222", node, listen)
		}
		var routed []string
		for _, raw := range strings.Split(natsFlag(cmd, "--routes", "-routes"), ",") {
			if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.Port() == "6222" {
				routed = append(routed, u.Hostname())
			}
		}
		for _, other := range natsNodes {
			if other != node && !slices.Contains(routed, other) {
				r.Errorf("compose cluster %s: --routes %v does not name %s", node, routed, other)
			}
		}
		for _, v := range s.Volumes {
			if v.Target == natsFlag(cmd, "-sd", "--store_dir") {
				if volumes[v.Source] {
					r.Errorf("compose cluster %s: store volume %s shared with another node", node, v.Source)
				}
				volumes[v.Source] = true
			}
		}
	}
	if len(clusters) != 1 || clusters[""] {
		r.Errorf("compose cluster: cluster names %v, want one, set on every node", clusters)
	}
	replicas := map[string]string{"feeder": "FEEDER_STREAM_REPLICAS", "projector": "PROJECTOR_STORE_REPLICAS", "emitter": "EMITTER_STREAM_REPLICAS"}
	for svc, v := range replicas {
		s, ok := p.Services[svc]
		if !ok {
			continue
		}
		env := composeEnv(s)
		if env[v] != "3" {
			r.Errorf("compose cluster %s: %s=%q, want 3 (R1 streams and buckets stop while their node restarts)", svc, v, env[v])
		}
		var hosts []string
		for _, raw := range strings.Split(env["NATS_URL"], ",") {
			if u, err := url.Parse(strings.TrimSpace(raw)); err == nil {
				hosts = append(hosts, u.Hostname())
			}
		}
		for _, node := range natsNodes {
			if !slices.Contains(hosts, node) {
				r.Errorf("compose cluster %s: NATS_URL %q does not name %s", svc, env["NATS_URL"], node)
			}
			if c, ok := s.DependsOn[node]; !ok || c.Condition != types.ServiceConditionHealthy {
				r.Errorf("compose cluster %s: %s", svc, fmt.Sprintf("must wait for %s to be healthy", node))
			}
		}
	}
}

// TestComposeClusterBreakage: each way of breaking the cluster file is
// caught, naming what is wrong.
func TestComposeClusterBreakage(t *testing.T) {
	d, programs := readDockerfile(t)
	entrypoints := checkDockerfile(&recorder{}, d, programs)
	cases := []struct {
		name   string
		break_ func(p *types.Project)
		want   string
	}{
		{"R1 on the cluster", func(p *types.Project) { setEnv(p, "feeder", "FEEDER_STREAM_REPLICAS", "1") }, "want 3"},
		{"a node missing from NATS_URL", func(p *types.Project) {
			setEnv(p, "projector", "NATS_URL", "nats://nats:4222,nats://nats-2:4222")
		}, "does not name nats-3"},
		{"a node missing from the routes", func(p *types.Project) {
			s := p.Services["nats-2"]
			s.Command = types.ShellCommand{"-js", "-sd", "/data", "-m", "8222", "--name", "nats-2",
				"--cluster_name", "jetproj", "--cluster", "nats://0.0.0.0:6222", "--routes", "nats://nats:6222"}
			p.Services["nats-2"] = s
		}, "does not name nats-3"},
		{"two nodes with one name", func(p *types.Project) {
			s := p.Services["nats-3"]
			s.Command = types.ShellCommand{"-js", "-sd", "/data", "-m", "8222", "--name", "nats-2",
				"--cluster_name", "jetproj", "--cluster", "nats://0.0.0.0:6222", "--routes", "nats://nats:6222,nats://nats-2:6222"}
			p.Services["nats-3"] = s
		}, "not unique"},
		{"NATS_URL names no NATS service", func(p *types.Project) {
			setEnv(p, "emitter", "NATS_URL", "nats://nats:4222,nats://nats-2:4222,nats://nats-9:4222")
		}, "NATS_URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := loadCompose(t, "docker-compose.cluster.yml")
			var clean recorder
			checkCompose(&clean, p, entrypoints)
			checkComposeCluster(&clean, p)
			if len(clean.errs) > 0 {
				t.Fatalf("the cluster files fail before breaking them: %v", clean.errs)
			}
			c.break_(p)
			var rec recorder
			checkCompose(&rec, p, entrypoints)
			checkComposeCluster(&rec, p)
			expectCaught(t, rec.errs, c.want)
		})
	}
}
