# convex-cluster-manager build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= 0.1.0-dev
LDFLAGS := -s -w -X github.com/convex-cluster-manager/ccm/shared/buildinfo.version=$(VERSION)
BINARIES := $(notdir $(wildcard cmd/*))
GOTEST_FLAGS ?= -count=1 -timeout 30m
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: help build test unit-test lint chaos bench bench-failover bench-loss bench-scale bench-bigtx images demo demo-down clean
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build every binary under cmd/ (static) into bin/
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(BINARIES))

test: lint images ## all tests: lint, package tests (embedded NATS) with the race detector, node and cluster tests (systemd containers)
	$(GO) test $(GOTEST_FLAGS) -race ./...
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test $(GOTEST_FLAGS) -tags integration ./itest/...

unit-test: ## package tests only: real embedded NATS, no Docker
	$(GO) test $(GOTEST_FLAGS) ./...

lint: ## go vet (every build tag), a gofmt check, staticcheck
	$(GO) vet ./...
	$(GO) vet -tags 'integration bench' ./itest/...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags 'integration bench' ./itest/...

chaos: images ## randomized faults on the three-node cluster, the history checked (CHAOS_RUNS, default 50; CHAOS_SEED replays); CHAOS lines and the per-fault report, full log in chaos.log
	set -o pipefail; CHAOS_RUNS=$${CHAOS_RUNS:-50} CHAOS_SEED='$(CHAOS_SEED)' TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -count=1 -timeout 240m -tags integration -run TestChaos -v ./itest/ | tee chaos.log | grep -E '^(CHAOS|--- FAIL|FAIL|ok)'

bench: build ## replication lag vs Litestream, ccm join throughput, storage mirroring (needs nats-server, litestream on PATH)
	$(GO) run ./itest/bench/lag -bin bin $(BENCH_FLAGS)

bench-failover: images ## five switchovers and five leader kills at TTL 10 s and 3 s, then the loss runs of bench-loss; prints figures
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -count=1 -timeout 120m -tags 'integration bench' -run 'TestBenchFailover|TestBenchLoss' -v ./itest/ | grep '^BENCH'

bench-loss: images ## acknowledged writes lost when the leader is cut off (frozen NATS, partition) at 10 and 200 writes/s, with wal.maxUnshippedMs 0 and 1000 (BENCH_LOSS_BOUND, BENCH_LOSS_FAULT: one of them; BENCH_LOSS_RUNS, default 3)
	set -o pipefail; BENCH_LOSS_BOUND='$(BENCH_LOSS_BOUND)' BENCH_LOSS_FAULT='$(BENCH_LOSS_FAULT)' BENCH_LOSS_RUNS='$(BENCH_LOSS_RUNS)' TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -count=1 -timeout 60m -tags 'integration bench' -run TestBenchLoss -v ./itest/ | tee bench-loss.log | grep -E '^(BENCH|--- FAIL|FAIL)'

bench-scale: images ## leader changes, walship kills and a 1 GiB transaction with a 10 MiB and a 1 GiB database (BENCH_SCALE=db=1024MiB: one size; BENCH_SCALE=bigtx: the transaction alone); full log in bench-scale.log
	set -o pipefail; BENCH_SCALE='$(BENCH_SCALE)' TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -count=1 -timeout 120m -tags 'integration bench' -run 'TestBenchScale/$(BENCH_SCALE)' -v ./itest/ | tee bench-scale.log | grep -E '^(BENCH|--- FAIL|FAIL)'

bench-bigtx: ## one large transaction (CCM_BIG_MIB, default 1024) shipped and applied by walship and walapply processes over loopback NATS, three runs: MiB/s and peak RSS
	CCM_BIG_MIB=$${CCM_BIG_MIB:-1024} $(GO) test -count=3 -run '^$$' -bench LargeTransaction -benchtime 1x -timeout 60m ./services/walapply/ | grep -E '^Benchmark|MiB/s'

images: build ## base image (debootstrap, cached) and node image ccm-node:dev, no registry
	deploy/images/base.sh
	deploy/images/node.sh

demo: images ## three-node demo cluster with a client on 10.77.0.0/24; prints ccm status and the VIP
	compose/demo.sh

demo-down: ## remove the demo cluster
	cd compose && docker-compose -p ccm-demo down -v --remove-orphans

clean: ## remove build output
	rm -rf bin
