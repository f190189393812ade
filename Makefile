# pypioncouch — make run | make demo | make test | make bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp
BENCH_ARGS ?= import

.PHONY: setup run demo test bench clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools>=70.1"
	# compat mode: Twisted finds the twistd plugin by scanning sys.path
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: setup
	$(BIN)/python -m pypioncouch.testing.devrun run

demo: setup
	$(BIN)/python -m pypioncouch.testing.devrun demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	command -v wrk >/dev/null || apt-get install -y -qq wrk
	$(BIN)/python -c 'import pypiserver, waitress, watchdog' 2>/dev/null || $(BIN)/pip install -q 'pypiserver[cache]>=2' waitress
	test -x $(BIN)/bandersnatch || $(BIN)/pip install -q 'bandersnatch==6.8.0'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf var build *.egg-info twisted/plugins/dropin.cache
