# jetproj — run `make help` for the targets.
#
# Two modules, one workspace (go.work): the root module (the library and the
# services) and deploy/ (the tests of the manifests, compose files and
# Dockerfile, whose dependencies library users should not inherit).
# `go test ./...` stops at a module's edge, so the targets name both.
GO      ?= go
BIN     ?= bin
SERVICES = feeder projector emitter demo
MODULE   = github.com/jetproj/jetproj

# The packages whose code runs goroutines of its own (leases, relays,
# consumers, watches, servers) or whose tests drive that code from several
# goroutines: make test runs them with the race detector. The rest run
# without it: the end-to-end tests (their processes are built without it),
# the benchmarks' tests (which measure), pkg/examples (the example
# projections on the runtime pkg/projector's tests race already; under the
# detector on a busy machine its waits time out), deploy/'s checks of
# files, and packages without concurrency. `make race` races them all.
RACE_PKGS = internal/feeder internal/emitter internal/lease internal/jsretry \
	internal/natsconn internal/opsserver internal/statuspage internal/tracing \
	internal/derived internal/process internal/demo internal/emittersvc \
	internal/devenv/devtest pkg/eventstore pkg/projector pkg/projectorsvc

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: demo
demo: deps ## Run the whole pipeline (feeder, projector, emitter) on embedded NATS and a throwaway PostgreSQL, shown live
	$(GO) run ./services/demo

.PHONY: test
test: deps check ## Run every test (unit, integration, end-to-end) against real PostgreSQL and NATS, the concurrent packages with the race detector
	@status=0; \
	  echo "$(GO) test -race -count=1 -timeout 15m <RACE_PKGS>"; \
	  $(GO) test -race -count=1 -timeout 15m $(addprefix ./,$(RACE_PKGS)) || status=1; \
	  rest=$$($(GO) list ./... ./deploy/... | grep -vxF $(foreach p,$(RACE_PKGS),-e $(MODULE)/$(p))) || exit 1; \
	  echo "$(GO) test -count=1 -timeout 15m <the other packages of both modules>"; \
	  $(GO) test -count=1 -timeout 15m $$rest || status=1; \
	  exit $$status

.PHONY: test-short
test-short: ## The quick loop: unit and fast integration tests of both modules (-short skips end-to-end, benchmark and slow tests), no race detector
	$(GO) test -short -count=1 -timeout 5m ./... ./deploy/...

.PHONY: deps
deps: ## Make sure the PostgreSQL server binaries and the Chromium the tests start are installed
	@./scripts/ensure-postgres.sh
	@./scripts/ensure-chromium.sh

.PHONY: check
check: ## gofmt, go vet and generated docs up to date
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./... ./deploy/...
	$(GO) run ./internal/cmd/envdoc -check README.md

.PHONY: lint
lint: ## golangci-lint (.golangci.yml) over both modules, the version internal/tools/go.mod pins
	@# internal/tools is its own module, outside the workspace: the linter's
	@# dependencies never reach the library's module graph. go tool -n builds
	@# it once (then from the build cache) and prints where.
	@lint=$$(cd internal/tools && GOWORK=off $(GO) tool -n golangci-lint) && \
	  $$lint run ./... && cd deploy && $$lint run ./...

.PHONY: race
race: ## Run every unit and integration test with the race detector (make test races the concurrent packages only)
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... ./deploy/... | grep -v -e '/test/e2e' -e '/internal/bench$$')

.PHONY: build
build: ## Build the service binaries into ./bin
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do \
	  if [ -d services/$$s ] && ls services/$$s/*.go >/dev/null 2>&1; then \
	    echo "build $(BIN)/$$s"; CGO_ENABLED=0 $(GO) build -o $(BIN)/$$s ./services/$$s || exit 1; fi; done

.PHONY: docs
docs: ## Regenerate the configuration tables in README.md
	$(GO) run ./internal/cmd/envdoc -w README.md

.PHONY: bench-feeder
bench-feeder: ## Benchmark the feeder against the raw relay, and live latency
	$(GO) run ./internal/cmd/bench feeder

.PHONY: bench-projector
bench-projector: ## Benchmark the projector: KV state, rebuild, replica scaling, memory
	$(GO) run ./internal/cmd/bench projector

.PHONY: bench-pipeline
bench-pipeline: ## Benchmark the whole pipeline (feeder, projector, emitter processes) against the feeder alone
	$(GO) run ./internal/cmd/bench pipeline-throughput

.PHONY: fuzz
fuzz: ## Fuzz the encodings hostile input goes through (subject tokens, derived-event keys, stored keys) for 30s each
	$(GO) test ./pkg/subject -run '^$$' -fuzz FuzzTokenRoundTrip -fuzztime 30s
	$(GO) test ./pkg/subject -run '^$$' -fuzz FuzzDecodeToken -fuzztime 30s
	$(GO) test ./internal/derived -run '^$$' -fuzz FuzzKeyEncoding -fuzztime 30s
	$(GO) test ./pkg/projector -run '^$$' -fuzz FuzzStoredKeys -fuzztime 30s

.PHONY: clean
clean: ## Remove binaries and the demo's data
	rm -rf $(BIN) .data
