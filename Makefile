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

.PHONY: run test bench clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# compat mode puts the checkout on sys.path, where twistd finds
	# twisted/plugins/dashd_plugin.py.
	$(VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(READY)

run: $(READY)
	$(VENV)/bin/twistd -n --pidfile= dashd $(ARGS)

test: $(READY)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(READY)
	$(VENV)/bin/python -m bench --install-wrk $(BENCH_ARGS)

clean:
	rm -rf $(VENV) dashd-data .pytest_cache .hypothesis
