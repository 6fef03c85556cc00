# make demo / make test work on a fresh machine: the venv is created on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.regionclip-installed

.PHONY: demo test test-all bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The torch/torchvision pair that runs here; pyproject keeps open ranges for users.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/regionclip demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) benchmarks/zeroshot_inference.py --out bench_output/zeroshot_inference.json
	$(PY) benchmarks/world_generation.py --out bench_output/world_generation.json

clean-venv:
	rm -rf $(VENV)
