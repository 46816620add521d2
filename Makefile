# eucalypt — quick start: `make run` (start the cloud), `make test` (run the suite).
# `make setup` is idempotent: Debian packages (when root), a venv in .venv, the project.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  ?= ./var
# Debian/Ubuntu packages the project needs at run and test time.
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev qemu-utils openssl gzip tar e2fsprogs curl \
                qemu-system-x86 libvirt-daemon-system libvirt-clients dnsmasq-base nftables iproute2 cpio chromium iputils-ping

.PHONY: setup apt run demo test bench clean

setup: apt $(VENV)/.installed

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "please run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The whole cloud on this host (control :8773, Walrus :8774, a node :8775) until Ctrl-C;
# admin credentials in $(STATE)/credentials/admin (source its eucarc). UP_ARGS: more options.
run: setup
	$(VENV)/bin/eucalypt up --state-dir $(STATE) $(UP_ARGS)

# The README walkthrough (bundle, register, run the demo guest) against a running `make run`.
demo: setup
	bash demo/walkthrough.sh $(STATE)

# pytest exits 5 when it collected no tests: that must fail, not pass silently.
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

# Walrus against nginx/moto/s3rver (and the bundle tools), then the image cache, the node and control.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/imagecache_bench.py
	$(PY) bench/node_bench.py
	$(PY) bench/control_bench.py
	$(PY) bench/network_bench.py

clean:
	rm -rf $(VENV) $(STATE) .pytest_cache
