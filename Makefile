# Roost: `make up` runs the platform with the demo models; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.roost-installed
PACKAGES := registry serving warehouse features assets orchestration analysis monitoring llm

.PHONY: install install-gpu install-k8s up test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# onnxruntime-gpu and onnxruntime ship the same `onnxruntime` module: swap the wheels.
install-gpu: install
	$(BIN)/pip install --quiet -e '.[gpu,dev]'
	$(BIN)/pip uninstall --quiet -y onnxruntime onnxruntime-gpu
	$(BIN)/pip install --quiet --no-deps 'onnxruntime-gpu>=1.31,<1.33'

# The Kubernetes extra (dagster-k8s and the kubernetes client): only for deploy/, ~90 MB.
install-k8s: install
	$(BIN)/pip install --quiet -e '.[k8s,dev]'

# ROOST_LLM_DEMO=1: also train (once, cached in $ROOST_HOME/llm) and serve roost-lm; 0 skips it.
up: install
	ROOST_LLM_DEMO=$${ROOST_LLM_DEMO:-1} $(BIN)/roost up

lint: install
	$(BIN)/ruff check $(PACKAGES) tests benchmarks
	$(BIN)/mypy

# pytest exits 5 when it collected nothing: that is a broken suite, never a pass.
# TEST_WORKERS pytest-xdist processes (whole files per worker, tests/e2e one unit that starts
# first: tests/conftest.py). A fresh clone's make test took 15:07 in one process last session
# and 11:42 on two (pytest 9:17). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install lint
	@$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .roost .mypy_cache .ruff_cache
