# Two entry points: `make demo` (train with the default configuration) and `make test`.
# Both create .venv on first use and install fedpriv with its dependencies into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

# torch (needed by opacus's accountants) is pinned to its CPU build so no CUDA build is pulled.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,joblib,submitit,optuna]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedpriv-train

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
