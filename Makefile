# carbond: `make test` and `make demo` set up everything they use on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := slurmctld slurmd slurmdbd slurm-client munge mariadb-server victoria-metrics prometheus \
                python3-venv bsdutils procps util-linux time systemd-container debootstrap
# Debian roots for container tests (tests/test_systemd.py), built once by scripts/systemd-container
# and reused by every later run; delete a root's directory to rebuild it.
ROOT_CACHE ?= /var/cache/carbond/roots
export CARBOND_ROOT_CACHE := $(ROOT_CACHE)
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

.PHONY: test demo demo-stop bench lint deps venv clean roots

test: deps venv roots
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder
	$(PY) -m pytest -ra -p no:cacheprovider tests

# The cached Debian 12 root with systemd that tests/test_systemd.py boots (the test builds it too).
roots: deps
	scripts/systemd-container build $(ROOT_CACHE)/bookworm-systemd

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
	@find /tmp -maxdepth 1 \( -name 'carbond-vm-*' -o -name 'carbond-show-*' \) -type d -mmin +60 -print | \
	  while read -r d; do grep -qsF -- "$$d/" /proc/[0-9]*/cmdline || [ -n "$$(find "$$d" -mmin -60 -print -quit)" ] || \
	    { rm -rf -- "$$d"; echo "removed $$d"; }; done
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
