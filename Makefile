# edgeloop: single entry points, the same on a laptop and in CI (.ci/run calls `make test`).
# From a fresh clone on Debian/Ubuntu (root or sudo): `make test`, `make demo`.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp-edge-bridge-dev
STAMP_TRAIN := $(VENV)/.stamp-train
# Tested upper bounds (numpy, OpenCV, LiteRT, ...): the venv the tests run in is installed with them.
CONSTRAINTS := devices/boards/constraints-edge.txt

# binary:debian-package -- a package is installed only when its binary is missing.
SERVER_DEPS := mosquitto:mosquitto mosquitto_pub:mosquitto-clients influxd:influxdb \
               influx:influxdb-client victoria-metrics:victoria-metrics systemd-analyze:systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help deps venv venv-train test test-unit test-integration test-e2e mutate demo bench reliability model docs dist clean distclean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'
	@echo "  variables: PYTHON=$(PYTHON) PYTEST_ARGS= DEMO_ARGS= BENCH_ARGS= MUTATE_ARGS="

deps: ## apt-get install the test servers and python3-venv, only what is missing
	@missing=""; \
	for pair in $(SERVER_DEPS); do \
	  bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	  missing="$$missing python3 python3-venv"; \
	elif [ ! -x $(VENV)/bin/pip ]; then \
	  tmp=$$(mktemp -d); \
	  $(PYTHON) -m venv $$tmp/v >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	  rm -rf $$tmp; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP) ## .venv with the edge, vision, bridge and dev extras (rebuilt when pyproject.toml changes)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@[ -x $(VENV)/bin/pip ] || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install -c $(CONSTRAINTS) -e '.[edge,vision,bridge,dev,sparkplug]'
	@# The Sparkplug tests build their messages with a third-party library, pysparkplug (its payload
	@# classes only). It pins paho-mqtt<2 for its own client, which edgeloop does not use, so it cannot
	@# be in the dev extra (pip would refuse paho-mqtt>=2.1): installed without its dependencies.
	$(VENV)/bin/pip install --no-deps 'pysparkplug==0.6.1'
	@touch $@

venv-train: $(STAMP_TRAIN) ## .venv plus the train extra (tensorflow-cpu, large; for `make model`, `make demo`)
	@# The stamp says it was installed once; a venv that lost TensorFlow since (pip uninstall, a
	@# rebuilt venv with an old stamp) is repaired here, so `make demo` never runs without it.
	@$(PY) -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tensorflow") is None)' 2>/dev/null || \
	  $(VENV)/bin/pip install -c $(CONSTRAINTS) -e '.[edge,vision,bridge,dev,sparkplug,train]'

$(STAMP_TRAIN): $(STAMP) pyproject.toml $(CONSTRAINTS)
	$(VENV)/bin/pip install -c $(CONSTRAINTS) -e '.[edge,vision,bridge,dev,sparkplug,train]'
	@touch $@

test: deps venv-train ## every test tier (PYTEST_ARGS=... passes through; the closed-loop e2e trains: train extra)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-unit: venv ## tests/unit: pure logic, no servers
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: deps venv-train ## tests/integration: real mosquitto, influxd, VictoriaMetrics (the retrain tests train: train extra)
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

test-e2e: deps venv-train ## tests/e2e: the whole loop (retraining needs the train extra)
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

mutate: deps venv-train ## break each promise on purpose (tests/mutants/*.toml); report -> docs/testing.md; not in `make test` (MUTATE_ARGS=...)
	$(PY) -m lab.mutate $(MUTATE_ARGS)

demo: deps venv-train ## the closed-loop demo, ~4 min (DEMO_ARGS="--no-drift --duration 30": the ingest demo; --check)
	$(PY) -m lab.demo $(DEMO_ARGS)

bench: deps venv ## run the benchmarks (BENCH_ARGS=... passes through)
	$(PY) -m benchmarks $(BENCH_ARGS)

reliability: deps venv ## kill brokers, bridges, edges, InfluxDB mid-stream; table -> docs/reliability.md (RELIABILITY_ARGS=...)
	$(PY) -m benchmarks.reliability $(RELIABILITY_ARGS)

docs: venv ## regenerate docs/configuration.md and the Grafana dashboards (tests fail when they are stale)
	$(PY) docs/gen_config_reference.py
	$(PY) docker/grafana/generate.py

model: deps venv-train ## train and convert the bundled models on simulated data: vibration AE, camera classifier, climate AE (lab/models.py)
	$(PY) -m lab.models
	$(PY) -m lab.models --vision
	$(PY) -m lab.models --climate

dist: ## build the wheel and the sdist into dist/ (needs only PyPA build; install: README, "Installing on a device")
	@[ -x $(VENV)/bin/pip ] || $(PYTHON) -m venv --clear $(VENV)
	@$(PY) -c 'import build' 2>/dev/null || $(VENV)/bin/pip install -q 'build>=1.2'
	rm -rf dist
	$(PY) -m build --outdir dist .

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .demo
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
