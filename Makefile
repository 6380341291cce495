# patrol — `make demo` and `make test` work on a fresh machine: they install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install system-deps lint format test test-unit test-integration demo bench schemas clean
.PHONY: deploy-tools deploy-images deploy-check deploy-cluster-tools deploy-cluster-check chaos soak

help:
	@echo "make demo   - start a local broker (unless PATROL_KAFKA_BOOTSTRAP reaches one), the SMS gateway,"
	@echo "              the worker and both simulators, and show what happens"
	@echo "make test   - install, lint (ruff, mypy, promtool), start a broker, run every test, stop it"
	@echo "make lint | make bench | make schemas | make clean"
	@echo "make deploy-check - the deploy checks alone: hadolint, the image and compose runs, kubeconform"
	@echo "make deploy-cluster-check - opt-in, not in make test: build kube-apiserver, etcd and kwok once (10-20 min),"
	@echo "              then server-side dry-run of the manifests and a drain against the PodDisruptionBudget"
	@echo "make chaos  - the kill / broker-restart / gateway-fault campaign on a fresh broker (CHAOS_ARGS='--duration 300 --kills 12 --seed 7')"
	@echo "make soak   - opt-in, not in make test: one worker at 4x the county's rate for an hour (48 h of event time) on a"
	@echo "              fresh broker; RSS, open cases and changelog keys judged (SOAK_ARGS='--duration 300 --event-hours 4')"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP) system-deps

# Java and Maven run the local Kafka broker; Prometheus (with promtool) checks metrics and rules.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || { echo "could not install$$missing; install them by hand"; exit 1; }; \
	fi

lint: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	promtool check config patrol/data/prometheus/prometheus.yml
	promtool check rules patrol/data/prometheus/alerts.yml
	promtool test rules patrol/data/prometheus/alerts_test.yml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	scripts/with-test-services $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test-integration: install
	scripts/with-test-services $(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

demo: install
	$(BIN)/patrol demo

bench: install
	scripts/with-test-services $(BIN)/python -m bench

chaos: install
	scripts/chaos $(CHAOS_ARGS)

soak: install
	scripts/soak $(SOAK_ARGS)

schemas: $(STAMP)
	$(BIN)/patrol schemas --out schemas

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info

# Deploy checks (deploy/, tests/deploy/): podman, podman-compose, hadolint, kubeconform and the
# images they run, all made on this machine; `make test` runs them with the other tests.
deploy-tools:
	scripts/deploy-tools

deploy-images: $(STAMP) system-deps deploy-tools
	scripts/deploy-test-images

deploy-check: deploy-images
	scripts/with-test-services $(BIN)/pytest -q -p no:cacheprovider tests/deploy $(PYTEST_ARGS)

# Opt-in (not part of `make test`): a real control plane on loopback, built once from the
# Kubernetes Go modules under ~/.cache/patrol/deploy/cluster; see docs/operations.md, Checks.
deploy-cluster-tools:
	scripts/deploy-cluster-tools

deploy-cluster-check: deploy-cluster-tools
	scripts/deploy-cluster-check

test: deploy-images
