# pypioncouch — make run | make demo | make test | make bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp
WHEELHOUSE := $(VENV)/wheelhouse
BENCH_ARGS ?= import
# Debian packages the tests use: chromium (browse UI), systemd (systemd-analyze verify),
# curl and procps (the Apache CouchDB start scripts in ../shared/couchdb).
DEBIAN_COMMANDS := chromium:chromium systemd-analyze:systemd curl:curl pgrep:procps

.PHONY: setup system-packages run demo test bench clean

setup: $(STAMP) $(NODE_STAMP) $(WHEELHOUSE)/.stamp

# A venv left half-made (Debian without python3-venv stops at ensurepip) or made by an
# older Python is made again.
$(STAMP): setup.py
	$(BIN)/python -c 'import pip, sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { \
		$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { \
			echo "pypioncouch needs Python 3.11 or newer: make PYTHON=python3.11 ..."; exit 1; }; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) || { \
			echo "no venv: on Debian/Ubuntu, sudo apt-get install python3-venv"; exit 1; }; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools>=70.1"
	# compat mode: Twisted finds the twistd plugin by scanning sys.path
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

# The dependencies as wheels: the installed-package test installs the built wheel
# into a fresh venv from here, without reaching PyPI.
$(WHEELHOUSE)/.stamp: setup.py | $(STAMP)
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-build-isolation \
		-w $(WHEELHOUSE) .
	rm -f $(WHEELHOUSE)/pypioncouch-*.whl  # the test builds its own, from the tree
	touch $@

# Installs what is missing when root; otherwise names it in one line.
system-packages:
	@missing=""; for pair in $(DEBIAN_COMMANDS); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "make test: some tests need Debian packages; install them with: sudo apt-get install$$missing"; fi

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The embedded server (npm) only when COUCH names no CouchDB of your own.
run demo: $(STAMP) $(if $(COUCH),,$(NODE_STAMP))
	$(BIN)/python -m pypioncouch.testing.devrun $@

test: setup system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) $(NODE_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } \
		|| echo "make bench: the web benchmarks need wrk: sudo apt-get install wrk"
	$(BIN)/python -c 'import pypiserver, waitress, watchdog' 2>/dev/null || $(BIN)/pip install -q 'pypiserver[cache]>=2' waitress
	test -x $(BIN)/bandersnatch || $(BIN)/pip install -q 'bandersnatch==6.8.0'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf var build *.egg-info twisted/plugins/dropin.cache
