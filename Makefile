# Two commands do everything on a fresh machine (each creates .venv when it is missing):
#   make book   -> executes every notebook (CPU, embedded data, no internet) and renders _build/html/index.html
#   make test   -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.eacnn-installed

.PHONY: env test book book-smoke bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build (on this machine pip takes it from a local file)
	$(PY) -m pip install -q -c constraints/cpu.txt torch
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[all]"
	@touch $(STAMP)

env: $(STAMP)

# pytest's exit code 5 (no tests collected) is a failure: a green run must have run tests.
test: $(STAMP)
	@$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

book: $(STAMP)
	$(PY) -m eacnn book --profile cpu

book-smoke: $(STAMP)
	$(PY) -m eacnn book --profile smoke

bench: $(STAMP)
	$(PY) benchmarks/bench_xrd.py

clean:
	rm -rf _build .cache
