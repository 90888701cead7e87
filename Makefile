# `make demo` and `make test` each set up .venv (once, and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow benchmark install graphviz chromium

demo: $(STAMP) graphviz
	$(BIN)/circuits demo

test: $(STAMP) graphviz chromium
	$(BIN)/python -m pytest -q

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
	touch $(STAMP)

# Graph images need graphviz's `dot` binary (not a pip package).
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; install it (apt-get install graphviz / brew install graphviz) for graph images"; \
	  else \
	    echo "warning: graphviz's 'dot' is missing: install it (apt-get install graphviz / brew install graphviz) for graph images"; \
	  fi; }

# The HTML report is tested in headless Chromium (Debian's package); the test says so and
# skips when it cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the report rendering test will be skipped"; \
	  else \
	    echo "warning: chromium is missing (apt-get install chromium); the report rendering test will be skipped"; \
	  fi; }
