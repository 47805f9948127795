# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -q
# PYTHONDONTWRITEBYTECODE is set on these machines: without precompiled bytecode every import is ~2.5x slower.

.PHONY: demo test lint format bench docs clean install dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv

# the demo serves models behind a gateway (the serve extra: uvloop, httptools, orjson, httpx); `archipel server
# --port` serves the REST API (the api extra: FastAPI, uvicorn)
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(UV) -e '.[serve,native,api]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(UV) -e '.[dev]'
	touch $@ $(VENV)/.installed-core

# The CPU build of torch, for the Ray Train example's test: pip finds the local wheel (find-links in pip.conf);
# uv ignores it and a plain `torch` from the index is the multi-GB CUDA build.
$(VENV)/.installed-torch: | $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	touch $@

# The request path compiled (src/archipel/serving/_native): rebuilt when its sources change; without a compiler
# the same code runs as Python (under CI=true a failed build fails the run).
NATIVE := src/archipel/serving/_native/BUILT_FROM
NATIVE_SOURCES := $(addprefix src/archipel/serving/,http1.py http1.pxd gateway.py gateway.pxd _native/fastlane.pyx \
	_native/__init__.py)
$(NATIVE): $(NATIVE_SOURCES) scripts/build_native.py | $(VENV)/.installed-core
	$(BIN)/python scripts/build_native.py

install: $(VENV)/.installed-core $(NATIVE)
dev: $(VENV)/.installed-dev $(NATIVE)

demo: $(VENV)/.installed-core $(NATIVE)
	$(BIN)/archipel demo $(DEMO_ARGS)

# The dashboard's tests (tests/api/test_dashboard.py) drive Debian's Chromium with pip's playwright, which never
# downloads a browser of its own; installed when missing (without root, the tests skip, or fail under CI=true).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y chromium || { apt-get update && apt-get install -y chromium; } || [ "$${CI:-}" != true ]

test: $(VENV)/.installed-dev $(VENV)/.installed-torch $(NATIVE) $(CHROMIUM)
	ARCHIPEL_TEST_PG_URL="$$(bash scripts/ensure-postgres.sh)" || { [ "$${CI:-}" != true ] || exit 1; }; \
	export ARCHIPEL_TEST_PG_URL; \
	$(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# serving.py compares the gateway with Debian's nginx (it runs its own on a free port, not the package's service).
bench: $(VENV)/.installed-dev
	command -v nginx >/dev/null || apt-get install -y nginx-light || apt-get install -y nginx
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/planner.py
	$(BIN)/python benchmarks/transfer.py
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/monitoring.py --setup  # Evidently in its own venv (.venv-bench), never archipel's
	$(BIN)/python scripts/gen_docs.py  # docs/benchmarks.md from the results just written

# The pages under docs/ derived from the code: the CLI and spec references (docs/reference/) and the benchmarks
# page, from the figures the benchmarks' full runs leave in benchmarks/results/. A test fails while one is stale.
docs: $(VENV)/.installed-core
	$(BIN)/python scripts/gen_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
