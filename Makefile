# perpflow: `make demo` sets everything up and runs the demo; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test ui bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "perpflow needs Python 3.11+; run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv installs the same pinned ranges in seconds (pip takes half a minute); pip if uv cannot.
	$(BIN)/python -m pip install -q uv && $(BIN)/python -m uv pip install -q --python $(BIN)/python -e '.[test]' \
	  || { $(BIN)/python -m pip install -q --upgrade pip && $(BIN)/python -m pip install -q -e '.[test]'; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/perpflow demo

# Two workers, each test file on one of them (its module fixtures run once): most integration tests
# wait on paced simulators, so two files side by side roughly halve the wall time on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

ui: $(STAMP)
	$(BIN)/perpflow ui

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache
