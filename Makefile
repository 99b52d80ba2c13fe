# Quick start: `make demo` runs the demo, `make test` runs everything CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all deps build release test lint fuzz-smoke demo pod-demo image deb deb-test package-test clean

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
	./packaging/test.sh
	./perf/syscalls.sh --check
	$(MAKE) fuzz-smoke

# A short run of every fuzz target (nightly, cargo-fuzz); new finds go to a scratch corpus,
# the committed seeds in fuzz/corpus are replayed on stable by core's tests.
FUZZ_SECONDS ?= 15
fuzz-smoke: deps
	@rustup toolchain list | grep -q '^nightly' || { echo "fuzz-smoke needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in config spiffe_id svid_leaf client_hello proxy_v2; do \
	  scratch=$$(mktemp -d); \
	  (cd fuzz && $(CARGO) +nightly fuzz run $$t $$scratch corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	  rm -rf $$scratch; \
	done

# Two namespaced "pods", interception in both, a sidecar in both, traffic through them.
demo: release
	./bench/demo.sh

# Packaging, from the release binaries: the container images (OCI archives in
# target/image), the .deb (target/deb), and their tests. `make test` runs the same tests on
# the debug binaries it builds (packaging/test.sh), which saves CI a release build.
image: release
	./packaging/image/build.sh

deb: release
	./packaging/deb/build.sh

deb-test: deb
	./packaging/deb/test.sh
	./packaging/deb/lintian.sh

package-test: release
	BIN=$$(source bench/target-dir.sh && echo "$$target_dir/release") ./packaging/test.sh

# Two podman pods from the images, mTLS between their sidecars (packaging/image/pod-test.sh).
pod-demo: release
	./packaging/image/pod-test.sh

clean:
	$(CARGO) clean
