# Build and test plumbing for the osvirt.vz collection.
#
# A fresh Debian 12 machine (as root) needs only:  make demo   and   make test
# Both are safe to run again: every step checks what is already there.
#
#   make deps             host packages (apt) + controller venv .venv (pip, requirements.txt) + CRIU
#   make collection-link  .build/collections/ansible_collections/osvirt/vz -> this repo
#   make unit             pytest tests/unit              (no root)
#   make lint             ansible-lint --profile production on roles/ and playbooks/
#   make sanity           ansible-test sanity on a copy of the collection (see tests/sanity/README.md)
#   make integration      pytest tests/integration       (root, real LXC)
#   make molecule         molecule test of every scenario in extensions/molecule/ (lab hosts, test lock)
#   make soak-kill        the kill suite with VZ_KILL_POINTS (default 600) kill points
#   make soak-migrate     migration ping-pong, VZ_PINGPONG_ROUNDS (default 10) round trips; debian-12 warm
#   make test             all of the above, fastest and cheapest first
#   make demo             playbooks/demo.yml against localhost
#   make bench            bench/run with .venv-bench (requirements-bench.txt)
#   make clean            remove .build

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

REPO        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
SYS_PYTHON  := /usr/bin/python3
VENV        := $(REPO)/.venv
VENV_BENCH  := $(REPO)/.venv-bench
BUILD       := $(REPO)/.build
COLL_PATH   := $(BUILD)/collections
COLL_LINK   := $(COLL_PATH)/ansible_collections/osvirt/vz
SANITY_ROOT := $(BUILD)/sanity
SANITY_TREE := $(SANITY_ROOT)/ansible_collections/osvirt/vz
PYTHON_VERSION := 3.11

# Host packages every part of the project relies on (LXC engine, template builds,
# lab namespaces and sshd, the modules' pyroute2/lxc bindings, the venv itself, git and
# shellcheck for ansible-test sanity). Keep in sync with the host role's defaults where they overlap.
APT_PACKAGES := lxc debootstrap rsync busybox-static python3-pyroute2 python3-lxc uidmap btrfs-progs acl libcap2-bin \
                openssh-server iproute2 python3-venv util-linux iptables nftables git make shellcheck restic

# Every recipe sees the venv first on PATH and finds the collection through the link.
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLL_PATH)
export ANSIBLE_CONFIG := $(REPO)/tests/ansible.cfg
export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1

PYTEST := $(VENV)/bin/python -m pytest

.PHONY: help deps deps-apt deps-venv deps-criu collection-link unit integration sanity lint \
        test demo bench clean soak-kill soak-migrate molecule

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

# ---------------------------------------------------------------------------- deps

deps: deps-apt deps-venv deps-criu

# dpkg-query on the whole list takes milliseconds, so it runs every time; apt-get
# (and its slow `update`) only runs when something is missing.
deps-apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${db:Status-Abbrev}' "$$p" 2>/dev/null | grep -q '^ii' || echo "$$p"; \
	  done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deps: missing host packages (need root): $$missing" >&2; exit 1; fi; \
	  echo "deps: installing host packages: $$missing"; \
	  apt-get update -qq; \
	  apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	mkdir -p $(BUILD)/stamps && echo "$(APT_PACKAGES)" > $(BUILD)/stamps/apt

# The venv is rebuilt only when requirements.txt changes (its sha256 is kept inside the
# venv) or when the venv is broken (its python no longer runs).
deps-venv: deps-apt
	@want=$$(sha256sum $(REPO)/requirements.txt | cut -d' ' -f1); \
	have=$$(cat $(VENV)/.requirements.sha256 2>/dev/null || true); \
	if [ "$$want" != "$$have" ] || ! $(VENV)/bin/python -c 'import ansible, pytest' 2>/dev/null; then \
	  echo "deps: building $(VENV) from requirements.txt"; \
	  if ! $(VENV)/bin/python -c 'pass' 2>/dev/null; then rm -rf $(VENV); fi; \
	  [ -x $(VENV)/bin/python ] || $(SYS_PYTHON) -m venv $(VENV); \
	  $(VENV)/bin/python -m pip install -q -r $(REPO)/requirements.txt; \
	  echo "$$want" > $(VENV)/.requirements.sha256; \
	fi

# CRIU for live migration, built once per host from Debian's newer source package and cached
# in /var/cache/osvirt-vz/criu (see docs/criu.md). A second run returns at once. A failed
# build prints why and does not stop `make deps` (live-migration tests then skip with that
# reason), except with CI=true, where it fails.
deps-criu: deps-apt
	@$(REPO)/scripts/criu-build

# -------------------------------------------------------------------- collection

# ANSIBLE_COLLECTIONS_PATH=.build/collections then finds osvirt.vz as this work tree.
# .build is ignored by git, pytest (norecursedirs), ansible-lint (exclude_paths) and
# galaxy.yml (build_ignore), so the link's loop back to the repo is never walked.
collection-link:
	@mkdir -p $(dir $(COLL_LINK))
	@if [ "$$(readlink $(COLL_LINK) 2>/dev/null)" != "$(REPO)" ]; then \
	  rm -rf $(COLL_LINK); ln -s $(REPO) $(COLL_LINK); \
	  echo "collection-link: $(COLL_LINK) -> $(REPO)"; \
	fi

# ------------------------------------------------------------------------- tests

unit: deps-venv collection-link
	$(PYTEST) tests/unit

# `make test` runs the kill suite with TEST_KILL_POINTS kill points (a new seed each run; about 4
# minutes on a quiet 2-core machine); a smaller number samples every operation at least once, and
# `make soak-kill` runs many more (docs/robustness.md).
TEST_KILL_POINTS ?= 60
integration: deps collection-link
	VZ_KILL_POINTS=$${VZ_KILL_POINTS:-$(TEST_KILL_POINTS)} $(PYTEST) tests/integration --durations=30

# The kill suite (tests/integration/test_kill.py: 60 kill points, as in `make integration`) scaled up: VZ_KILL_POINTS=<n> kill points in all, VZ_KILL_SEED=<seed> to replay a run. The lab part
# (the tests hold the machine's test lock, tests/integration/testlock.py); figures go to .build/kill-report.json (see docs/robustness.md).
VZ_KILL_POINTS ?= 600
soak-kill: deps collection-link
	VZ_KILL_POINTS=$(VZ_KILL_POINTS) $(PYTEST) tests/integration/test_kill.py -k 'not lab' -q
	VZ_KILL_POINTS=$(VZ_KILL_POINTS) $(PYTEST) tests/integration/test_kill.py -k lab -q

# A VE moved warm lab1 -> lab2 -> lab1 VZ_PINGPONG_ROUNDS times (`make test` does 2 round trips)
# and a debian-12 VE moved warm (VZ_MIGRATE_SOAK=1; skipped in `make test`);
# (the tests hold the machine's test lock); results in docs/migration.md ("Soak").
VZ_PINGPONG_ROUNDS ?= 10
soak-migrate: deps collection-link
	VZ_PINGPONG_ROUNDS=$(VZ_PINGPONG_ROUNDS) VZ_MIGRATE_SOAK=1 $(PYTEST) \
	    tests/integration/test_migrate_pingpong.py tests/integration/test_migrate_debian.py -q -s

# Every extensions/molecule/<scenario>/ with a molecule.yml (names starting with _ are shared
# files), each `molecule test` alone under the machine's test lock /run/osvirt-test.lock (taken per
# scenario; not again when the caller already holds it). MOLECULE_SCENARIOS="host provision"
# picks some; each scenario's result and wall time are printed at the end (docs/molecule.md).
molecule: deps collection-link
	$(SYS_PYTHON) $(REPO)/extensions/molecule/_shared/run_scenarios.py

lint: deps-venv collection-link
	@targets=$$(for d in roles playbooks; do \
	    if [ -n "$$(find $$d -name '*.yml' -o -name '*.yaml' 2>/dev/null | head -1)" ]; then echo $$d; fi; done); \
	if [ -z "$$targets" ]; then echo "lint: no roles or playbooks yet, nothing to lint"; exit 0; fi; \
	cd $(REPO) && ansible-lint --profile production $$targets

# ansible-test needs the collection at .../ansible_collections/<ns>/<name>; a copy keeps
# .venv/.build/.git out of it. A `git init` makes ansible-test list files with git
# (tracked + untracked, honouring .gitignore). The per-test virtualenvs that
# --requirements creates live under ~/.ansible/test and are reused on the next run.
SANITY_TESTS_SKIP := $(shell sed -n 's/^- `\([a-z0-9-]*\)`: skipped.*/--skip-test \1/p' $(REPO)/tests/sanity/README.md 2>/dev/null)
# ansible-test bootstraps pip into each sanity venv with a get-pip.py fetched from a host
# that is unreachable here; scripts/ansible_test_get_pip.py does the same offline. It goes
# where ansible-test caches that script, replacing only an earlier copy of itself.
GET_PIP_CACHE := $(HOME)/.ansible/test/cache
sanity: deps-venv
	@ver=$$(sed -n "s/^ *pip='\([0-9.]*\)',\?$$/\1/p" \
	    $(VENV)/lib/python$(PYTHON_VERSION)/site-packages/ansible_test/_internal/python_requirements.py | head -1); \
	[ -n "$$ver" ] || { echo "sanity: cannot find ansible-test's pip version" >&2; exit 1; }; \
	dest=$(GET_PIP_CACHE)/get_pip_$${ver//./_}.py; mkdir -p $(GET_PIP_CACHE); \
	if [ ! -e "$$dest" ] || grep -q '^# osvirt.vz: offline stand-in' "$$dest"; then \
	  cmp -s $(REPO)/scripts/ansible_test_get_pip.py "$$dest" || cp $(REPO)/scripts/ansible_test_get_pip.py "$$dest"; \
	fi
	@mkdir -p $(SANITY_TREE)
	@rsync -a --delete --exclude=/.venv --exclude=/.venv-bench --exclude=/.build \
	  --exclude=/.git --exclude=/.ansible --exclude=/tests/output --exclude=__pycache__ \
	  $(REPO)/ $(SANITY_TREE)/
	@cd $(SANITY_TREE) && git init -q .
	cd $(SANITY_TREE) && ansible-test sanity --color no --python $(PYTHON_VERSION) \
	  --requirements $(SANITY_TESTS_SKIP)

test: deps collection-link
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory molecule

# -------------------------------------------------------------------------- demo

demo: deps collection-link
	ansible-playbook -i localhost, -c local \
	  -e ansible_python_interpreter=/usr/bin/python3 \
	  $(REPO)/playbooks/demo.yml

# ------------------------------------------------------------------------- bench

bench: deps collection-link
	@want=$$(cat $(REPO)/requirements.txt $(REPO)/requirements-bench.txt | sha256sum | cut -d' ' -f1); \
	have=$$(cat $(VENV_BENCH)/.requirements.sha256 2>/dev/null || true); \
	if [ "$$want" != "$$have" ] || ! $(VENV_BENCH)/bin/python -c 'import ansible' 2>/dev/null; then \
	  echo "bench: building $(VENV_BENCH) from requirements-bench.txt"; \
	  if ! $(VENV_BENCH)/bin/python -c 'pass' 2>/dev/null; then rm -rf $(VENV_BENCH); fi; \
	  [ -x $(VENV_BENCH)/bin/python ] || $(SYS_PYTHON) -m venv $(VENV_BENCH); \
	  $(VENV_BENCH)/bin/python -m pip install -q -r $(REPO)/requirements-bench.txt; \
	  echo "$$want" > $(VENV_BENCH)/.requirements.sha256; \
	fi
	PATH=$(VENV_BENCH)/bin:$$PATH $(REPO)/bench/run

clean:
	rm -rf $(BUILD)
