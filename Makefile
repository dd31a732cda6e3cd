# Habits of forq's development; see docs/development.md. The CI is
# .ci/run (make ci), which runs the same steps from a clean clone.

GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(GOBIN)/golangci-lint

# make test-one T=TestName P=./package: one test (a regular expression
# matched against test names) of one package, with the race detector.
T ?=
P ?= ./...
# The library: what builds on macOS and Windows too (admin once it exists).
LIBRARY := . ./broker ./connect ./producer ./consumer ./lock ./pool $(if $(wildcard admin),./admin)
# make bench: forq bench's comparison with plain JetStream; ARGS adds flags.
ARGS ?=

.PHONY: all build test test-one lint lint-install fmt vet cross bench bench-go ci

all: build vet lint test

build:
	$(GO) build ./...

# Unit and end-to-end tests, as the README says: about 10 minutes on 2 CPUs.
test:
	$(GO) test -race -count=1 -timeout 30m ./...

test-one:
	@test -n "$(T)" || { echo "usage: make test-one T=TestName [P=./package]"; exit 2; }
	$(GO) test -race -count=1 -timeout 30m -run '$(T)' -v $(P)

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .

# The library builds and vets for macOS and Windows as well.
cross:
	GOOS=darwin GOARCH=amd64 $(GO) build $(LIBRARY)
	GOOS=darwin GOARCH=amd64 $(GO) vet $(LIBRARY)
	GOOS=windows GOARCH=amd64 $(GO) build $(LIBRARY)
	GOOS=windows GOARCH=amd64 $(GO) vet $(LIBRARY)

lint: lint-install
	$(GOLANGCI_LINT) run ./...

# Installs golangci-lint $(GOLANGCI_LINT_VERSION) unless it is there: about
# 4 minutes cold (it compiles from the module proxy), seconds warm.
lint-install:
	@if [ "$$($(GOLANGCI_LINT) version --short 2>/dev/null)" != "$(GOLANGCI_LINT_VERSION:v%=%)" ]; then \
		echo "installing golangci-lint $(GOLANGCI_LINT_VERSION)"; \
		GOBIN=$(GOBIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); \
	fi

bench:
	$(GO) run ./cmd/forq bench --baseline --baseline-cpu-share $(ARGS)

# The hot paths' Go benchmarks, on a real broker.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./ ./producer ./consumer

ci:
	bash .ci/run
