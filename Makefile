# Mira service node. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run check-config dev test check pytest typecheck lint bench bench-quick bench-rounds bench-instructions bench-hostile clean fuzz docker-base docker-build docker-run docker-test

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned requirements

run: $(STAMP)  ## run the node (settings from the environment and .env)
	$(PY) server.py

check-config: $(STAMP)  ## read and check the settings and files as start-up does; print them (secrets masked), listen on nothing
	$(PY) server.py --check-config

dev: $(STAMP)  ## run with Tornado's autoreload: restarts when a source file changes
	$(PY) -m tornado.autoreload server.py

test: $(STAMP)  ## the quality gate CI runs: ruff, mypy, then the test suite (make check is the same)
	@for tool in redis-server promtool podman; do command -v $$tool >/dev/null || \
		echo "make test: $$tool is missing, its tests will skip: as root, apt-get install redis-server prometheus podman runc mmdebstrap (.ci/run does)" >&2; done
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

check: test  ## ruff, mypy and the test suite

pytest: $(STAMP)  ## the test suite alone (PYTEST_ARGS="-k usage -x")
	$(PY) -m pytest $(PYTEST_ARGS)

typecheck: $(STAMP)  ## mypy (configured in pyproject.toml)
	$(VENV)/bin/mypy

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

# The benchmark's own tools, on top of the test set (at present none beyond it: matplotlib is in requirements-dev.txt).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmark the node against a fast mock upstream (installs wrk if missing); table and chart, see bench/README.md
	$(PY) bench/run.py

bench-quick: $(BENCH_STAMP)  ## the same in under a minute: fewer requests, 1,000 streams at most
	$(PY) bench/run.py --quick

bench-rounds: $(BENCH_STAMP)  ## only the alternated JSON rounds: CPU per request of the node, its variants and the floors
	$(PY) bench/run.py --rounds-only

BENCH_TREES ?= .
BENCH_VARIANTS ?= node limits
bench-instructions: $(BENCH_STAMP)  ## instructions per proxied JSON request under callgrind (BENCH_TREES="DIR ...", BENCH_VARIANTS="node limits")
	$(PY) bench/instructions.py --tree $(BENCH_TREES) --variant $(BENCH_VARIANTS)

bench-hostile: $(STAMP)  ## what huge and hostile request bodies cost the node (memory, event-loop stalls)
	$(PY) bench/hostile.py

.PHONY: demo eval-client

demo: $(STAMP)  ## the node against a local demo upstream, no provider key needed; prints what to try (DEMO_ARGS="--port 0")
	$(PY) tools/demo.py $(DEMO_ARGS)

eval-client: $(STAMP)  ## a CSV through a node's /v1/eval with a progress bar (EVAL_ARGS="prompts.csv --models openai/gpt-4o-mini")
	$(PY) -m tools.eval_client $(EVAL_ARGS)

# Fuzzing has its own venv: schemathesis and hypothesis bring pytest plugins that `make test` must not load.
FUZZ_VENV  := $(VENV)/fuzz
FUZZ_STAMP := $(FUZZ_VENV)/.installed

$(FUZZ_STAMP): requirements.txt requirements-dev.txt requirements-fuzz.txt
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install --quiet -r requirements-fuzz.txt
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)  ## schemathesis against openapi.json: a node and the mock upstream on free ports (FUZZ_ARGS="--max-examples 200 --seed 1")
	$(FUZZ_VENV)/bin/python tools/fuzz.py $(FUZZ_ARGS)

IMAGE     ?= mira-service
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The engine: docker, or podman (same commands); extra flags for a machine go in the FLAGS. For instance,
# Debian's podman where crun refuses the cgroup layout and pip's TLS needs the host's CA bundle:
#   DOCKER="podman --runtime runc" DOCKER_BUILD_FLAGS="--network host --format docker --ulimit nofile=20000:20000
#   -v <host CA bundle>:/etc/ssl/certs/ca-certificates.crt:ro" DOCKER_RUN_FLAGS="--ulimit nofile=20000:20000"
DOCKER             ?= docker
DOCKER_BUILD_FLAGS ?=
DOCKER_RUN_FLAGS   ?=
DOCKER_PORT        ?= 8000
# A stop waits this long before it kills: longer than SHUTDOWN_TIMEOUT (default 30 s), so the node
# finishes the drain it promised. The engines' own default is 10 s.
DOCKER_STOP_TIMEOUT ?= 40

docker-base:  ## the Dockerfile's base image: pulled, or where no registry is reachable a Debian stand-in (needs mmdebstrap)
	$(if $(filter command line environment,$(origin DOCKER)),DOCKER="$(DOCKER)") tools/base_image.sh

docker-build:  ## build the image $(IMAGE):$(IMAGE_TAG) (VERSION in /health = IMAGE_TAG)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg VERSION=$(IMAGE_TAG) -t $(IMAGE):$(IMAGE_TAG) .

docker-run:  ## run the image on port $(DOCKER_PORT) with the settings of .env (if any); a stop waits DOCKER_STOP_TIMEOUT s
	$(DOCKER) run --rm --name $(IMAGE) --stop-timeout $(DOCKER_STOP_TIMEOUT) -p $(DOCKER_PORT):8000 $(DOCKER_RUN_FLAGS) $(if $(wildcard .env),--env-file .env) $(IMAGE):$(IMAGE_TAG)

docker-test: $(STAMP)  ## build the image and test it running (tests/test_image.py; podman, else docker)
	$(if $(filter command line environment,$(origin DOCKER)),DOCKER="$(DOCKER)") $(PY) -m pytest tests/test_image.py -v $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
