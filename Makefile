# Quick start: `make demo` runs the demo, `make test` runs everything CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all deps build release test lint demo clean

all: build

deps:
	@./.ci/deps.sh

build: deps
	$(CARGO) build --workspace --bins

release: deps
	$(CARGO) build --release --workspace --bins

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The end-to-end tests start the real binaries, so they are built first.
test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# Two namespaced "pods", interception in both, a sidecar in both, traffic through them.
demo: release
	./bench/demo.sh

clean:
	$(CARGO) clean
