# Roost. `make` lists the targets.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/roosthub/roost.Version=$(VERSION)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/roost (static: no cgo, trimmed paths; the container image runs this same target)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/roost ./cmd/roost

.PHONY: run
run: build ## serve the whole hub with embedded defaults: API :8080, MQTT :1883, data in ./roost-data
	./bin/roost serve

.PHONY: test
test: lint ## vet, gofmt check and every test with the race detector, then what skipped and why (starts the installed test servers whose ROOST_TEST_*_URL is unset)
	GO=$(GO) scripts/test.sh

.PHONY: lint
lint: ## go vet and the gofmt check
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

FUZZTIME ?= 10s

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 10s; a count like 5000x works too)
	@for pkg in ./broker ./dataout; do \
		for target in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
			echo "fuzz $$pkg $$target for $(FUZZTIME)"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

.PHONY: bench-tools
bench-tools: build
	$(GO) build -o bin/roost-bench ./cmd/roost-bench

.PHONY: bench-quick
bench-quick: bench-tools ## Roost, bare mochi-mqtt, mosquitto and NATS side by side, pinned to one core then on the whole machine, small sizes (minutes): bench/results/quick.json
	./bin/roost-bench -suite quick -roost bin/roost -out bench/results

.PHONY: bench
bench: bench-tools ## the same at full sizes (57 minutes on 2 CPUs, 2026-12-04): bench/results/full.json
	./bin/roost-bench -suite full -roost bin/roost -out bench/results

.PHONY: readme-test
readme-test: ## run the README's walk-through twice against one real roost serve, and once failing
	$(GO) test -count=1 -run TestReadmeWalkthrough ./cmd/roost

.PHONY: services
services: ## start throw-away test servers (Postgres, Redis) and print the exports for them
	@scripts/services.sh start

.PHONY: services-stop
services-stop: ## stop the servers `make services` started
	@scripts/services.sh stop

.PHONY: clean
clean: ## remove build output (not ./roost-data)
	rm -rf bin
