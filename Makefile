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

lint: venv
	$(VENV)/bin/ruff check carbond tests bench scripts/power-feeder

# Debian packages: installed only when missing, so a warm machine skips apt entirely.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
