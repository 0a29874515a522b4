#!/usr/bin/env bash
# Put an nginx that has `ssl_certificate_key "store:..."` (nginx >= 1.29) into a private folder,
# without installing anything system-wide: `make setup` runs it, the demo and the tests use it.
#
# Why this way: Debian 12 ships nginx 1.22 (no store:) and trixie 1.26; the first Debian build with
# store: is sid's 1.30, which needs a newer libc, libssl and libpcre2 than Debian 12 has. So the
# binary and those libraries are unpacked side by side and started with sid's own dynamic loader
# (`DEST/run`), which leaves the system untouched. The Debian archive mirror is the one apt already
# uses (nothing else is reachable here). See ../shared/reference/openssl-provider-notes.md §3.2.
#
# Usage: fetch_nginx.sh DEST     then: DEST/nginx -V, DEST/nginx -p PREFIX -c CONF [-s reload|stop]
set -euo pipefail

DEST=$(realpath -m "${1:?usage: fetch_nginx.sh DEST}")
# pkcs11-provider comes along for `make bench`, which compares it with our provider on the same nginx.
PKCS11_PROVIDER=root/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so
if [ -x "$DEST/nginx" ] && "$DEST/nginx" -v >/dev/null 2>&1 && [ -f "$DEST/$PKCS11_PROVIDER" ]; then
    exit 0  # already there and working
fi

MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$MIRROR" ] || { echo "fetch_nginx.sh: no Debian mirror found in the apt configuration" >&2; exit 1; }

mkdir -p "$(dirname "$DEST")"
WORK=$(mktemp -d "$(dirname "$DEST")/.sid-nginx.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
A=$WORK/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc/preferences.d" "$WORK/debs" "$WORK/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR sid main" > "$A/etc/sources.list"
APT=(-o "Dir::Etc::SourceList=$A/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o "Dir::Etc::Preferences=$A/etc/preferences"
     -o "Dir::Etc::PreferencesParts=$A/etc/preferences.d" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)

echo "fetch_nginx.sh: downloading nginx and its libraries from Debian sid ($MIRROR)"
apt-get "${APT[@]}" update -qq || { echo "fetch_nginx.sh: cannot read the sid package lists from $MIRROR" >&2; exit 1; }
(cd "$WORK/debs" && apt-get "${APT[@]}" download -qq nginx libc6 libssl3t64 libpcre2-8-0 libcrypt1 zlib1g libzstd1 pkcs11-provider) \
    || { echo "fetch_nginx.sh: cannot download nginx or its libraries from sid" >&2; exit 1; }
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done

LIB=$DEST/root/usr/lib/x86_64-linux-gnu
cat > "$WORK/run" <<RUN
#!/bin/sh
# Run a program of this folder with sid's loader and libraries.
exec $LIB/ld-linux-x86-64.so.2 --library-path $LIB "\$@"
RUN
cat > "$WORK/nginx" <<RUN
#!/bin/sh
exec $DEST/run $DEST/root/usr/sbin/nginx "\$@"
RUN
chmod 755 "$WORK/run" "$WORK/nginx"
chmod -R a+rX "$WORK/root"   # nginx workers run as an unprivileged user
rm -rf "$WORK/apt" "$WORK/debs"

rm -rf "$DEST"
mv "$WORK" "$DEST"
trap - EXIT
chmod 755 "$DEST"
"$DEST/nginx" -v  # one line, no pipe: under pipefail a pipe into head can end in SIGPIPE
