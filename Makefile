# The two commands of the README:
#   make run    set up .venv on a fresh machine and run dashd on :8080
#   make test   set up .venv and run the whole test suite
# ARGS are passed to dashd (make run ARGS="--listen tcp:9000"), PYTEST_ARGS
# to pytest (make test PYTEST_ARGS="-k shadow").
#   make bench  the benchmark (docs/performance.md); BENCH_ARGS="--quick" for
#               a short run. Needs wrk (it offers to apt-get install it).

PYTHON ?= python3
VENV := .venv
READY := $(VENV)/.ready
# The browser tests drive Debian's Chromium (Playwright cannot download one
# here); installed once, as root, when it is missing.
CHROMIUM := /usr/bin/chromium

.PHONY: run test tools bench clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# compat mode puts the checkout on sys.path, where twistd finds
	# twisted/plugins/dashd_plugin.py.
	$(VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(READY)

run: $(READY)
	$(VENV)/bin/twistd -n --pidfile= dashd $(ARGS)

$(CHROMIUM):
	@if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	echo "Installing Debian's chromium for the browser tests"; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null

test: $(READY) $(CHROMIUM) tools
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# What the tests need beyond pip: systemd-analyze (Debian's systemd package)
# to verify systemd/*.service and *.socket, and ss (iproute2) to read a
# listening socket's backlog, and haproxy to run etc/haproxy.cfg as shipped
# in front of a test cluster. Nothing happens when they are there.
tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	    echo "installing Debian's systemd package for systemd-analyze"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; }
	@command -v ss >/dev/null 2>&1 || { \
	    echo "installing Debian's iproute2 package for ss"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2; }
	@command -v haproxy >/dev/null 2>&1 || { \
	    echo "installing Debian's haproxy package"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }

bench: $(READY)
	$(VENV)/bin/python -m bench --install-wrk $(BENCH_ARGS)

clean:
	rm -rf $(VENV) dashd-data .pytest_cache .hypothesis
