# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
TORCH     ?= 2.13.0
STAMP     := $(VENV)/.ntkal-installed
DEMO_OUT  ?= runs/digits

.PHONY: install datasets browser demo test test-all docs lint lint-fix bench bench-ray gpu-suite mutants clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "==> installing torch==$(TORCH) (CPU) first, then ntkal"
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

datasets:
	@bash scripts/install_datasets.sh

# Headless Chromium for the labelling page's browser test (skipped when it cannot be installed).
browser:
	@bash scripts/install_browser.sh

# Label Studio in .venv-labelstudio for the Label Studio integration test (skipped when it cannot
# be installed); its pins never touch ntkal's environment.
.PHONY: labelstudio
labelstudio:
	@bash scripts/install_labelstudio.sh

demo: install datasets
	$(VENV)/bin/ntkal run configs/digits.yml --out $(DEMO_OUT)

test: install datasets browser labelstudio
	$(PY) -m pytest -q

test-all: install datasets browser
	$(PY) -m pytest -q -m ""

# The API reference from the numpydoc docstrings, into site/ (warnings are errors, as in make test).
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

# ruff (lint + format check) and mypy with the settings in pyproject.toml, as make test runs them.
lint: install
	@status=0; \
	$(VENV)/bin/ruff check src tests || status=1; \
	$(VENV)/bin/ruff format --check src tests || status=1; \
	$(VENV)/bin/mypy src || status=1; \
	exit $$status

# The mechanical fixes: ruff's formatter, then its automatic fixes (make lint lists what is left).
lint-fix: install
	$(VENV)/bin/ruff format src tests
	-$(VENV)/bin/ruff check --fix --unsafe-fixes src tests
	$(VENV)/bin/ruff format src tests

bench: install datasets
	$(PY) benchmarks/kernels.py
	$(PY) benchmarks/fidelity.py
	$(PY) benchmarks/lookahead_speed.py
	$(PY) benchmarks/pool_scale.py
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/strategies_speed.py

bench-ray: install
	$(PY) benchmarks/ray_sweep.py

gpu-suite: install
	PYTHON=$(PY) bash benchmarks/gpu_suite.sh

# Mutation testing of lookahead/, strategies/ and kernels/, each group against its own tests
# (scripts/mutants.py; MUTANTS_ARGS e.g. "--groups strategies --time-cap 900"). Survivors:
# benchmarks/results/mutants.txt and .json; explanations in benchmarks/results/mutants.md.
MUTANTS_ARGS ?=
mutants: install
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,mutation]'
	$(PY) scripts/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .mypy_cache .ruff_cache
