# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: demo test test-all clean-venv

$(STAMP): setup.py requirements/constraints.txt
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medft demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not gpu"

clean-venv:
	rm -rf $(VENV)
