# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The Node socket.io server is a second real peer for the Socket.IO client's
# tests; installed here when npm exists (the tests skip, saying why, otherwise).
NODE_STAMP := $(VENV)/.node-installed
export NODE_PATH := $(abspath $(VENV))/node/node_modules
ARGS   ?=

.PHONY: run test venv demo cluster-demo bench clean browser engines sipp

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

## Start the daemon in the foreground on its embedded defaults (etc/gateway.toml).
run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= --logger gateway.logs.text gateway $(ARGS)

$(NODE_STAMP): $(STAMP)
	if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node socket.io@4 \
	    || echo "npm install socket.io failed: the Node socket.io tests will be skipped"; \
	fi
	touch $(NODE_STAMP)

## Debian's Chromium and ChromeDriver for the status page's browser test: installed when missing and
## run as root (CI); otherwise that test is skipped and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } \
	      || echo "installing chromium failed: the browser test will be skipped"; \
	  else \
	    echo "chromium or chromedriver missing (not root, not installed): the browser test will be skipped"; \
	  fi; \
	fi

## Debian's Redis and PostgreSQL for the real-engine tests (tests/engines.py starts its own servers in
## temporary directories; a policy-rc.d keeps apt from starting the system services): installed
## when missing and run as root (CI). Not root and missing: those tests skip, saying why (under CI they fail instead).
engines:
	@if ! command -v redis-server >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    made_policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1; \
	    fi; \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server postgresql; } \
	      || echo "installing redis-server and postgresql failed: the engine tests will fail under CI"; \
	    if [ -n "$$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  else \
	    echo "redis-server or postgresql missing (not root, not installed): the engine tests will be skipped"; \
	  fi; \
	fi

## Debian's SIPp (package sip-tester) for the SIP tests against a real peer: installed when missing
## and run as root (CI); otherwise those tests are skipped and say why.
sipp:
	@if ! command -v sipp >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y sip-tester; } \
	      || echo "installing sip-tester failed: the sipp tests will be skipped"; \
	  else \
	    echo "sipp missing (not root, not installed): the sipp tests will be skipped"; \
	  fi; \
	fi

## Run the whole test suite.
test: $(STAMP) $(NODE_STAMP) browser engines sipp
	$(BIN)/python -m pytest $(ARGS)

## Run the daemon with every peer simulated and play a narrated scenario (ARGS=--once: play once, then exit).
demo: $(STAMP)
	$(BIN)/python -m gateway.demo $(ARGS)

## Two gateway nodes as one cluster on a real Redis and PostgreSQL (installed by `engines` when root),
## with the simulators, playing a narrated scenario across the nodes; stays up until Ctrl-C
## (ARGS=--once: play once, then exit).
cluster-demo: $(STAMP) engines
	$(BIN)/python -m gateway.demo_cluster $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info var _trial_temp*
