# Every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# torch is only for the live comparisons in the tests; `make test TORCH=` skips it.
TORCH ?= torch==2.13.0

.PHONY: serve test lint bench demo format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.torch: $(VENV)/.installed
	@if [ -n "$(TORCH)" ]; then \
		$(PY) -m pip install --quiet "$(TORCH)" \
		|| echo "note: $(TORCH) did not install; the live torch checks will be skipped"; \
	fi
	touch $@

# JAX and optax, for adamhub.optax's checks and tests.
$(VENV)/.jax: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[jax]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/adamhub-service serve --port $(PORT)

# What the tests need beyond Python: Chromium (the dashboard), HAProxy (the cluster
# topology) and Node (the TypeScript client), from Debian when missing.
.PHONY: test-deps
test-deps:
	@tools/ensure_test_deps.sh

# The suites that touch the store run twice: on one Redis, then on a Redis Cluster of
# three primaries (tests/conftest.py starts either).
CLUSTER_SUITES ?= tests/service tests/e2e/test_exactly_once.py tests/e2e/test_round_workers.py

test: $(VENV)/.torch $(VENV)/.jax test-deps
	$(PY) -m pytest
	ADAMHUB_TEST_STORE=cluster $(PY) -m pytest $(CLUSTER_SUITES)

lint: $(VENV)/.torch $(VENV)/.jax
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile
	tools/check_typescript.sh $(PY)

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	$(PY) bench/bench_step.py
	$(PY) bench/bench_rounds.py
	$(PY) bench/bench_acks.py
	$(PY) bench/bench_cluster.py
	$(PY) bench/bench_int8.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

demo: $(VENV)/.installed
	$(VENV)/bin/adamhub-service demo
