#!/usr/bin/env bash
# Builds graceway's Debian package with dpkg-deb (Debian's own tool: no extra
# build dependency, and it packages the binary you give it, so CI packages
# the build its tests already made instead of a second release build).
#
#   packaging/build-deb.sh [BINARY] [OUTDIR]     (defaults: target/release/graceway, target/debian)
#
# The package: /usr/bin/graceway, the systemd unit, /etc/graceway/graceway.yaml
# (a conffile: dpkg keeps local edits on upgrade), a `graceway` system user,
# /var/lib/graceway for the persist file. The service is not started or
# enabled: edit the config, then `systemctl enable --now graceway`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/graceway}
out=${2:-target/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

chmod 0755 "$stage"
install -D -m 0755 "$bin" "$stage/usr/bin/graceway"
# Debug info stays in the build tree (release builds keep it for perf).
strip --strip-debug "$stage/usr/bin/graceway"
install -D -m 0644 conf/graceway.yaml "$stage/etc/graceway/graceway.yaml"
sed 's#/usr/local/bin/graceway#/usr/bin/graceway#g' conf/systemd/graceway.service \
  | install -D -m 0644 /dev/stdin "$stage/lib/systemd/system/graceway.service"
install -D -m 0644 LICENSE "$stage/usr/share/doc/graceway/copyright"
install -D -m 0644 conf/alerts/graceway.rules.yml "$stage/usr/share/doc/graceway/alerts/graceway.rules.yml"
install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: graceway
Version: $version
Architecture: $arch
Maintainer: graceway maintainers <graceway@localhost>
Section: net
Priority: optional
Depends: adduser, libc6
Homepage: https://github.com/graceway/graceway
Description: token-injecting reverse-proxy sidecar for external APIs
 graceway sits in front of a token-authenticated HTTP API, injects the token
 into every request, hot-swaps tokens without dropping a request, and answers
 from the last good response when the API turns the token away or fails,
 saying so in headers, metrics, health endpoints and alerts.
CONTROL
echo /etc/graceway/graceway.yaml > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd graceway >/dev/null; then
    adduser --system --group --no-create-home --home /var/lib/graceway graceway >/dev/null
  fi
  install -d -o graceway -g graceway -m 0750 /var/lib/graceway
  if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
fi
exit 0
POSTINST
cat > "$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/graceway
  if getent passwd graceway >/dev/null; then deluser --quiet --system graceway >/dev/null || true; fi
  if getent group graceway >/dev/null; then delgroup --quiet --system graceway >/dev/null || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
exit 0
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/graceway_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
