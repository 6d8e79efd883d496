# syntax=docker/dockerfile:1
# One file, a target per program:
#   docker build --target feeder -t jetproj/feeder:<tag> .
# (feeder, projector, emitter, demo). Static binaries (CGO_ENABLED=0) on
# distroless/static, as its non-root user 65532. No shell in the images:
# `<program> healthcheck` probes the program's own /readyz for container
# health checks (docker-compose.yml); Kubernetes probes the HTTP endpoint.
# deploy/k8s's tests check this file against services/ and the compose file.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# The services are the root module alone: go.work (which adds deploy/'s
# tests) stays out of the build context (.dockerignore), and is ignored
# should it be there.
ENV GOWORK=off
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/ ./services/feeder ./services/projector ./services/emitter ./services/demo

FROM gcr.io/distroless/static-debian12:nonroot AS base
USER 65532:65532
# The operations endpoint (OPS_ADDR): /metrics, /healthz, /readyz.
EXPOSE 8080

FROM base AS feeder
COPY --from=build /out/feeder /usr/local/bin/feeder
ENTRYPOINT ["/usr/local/bin/feeder"]
CMD ["run"]

FROM base AS projector
COPY --from=build /out/projector /usr/local/bin/projector
ENTRYPOINT ["/usr/local/bin/projector"]
CMD ["run"]

FROM base AS emitter
COPY --from=build /out/emitter /usr/local/bin/emitter
ENTRYPOINT ["/usr/local/bin/emitter"]
CMD ["run"]

FROM base AS demo
COPY --from=build /out/demo /usr/local/bin/demo
ENTRYPOINT ["/usr/local/bin/demo"]
CMD ["write"]
