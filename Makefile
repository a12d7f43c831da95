# The two commands: `make demo` and `make test`. Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
export USE_TF := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test bench lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24"

# One stamp per extra set; re-installs when pyproject.toml changes.
$(VENV)/.installed-core: pyproject.toml | $(PY)
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-all: pyproject.toml | $(PY)
	$(PIP) install -e ".[data,test,bench,mkl]"
	@touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(PY) -m xstilts.demo

test: $(VENV)/.installed-all
	$(PY) -m pytest -q -n 2 --durations=15

bench: $(VENV)/.installed-all
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/retrieval.py
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/finetune_throughput.py --quick

lint: $(VENV)/.installed-all
	$(VENV)/bin/ruff check xstilts tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
