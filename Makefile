# pyroopt: two commands for a new user, `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.pyroopt-installed
SOURCES := pyroopt tests tutorials benchmarks

# The API reference, warnings as errors; `make test` builds it too.
docs: install
	PYTHONPATH=. $(PY) docs/pyro_map.py > docs/pyro_optim.rst
	$(PY) docs/tutorial_pages.py
	PYTHONPATH=. $(PY) -m sphinx -W --keep-going -q -E -b html docs docs/_build/html

.PHONY: docs install test test-fast lint format bench demo tutorials tutorial-plots clean

install: $(STAMP)

# Rebuilt only when the package metadata, the pins, the horovod build or the C source
# of the native kernels change, so a second `make install` does nothing.
$(STAMP): setup.cfg pyproject.toml constraints.txt pyroopt/horovod_build.py $(wildcard pyroopt/native/*.c pyroopt/native/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch pyro-ppl
	PYTHONPATH=. $(PY) -m pyroopt.horovod_build
	$(PIP) install --quiet -c constraints.txt -e '.[horovod,test,dev,tutorials]'
	$(PY) -m pyroopt.native
	$(PY) -c "import pyroopt, horovod.torch; print('pyroopt', pyroopt.__version__, 'installed in $(VENV)')"
	touch $@

test: install docs
	$(PY) -m pytest

# Everything but the tests marked slow (tutorials, multi-process runs, the wheel build).
test-fast: install docs
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy pyroopt

format: install
	$(VENV)/bin/ruff check --fix $(SOURCES)
	$(VENV)/bin/ruff format $(SOURCES)

bench: install
	$(PY) -m benchmarks.run

demo: install
	$(PY) tutorials/01_getting_started.py

tutorials: install
	for t in tutorials/[0-9]*.py; do $(PY) $$t || exit 1; done

# Run every tutorial in full and keep its plots for the docs site (docs/tutorial_plots/).
tutorial-plots: install
	rm -rf docs/tutorial_plots
	for t in tutorials/[0-9]*.py; do PYROOPT_OUT=docs/tutorial_plots MPLBACKEND=Agg $(PY) $$t || exit 1; done
	find docs/tutorial_plots -type f ! -name '*.png' -delete

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
