# syntax=docker/dockerfile:1
# One file, one target per service:
#   docker build --target feeder -t jetproj/feeder .
# (feeder, projector, emitter, demo). Static binaries on distroless, as the
# non-root user; the binaries' `healthcheck` command is the health check.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./services/feeder ./services/projector ./services/emitter ./services/demo

FROM gcr.io/distroless/static-debian12:nonroot AS base
USER 65532:65532
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
