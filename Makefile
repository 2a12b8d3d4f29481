# cri-async: `make run` sets up and serves on the default config; `make test` sets up and
# runs every check. Both work as root on a fresh Debian 12 machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: setup run-deps test-deps run test lint unit proto bench clean

# System packages first (python3-venv on a bare Debian), then the project into .venv.
$(STAMP): pyproject.toml
	@if ! command -v $(PY) >/dev/null || ! $(PY) -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "setup: installing python3 and python3-venv from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; \
	fi
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP)

# What real containers need (the default handlers are runc and crun, under conmon), and
# what the tests also run for real: a CNCF registry, a static busybox for test images,
# containerd's package for containerd-shim-runc-v2 (the shim v2 tests; no containerd daemon),
# and systemd for `systemd-analyze verify` of the unit `cri-async install-service` writes.
RUN_DEBS := runc crun runsc catatonit conmon iproute2 util-linux containernetworking-plugins iptables
TEST_DEBS := $(RUN_DEBS) docker-registry busybox-static containerd systemd
define apt_ensure
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef
run-deps:
	$(call apt_ensure,$(RUN_DEBS))
test-deps:
	$(call apt_ensure,$(TEST_DEBS))

CNI_CONF := /etc/cni/net.d/10-cri-async.conflist
run: setup run-deps
	@if [ -z "$$(ls /etc/cni/net.d 2>/dev/null)" ]; then \
		mkdir -p /etc/cni/net.d && $(BIN)/cri-async config --cni-default > $(CNI_CONF) && \
		echo "run: installed the default pod network $(CNI_CONF)"; \
	fi
	$(BIN)/cri-async serve $(if $(CONFIG),--config $(CONFIG))

lint: setup
	$(BIN)/ruff check cri_async tests scripts bench
	$(BIN)/ruff format --check cri_async tests scripts bench
	$(BIN)/mypy

unit: setup test-deps
	$(BIN)/python -m pytest -q

test: lint unit

proto: setup
	$(BIN)/python scripts/gen_proto.py

# cri-async against containerd on this machine, one table (bench/suite.py; bench/README.md).
# BENCH_MODE=full|quick|smoke; PROFILE=DIR also records py-spy profiles of cri-async there.
BENCH_MODE ?= full
PROFILE ?=
bench: setup test-deps
	$(if $(PROFILE),$(BIN)/pip install -q -e '.[dev,profile]')
	$(BIN)/python bench/suite.py --mode $(BENCH_MODE) $(if $(PROFILE),--py-spy $(PROFILE))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
