# diffusion_lab — every target bootstraps what it needs on a fresh machine.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser train test test-all slurm-test lint format bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch/torchvision first: on the dev/CI machines pip takes these two from local disk.
	$(VPY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(VPY) -m pip install -q torch torchvision
	# bench: diffusers and denoising-diffusion-pytorch, which the sampler cross-checks compare against;
	# slurm, ray: the cluster launchers, which the tests run on a local SLURM cluster and a local Ray instance.
	$(VPY) -m pip install -q -e ".[dev,bench,slurm,ray]"
	touch $(STAMP)

# Fashion-MNIST from Debian's `dataset-fashion-mnist` package (offline-capable mirror).
data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Headless Chromium and its driver for the HTML report's browser test (tests/test_report_browser.py), from
# Debian's packages; selenium (the dev extra) drives them.
CHROMEDRIVER := /usr/bin/chromedriver
browser: $(CHROMEDRIVER)
$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium chromium-driver

train: setup
	$(VPY) -m diffusion_lab.train experiment=fmnist_cpu $(ARGS)

# One pytest worker per core (pytest-xdist): many tests wait on a subprocess's imports, one core's work each, so
# two workers on the 2-core CI machine run the suite in 9-12 minutes instead of 19 (same tests, same result).
test: setup browser
	$(VPY) -m pytest -q -n auto -m "not slow" $(ARGS)

test-all: setup browser
	$(VPY) -m pytest -q $(ARGS)

# A single-node SLURM cluster on this machine (scripts/slurm_local.sh: slurm-wlm and munge from apt, needs root
# or sudo), the tests that submit jobs to it, then the cluster stopped again.
slurm-test: setup
	scripts/slurm_local.sh start
	$(VPY) -m pytest -q -m slurm $(ARGS); status=$$?; scripts/slurm_local.sh stop; exit $$status

lint: setup
	$(VENV)/bin/ruff check src tests experiments
	$(VENV)/bin/ruff format --check src tests experiments

format: setup
	$(VENV)/bin/ruff check --fix src tests experiments
	$(VENV)/bin/ruff format src tests experiments

bench: setup
	$(VPY) -m diffusion_lab.bench $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
