# Two commands do everything on a fresh machine: `make test` and `make demo` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Control-plane binaries are built once into this cache, outside the repo, and reused.
export EMBEDFLEET_CACHE ?= $(HOME)/.cache/embedfleet
export PIP_DISABLE_PIP_VERSION_CHECK := 1
EXTRAS := operator,worker,test

.PHONY: test demo venv binaries lint unit pytest serve bench-smoke manifests crd images push-images clean

test: venv binaries lint pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

binaries:
	@bash tests/cluster/build-binaries.sh >/dev/null
	@echo "control-plane binaries: $$(bash tests/cluster/build-binaries.sh)"

# The README's command for the main job: the whole product on a local control plane.
demo: venv binaries
	$(BIN)/python -m tests.cluster.demo $(DEMO_ARGS)

# Generated files: the CRD from crd.py, deploy/operator/ and the chart's crds/ from the chart.
crd: venv
	$(BIN)/python -m embedfleet_operator.crd > deploy/crd/embeddingservices.embedfleet.dev.yaml

manifests: venv crd
	$(BIN)/python -m tests.cluster.manifests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# pytest exits 5 when no test ran; make treats every non-zero status as failure.
pytest: venv binaries
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

# The README's one command to run a worker here: the offline all-MiniLM-L6-v2 on CPU.
serve: venv
	$(BIN)/embedfleet-worker serve --host 127.0.0.1 --port $${PORT:-8000} $(SERVE_ARGS)

bench-smoke: venv
	PYTHONPATH=worker:. $(BIN)/python bench/engine.py --device cpu --model tiny --quick

# Both images for a real cluster, as the chart names them: $(REGISTRY)/worker:$(TAG) and
# $(REGISTRY)/operator:$(TAG). Then: helm install ... --set registry=$(REGISTRY).
REGISTRY ?= ghcr.io/embedfleet
TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"$$/\1/p' charts/embedfleet/Chart.yaml)
CONTAINER_TOOL ?= $(shell command -v docker || command -v podman)
IMAGES := worker operator

images:
	@if [ -z "$(CONTAINER_TOOL)" ]; then \
	  echo "make images: neither docker nor podman is on PATH. On a machine with one, run:"; \
	  for image in $(IMAGES); do \
	    echo "  docker build -f Dockerfile.$$image -t $(REGISTRY)/$$image:$(TAG) ."; done; \
	  for image in $(IMAGES); do echo "  docker push $(REGISTRY)/$$image:$(TAG)"; done; \
	  echo "(podman takes the same arguments)"; exit 1; fi
	@for image in $(IMAGES); do \
	  $(CONTAINER_TOOL) build -f Dockerfile.$$image -t $(REGISTRY)/$$image:$(TAG) . || exit 1; done

push-images: images
	@for image in $(IMAGES); do $(CONTAINER_TOOL) push $(REGISTRY)/$$image:$(TAG) || exit 1; done

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
