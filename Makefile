# Two entry points on a fresh Debian 12 machine, as root: `make demo` and `make test`.
# `make setup` is idempotent: it installs only what is missing.

PYTHON   ?= /usr/bin/python3.11
VENV     := .venv
STAMPS   := .stamps
APT_PKGS := python3.11 python3.11-venv python3.11-dev libpython3.11-dev build-essential ca-certificates curl

.PHONY: setup test demo clean

setup: $(STAMPS)/venv

$(STAMPS)/apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv: $(STAMPS)/apt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[emulator,test]'
	@touch $@

test: setup
	$(VENV)/bin/python -m pytest tests

demo: setup
	$(VENV)/bin/python demo/demo.py

clean:
	rm -rf $(STAMPS) build .cache
