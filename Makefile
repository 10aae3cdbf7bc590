# The two set-up commands: `make demo` and `make test`. Both create .venv when
# it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/hello_workflow.py data

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
	$(MAKE) --no-print-directory check

check: lint typecheck

lint: $(STAMP)
	$(PY) -m ruff check nerve tests bench examples
	$(PY) -m ruff format --check nerve tests bench examples

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	-$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

soak: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
