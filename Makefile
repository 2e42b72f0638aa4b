# Two entry points for a fresh machine (Python 3.11, CPU):
#   make demo   set up .venv and run the main job (certified training on the embedded digits, ~1 minute)
#   make test   set up .venv and run the tests (the same command .ci/run runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the local CPU build on these machines; the package itself accepts torch>=2.2.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-slow test-interop lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/absc train specs/digits.absnet --out runs

test: venv
	$(BIN)/ruff check absnet tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# the optional TensorFlow backend against the torch backend (installs the tensorflow extra)
test-interop: venv
	$(BIN)/python -m pip install -q -e '.[tensorflow]'
	$(BIN)/python -m pytest -q -m "not slow" tests/backends/test_tensorflow.py

clean:
	rm -rf $(VENV) build *.egg-info
