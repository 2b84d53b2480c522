# lifelong set-up. Every pip call passes -c constraints.txt (torch stays on the 2.13.0 CPU build).
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test install install-test install-report bench-setup clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,report,serve]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## make install-report: matplotlib, for the plots of benchmarks/ctr_table.py
install-report: $(VENV)/.installed
	$(PIP) -e '.[report]'

$(VENV)/.installed-report: $(VENV)/.installed
	$(PIP) -e '.[report]'
	touch $@

## make demo: the library's breadth in ~2 minutes: a synthetic log -> CTR (sumpool vs din) and retrieval
## (sasrec), then the HTML report of the three runs (matplotlib, the report extra, is installed for it)
demo: $(VENV)/.installed-report
	$(VENV)/bin/lifelong demo

## make test: every test; real-data checks read ../shared/data (PYTEST_ARGS='-m "not slow"' to skip them)
test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

## make bench-setup: a separate venv with the peers (FuxiCTR 2.3.10, DeepCTR-Torch 0.3.0) for benchmarks/throughput.py
## and benchmarks/long_peers.py (keras-preprocessing: imported by the LongCTR loader in ../shared/peers/fuxictr-longctr)
bench-setup:
	test -d .venv-bench || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --disable-pip-version-check -c constraints.txt torch==2.13.0 fuxictr==2.3.10 deepctr-torch==0.3.0 keras-preprocessing==1.1.2

clean:
	rm -rf $(VENV) runs .pytest_cache
