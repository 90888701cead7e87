# `make demo` and `make test` each set up .venv (once, and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow benchmark install graphviz chromium lint

demo: $(STAMP) graphviz
	$(BIN)/circuits demo

# One pytest worker per core (at most 4), a test file per worker at a time.
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP) graphviz chromium lint
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

# Ruff keeps the format and the lint rules of pyproject.toml; a finding fails `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmark: $(STAMP)
	$(BIN)/python benchmarks/train_model.py
	$(BIN)/python benchmarks/train_saes.py
	$(BIN)/python benchmarks/scale.py

install: $(STAMP)

# torch first: on these machines a CPU build of 2.13.0 is provided; asking for torch through
# the other packages first would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "circuit-tracer==0.5.0"  # its graph schema + frontend for the export tests; --no-deps: those need only pydantic, its deps (nnsight, pinned transformers) are GBs
	touch $(STAMP)

# Install a Debian package when its command is missing and we may (root with apt);
# otherwise, or if that fails, say what is lost. $(1): the command, $(2): the package,
# $(3): what is lost without it.
define apt_install
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	     && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; then :; \
	  else \
	    echo "warning: $(1) is missing (apt-get install $(2) / brew install $(2)): $(3)"; \
	  fi; }
endef

# Graph images need graphviz's `dot` binary (not a pip package).
graphviz:
	$(call apt_install,dot,graphviz,no graph images)

# The HTML report is tested in headless Chromium (Debian's package); the test says so and
# skips when it cannot be installed.
chromium:
	$(call apt_install,chromium,chromium,the report rendering test will be skipped)
