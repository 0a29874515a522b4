# Two entry points on a fresh Debian 12 machine, as root: `make demo` and `make test`.
# `make setup` is idempotent: it installs only what is missing.

PYTHON   ?= /usr/bin/python3.11
VENV     := .venv
STAMPS   := .stamps
# Build: Python 3.11 with its shared libpython (the shims embed it) and the p11-kit PKCS#11 header.
# Hosts the tests drive: OpenSC's pkcs11-tool, GnuTLS's p11tool, p11-kit, the libp11 engine and nginx.
# libcurl4-openssl-dev: pycurl is built against Debian's libcurl and the system OpenSSL (see below).
APT_PKGS := python3.11 python3.11-venv python3.11-dev libpython3.11-dev build-essential ca-certificates curl \
            libssl-dev libp11-kit-dev p11-kit opensc gnutls-bin libengine-pkcs11-openssl nginx openssl \
            libcurl4-openssl-dev

.PHONY: setup test demo bench clean

PKCS11_SO := build/libmhsm-pkcs11.so
PROVIDER_SO := build/mhsm.so
SID_NGINX := .cache/sid-nginx/nginx

setup: $(STAMPS)/venv $(PKCS11_SO) $(PROVIDER_SO) $(SID_NGINX)

$(STAMPS)/apt: Makefile
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
	@# pycurl from source: the PyPI wheel bundles its own libcurl and OpenSSL, a second OpenSSL inside
	@# nginx next to the system one. Rebuilt if a wheel got in (its version string names another OpenSSL).
	$(VENV)/bin/python -m pip install -q --no-binary pycurl pycurl
	@$(VENV)/bin/python -c "import pycurl, ssl; raise SystemExit(ssl.OPENSSL_VERSION.split()[1] not in pycurl.version)" || \
		$(VENV)/bin/python -m pip install -q --no-binary pycurl --force-reinstall --no-deps pycurl
	$(VENV)/bin/python -m pip install -q -e '.[emulator,test,bench]'
	@touch $@

$(PKCS11_SO): $(STAMPS)/venv pkcs11_compat/build.py $(wildcard pkcs11_compat/csrc/*)
	$(VENV)/bin/python -m pkcs11_compat.build build

# The provider includes the PKCS#11 module's embedding code (pkcs11_compat/csrc/embed.c).
$(PROVIDER_SO): $(STAMPS)/venv provider/build.py pkcs11_compat/build.py $(wildcard provider/csrc/*) $(wildcard pkcs11_compat/csrc/*)
	$(VENV)/bin/python -m provider.build build

# nginx >= 1.29 (store: keys) from Debian sid, unpacked under .cache with its own loader.
$(SID_NGINX): provider/fetch_nginx.sh
	bash provider/fetch_nginx.sh .cache/sid-nginx

test: setup
	$(VENV)/bin/python -m pytest tests

# Every measurement of docs/performance.md, in one run (about 3.5 minutes on 2 cores).
bench: setup
	cd bench && ../$(VENV)/bin/python run.py

demo: setup
	$(VENV)/bin/python demo/demo.py

clean:
	rm -rf $(STAMPS) build .cache
