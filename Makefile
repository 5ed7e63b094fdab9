# The two set-up-and-run commands of the README.
#
#   make demo   the main job: the offline smoke sweep and its Figure-5 plot and table (runs/smoke)
#   make test   lint and the test suite
#
# Each first makes the virtual environment .venv with the system Python (`python3 -m venv`: a
# Debian/Ubuntu system Python refuses `pip install` outside one, PEP 668) and installs the package
# into it, editable, with the test tools. Installing happens again only when pyproject.toml changes
# (the stamp file .venv/.installed is older). Nothing needs an activated environment.
#
#   make test PYTEST_ARGS='tests/test_cli.py -x'   pass arguments to pytest
#   make demo PYTHON=python3.12                    build .venv with another interpreter (>= 3.11)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install

demo: $(STAMP)
	$(BIN)/mnv2 sweep run sweeps/smoke.py --workdir runs/smoke --plot fig5,table

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "mnv2_jax needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	       "Run make with PYTHON=python3.11 (or newer)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "Could not create $(VENV). Debian/Ubuntu: apt-get install python3-venv, then rerun." >&2; \
	  exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)
