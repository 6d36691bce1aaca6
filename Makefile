# carbond: `make test` and `make demo` set up everything they use on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := slurmctld slurmd slurmdbd slurm-client munge mariadb-server victoria-metrics prometheus \
                python3-venv bsdutils procps util-linux time systemd-container debootstrap openssl libmariadb3
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

# Debian roots, built once under ROOTS and reused by every later run (delete one to rebuild it):
# bookworm-systemd for tests/test_systemd.py (scripts/systemd-container), and one per Slurm
# series beside the host's 22.05 (scripts/debian-root).
ROOTS ?= /var/cache/carbond/roots
export CARBOND_ROOT_CACHE := $(ROOTS)
SLURM_SUITES ?= trixie sid
TESTBED ?= $(or $(CARBOND_TESTBED_DIR),/tmp/carbond-testbed)
# What runs again on every series (only their tests marked `slurm`).
SERIES_TESTS ?= tests/test_testbed.py tests/test_slurm_io.py tests/test_e2e.py tests/test_e2e_series.py \
	tests/test_gpu_testbed.py tests/test_running_testbed.py tests/test_one_truth.py

.PHONY: test test-host test-series roots demo demo-stop bench lint deps venv clean

# The series' roots build in the background (a few minutes each) while the host's tests run.
test: deps venv
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder
	@mkdir -p $(ROOTS); for s in $(SLURM_SUITES); do \
	  scripts/debian-root $$s $(ROOTS) >/dev/null 2>$(ROOTS)/.$$s.background.err & done
	scripts/systemd-container build $(ROOTS)/bookworm-systemd
	CARBOND_TESTBED_DIR=$(TESTBED) $(PY) -m pytest -ra -p no:cacheprovider tests
	$(MAKE) --no-print-directory test-series

test-host: deps venv
	CARBOND_TESTBED_DIR=$(TESTBED) $(PY) -m pytest -ra -p no:cacheprovider tests

test-series: deps venv
	@for s in $(SLURM_SUITES); do \
	  scripts/test-slurm-series $$s $(PY) $(TESTBED) $(ROOTS) $(SERIES_TESTS) || exit 1; done

roots: deps
	scripts/systemd-container build $(ROOTS)/bookworm-systemd
	@for s in $(SLURM_SUITES); do scripts/debian-root $$s $(ROOTS); done

demo: deps venv
	scripts/demo

demo-stop:
	scripts/demo stop

bench: deps venv
	$(PY) bench/bench_footprint.py
	$(PY) bench/bench_epilog.py
	$(PY) bench/bench_ledger.py --jobs 200000

lint: venv
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder

# Debian packages: installed only when missing, so a warm machine skips apt entirely. apt waits
# for the dpkg lock (another apt, unattended-upgrades) instead of failing at once.
APT_WAIT := -o DPkg::Lock::Timeout=900
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get $(APT_WAIT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get $(APT_WAIT) install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# What the demo and the testbed leave under /tmp: only their own directories (each script checks
# its marker and refuses one in use), and VictoriaMetrics dirs of test sessions that died before
# cleaning up (no process names them and nothing in them changed for an hour).
DEMO_DIR := $(or $(CARBOND_DEMO_DIR),/tmp/carbond-demo)
TESTBED_DIR := $(or $(CARBOND_TESTBED_DIR),/tmp/carbond-testbed)

clean:
	@[ ! -d "$(DEMO_DIR)" ] || CARBOND_DEMO_DIR="$(DEMO_DIR)" scripts/demo stop
	@scripts/slurm-testbed clean "$(TESTBED_DIR)"
	@scripts/slurm-testbed clean "$(TESTBED_DIR)-systemd"
	@find /tmp -maxdepth 1 \( -name 'carbond-vm-*' -o -name 'carbond-show-*' \) -type d -mmin +60 -print | \
	  while read -r d; do grep -qsF -- "$$d/" /proc/[0-9]*/cmdline || [ -n "$$(find "$$d" -mmin -60 -print -quit)" ] || \
	    { rm -rf -- "$$d"; echo "removed $$d"; }; done
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
