# carbond: `make test` and `make demo` set up everything they use on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := slurmctld slurmd slurmdbd slurm-client munge mariadb-server victoria-metrics prometheus \
                python3-venv bsdutils procps util-linux time debootstrap
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

# Slurm series beside the host's 22.05: each runs from a Debian root built once under ROOTS.
ROOTS ?= /var/cache/carbond/roots
SLURM_SUITES ?= trixie sid
TESTBED ?= $(or $(CARBOND_TESTBED_DIR),/tmp/carbond-testbed)
# What runs again on every series (only their tests marked `slurm`).
SERIES_TESTS ?= tests/test_testbed.py tests/test_slurm_io.py tests/test_e2e.py tests/test_e2e_series.py

.PHONY: test test-host test-series roots demo demo-stop bench lint deps venv clean

# The roots build in the background (a few minutes each) while the host's tests run.
test: deps venv
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder
	@mkdir -p $(ROOTS); for s in $(SLURM_SUITES); do \
	  scripts/debian-root $$s $(ROOTS) >/dev/null 2>$(ROOTS)/.$$s.background.err & done
	CARBOND_TESTBED_DIR=$(TESTBED) $(PY) -m pytest -ra -p no:cacheprovider tests
	$(MAKE) --no-print-directory test-series

test-host: deps venv
	CARBOND_TESTBED_DIR=$(TESTBED) $(PY) -m pytest -ra -p no:cacheprovider tests

test-series: deps venv
	@for s in $(SLURM_SUITES); do \
	  scripts/test-slurm-series $$s $(PY) $(TESTBED) $(ROOTS) $(SERIES_TESTS) || exit 1; done

roots:
	@for s in $(SLURM_SUITES); do scripts/debian-root $$s $(ROOTS); done

demo: deps venv
	scripts/demo

demo-stop:
	scripts/demo stop

bench: deps venv
	$(PY) bench/bench_footprint.py
	$(PY) bench/bench_epilog.py

lint: venv
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder

# Debian packages: installed only when missing, so a warm machine skips apt entirely.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get -o DPkg::Lock::Timeout=900 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
