// Package k8s holds no code: its tests check the Kubernetes manifests of
// deploy/k8s, docker-compose.yml and the Dockerfile against the services —
// built with kustomize and decoded strictly into the Kubernetes API types,
// since no cluster runs where the tests do.
package k8s
