# Two commands on a fresh Debian/Ubuntu machine:
#   make demo   the whole flow on the embedded default (no server to install)
#   make test   installs what the tests need, then runs them
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
DEBIAN_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-python redis-server
# The Debian packages' executables, checked to decide whether apt-get must run.
DEBIAN_COMMANDS := storescu dciodvfy Orthanc redis-server
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo test venv debian-packages bench clean

demo: $(VENV)/.installed
	$(BIN)/libra-node demo

test: debian-packages $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: debian-packages $(VENV)/.installed
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/latency.py

venv: $(VENV)/.installed

# torch is pinned to the CPU build first: a looser requirement would pull a
# CUDA build of several GB that tests and the demo do not need.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "libra-node needs Python 3.11 or newer ($(PYTHON) is older); run make PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "installing python3-venv"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

debian-packages:
	@missing=0; for c in $(DEBIAN_COMMANDS); do \
	  command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || missing=1; done; \
	for p in orthanc-dicomweb orthanc-python; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBIAN_PACKAGES); \
	fi

clean:
	rm -rf $(VENV) .pytest_cache libra-state demo-output
