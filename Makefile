# Two entry points on a fresh Debian 12 machine, as root: `make demo` and `make test`.
# `make setup` is idempotent: it installs only what is missing.

PYTHON   ?= /usr/bin/python3.11
VENV     := .venv
STAMPS   := .stamps
# Build: Python 3.11 with its shared libpython (the shims embed it) and the p11-kit PKCS#11 header.
# Hosts the tests drive: OpenSC's pkcs11-tool, GnuTLS's p11tool, p11-kit, the libp11 engine, nginx and
# HAProxy (the tests run their own on free ports: the service the package starts is stopped).
# Packaging: debhelper, dpkg-dev and fakeroot (the rest of `make deb`'s needs is debian/control's Build-Depends).
# libcurl4-openssl-dev: pycurl is built against Debian's libcurl and the system OpenSSL (see below).
APT_PKGS := python3.11 python3.11-venv python3.11-dev libpython3.11-dev build-essential ca-certificates curl \
            libssl-dev libp11-kit-dev p11-kit opensc gnutls-bin libengine-pkcs11-openssl nginx openssl haproxy \
            debhelper dpkg-dev fakeroot libcurl4-openssl-dev

.PHONY: setup test demo bench soak clean deb

PKCS11_SO := build/libmhsm-pkcs11.so
PROVIDER_SO := build/mhsm.so
SID_NGINX := .cache/sid-nginx/nginx

setup: $(STAMPS)/venv $(PKCS11_SO) $(PROVIDER_SO) $(SID_NGINX) $(STAMPS)/deb-tools

$(STAMPS)/apt: Makefile
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing && \
		if echo " $$missing " | grep -q ' haproxy '; then systemctl stop haproxy 2>/dev/null || service haproxy stop 2>/dev/null || true; fi; \
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

# Both shims include the shared embedding code (embedding/csrc/embed.c).
EMBED_SRC := embedding/build.py $(wildcard embedding/csrc/*)

$(PKCS11_SO): $(STAMPS)/venv pkcs11_compat/build.py $(wildcard pkcs11_compat/csrc/*) $(EMBED_SRC)
	$(VENV)/bin/python -m pkcs11_compat.build build

$(PROVIDER_SO): $(STAMPS)/venv provider/build.py $(wildcard provider/csrc/*) $(EMBED_SRC)
	$(VENV)/bin/python -m provider.build build

# nginx >= 1.29 (store: keys) from Debian sid, unpacked under .cache with its own loader.
$(SID_NGINX): provider/fetch_nginx.sh
	bash provider/fetch_nginx.sh .cache/sid-nginx

# `make deb`'s tools: Debian's packaging tools and debian/control's Build-Depends (read from there, not
# repeated here: dpkg-checkbuilddeps and apt-get build-dep use the same list).
$(STAMPS)/deb-tools: $(STAMPS)/apt debian/control
	@dpkg-checkbuilddeps 2>/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq ./; }
	@touch $@

# dist/mhsm-tls-offload_<version>_amd64.deb, built by debhelper from debian/ (MHSM_DEB_VERSION=<v> overrides
# the version). The package embeds Debian's Python, not .venv: see docs/install.md.
deb: $(STAMPS)/deb-tools
	dpkg-checkbuilddeps
	debian/rules clean
	debian/rules binary
	@ls dist/*.deb

test: setup
	$(VENV)/bin/python -m pytest tests

# Every measurement of docs/performance.md, in one run (about 3.5 minutes on 2 cores).
bench: setup
	cd bench && ../$(VENV)/bin/python run.py

# Both nginx paths under every fault kind, reloads and an HSM restart, with issue 13's fault mix
# (tests/soak/soak.py; `make test` runs a 36 s version with bursts within MaxRetries).
SOAK_SECONDS ?= 180
soak: setup
	$(VENV)/bin/python -m tests.soak.soak --seconds $(SOAK_SECONDS) --mix issue

demo: setup
	$(VENV)/bin/python demo/demo.py

clean:
	rm -rf $(STAMPS) build .cache dist debian/build
