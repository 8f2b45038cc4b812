# Two commands for a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
APT_PACKAGES := dnsmasq-base

.PHONY: help setup system-deps test quick lint typecheck unit demo bench protos clean

help:
	@echo "make demo   - set up and run a local multi-node network with progress and a summary"
	@echo "make test   - set up and run the whole suite (lint, types, tests)"
	@echo "make quick  - lint, types and the tests not marked slow (no NAT lab, no js, no CLI processes)"
	@echo "make bench  - run the benchmarks (figures go to bench/RESULTS.md by hand)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP) system-deps

# Debian packages the tests use (a real dnsmasq for DNS seeds). Installed only when root;
# otherwise the tests that need them say what to install and skip.
system-deps:
	@missing=""; command -v dnsmasq >/dev/null 2>&1 || missing="$$missing dnsmasq-base"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || \
	    echo "warning: could not install$$missing"; \
	  else echo "note: install$$missing (as root) to run the DNS seed tests"; fi; \
	fi
	@if [ "$$(id -u)" = 0 ]; then $(PYTHON) -m interop.natlab install; \
	else echo "note: the NAT lab tests need root (network namespaces)"; fi
	@if command -v npm >/dev/null 2>&1; then \
	  [ interop/js/node_modules/.package-lock.json -nt interop/js/package-lock.json ] || \
	  (cd interop/js && npm ci --no-audit --no-fund --loglevel=error) || echo "warning: npm ci in interop/js failed"; \
	  [ interop/autonat_v2/node_modules/.package-lock.json -nt interop/autonat_v2/package-lock.json ] || \
	  (cd interop/autonat_v2 && npm ci --no-audit --no-fund --loglevel=error) || echo "warning: npm ci in interop/autonat_v2 failed"; \
	else echo "note: install Node.js 20 and npm to run the js-libp2p interop tests"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check prozchain_discovery tests bench examples interop
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy prozchain_discovery interop/natlab interop/mesh.py interop/procs.py interop/forger.py interop/py_relay.py interop/relay_check.py interop/crowd.py

# -n: tests run in 3 worker processes (most of a test's time is waiting on sockets and child
# processes, so more workers than the 2 cores of a small machine still pays); --dist loadgroup
# keeps the tests that share a machine-wide resource on one worker (tests/conftest.py).
unit: setup
	$(PY) -m pytest -q -n 3 --dist loadgroup -m "not exclusive"
	$(PY) -m pytest -q -m exclusive

test: setup lint typecheck unit

quick: $(STAMP) lint typecheck
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m prozchain_discovery demo --nodes 30

bench: setup
	$(PY) bench/bench_shipped.py
	$(PY) bench/bench_join.py --no-dht
	$(PY) bench/bench_peerdb.py
	$(PY) bench/bench_dnsseed.py $$([ "$$(id -u)" = 0 ] || echo --delays 0)

# Regenerate wire/pb from protocols/*.proto (needs grpcio-tools; output is committed).
protos:
	@test -x /tmp/prozchain-protoc/bin/python || ($(PYTHON) -m venv /tmp/prozchain-protoc && /tmp/prozchain-protoc/bin/pip install -q 'grpcio-tools==1.76.*')
	tmp=$$(mktemp -d); /tmp/prozchain-protoc/bin/python -m grpc_tools.protoc \
	  --proto_path=prozchain/discovery/v1=protocols --python_out=$$tmp --pyi_out=$$tmp \
	  prozchain/discovery/v1/bootstrap.proto prozchain/discovery/v1/pex.proto \
	  prozchain/discovery/v1/autonat-v2.proto prozchain/discovery/v1/stun-service.proto \
	  prozchain/discovery/v1/dcutr.proto && \
	  mv $$tmp/prozchain/discovery/v1/* prozchain_discovery/wire/pb/ && rm -rf $$tmp

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-out *.egg-info
