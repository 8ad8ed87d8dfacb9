#!/usr/bin/env bash
# Builds graceway's OCI image without any registry: the base from Debian's
# own archive with mmdebstrap, trimmed to what the binary loads, then
# `podman build` of packaging/Containerfile on it, written as an OCI archive.
#
#   packaging/build-image.sh [BINARY] [OUTDIR]   (defaults: target/release/graceway, target/oci)
#
# Prints the archive's path on its last line: OUTDIR/graceway_<version>_<arch>.oci.tar,
# also loaded into podman's local store as localhost/graceway:<version>.
# Push it to your registry with
#   podman push localhost/graceway:<version> registry.example.com/graceway:<version>
# (or `skopeo copy oci-archive:FILE docker://...`).
#
# Needs root (mmdebstrap's root mode and the base's file owners; only that is
# tested, MMDEBSTRAP_MODE passes another mode), mmdebstrap, podman and
# network access to the Debian archive (MIRROR, default http://deb.debian.org).
# SUITE (default: this machine's Debian release) should be the release the
# binary was built on, so that its glibc is there.
#
# The image holds libc6 and libgcc-s1 (what `ldd graceway` lists), the CA
# bundle, /etc/passwd and /etc/group with the `graceway` user (uid and gid
# 65532), the binary, conf/graceway.yaml and the dpkg status of the packages
# it holds (for image scanners). No shell, no package manager.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/graceway}
out=${2:-target/oci}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
# shellcheck disable=SC1091 # the build machine's own file
suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")}
mirror=${MIRROR:-http://deb.debian.org}
mode=${MMDEBSTRAP_MODE:-auto}
image=localhost/graceway:$version
base=localhost/graceway-base:$suite
# Debian packages whose files the image keeps, nothing else: the binary
# links libc, libm and libgcc_s dynamically (tests/it/image.rs checks it
# against `ldd`); base-files gives /etc/os-release.
keep=(libc6 libgcc-s1 base-files)

[ -x "$bin" ] || { echo "build-image: no executable $bin (cargo build --release first)" >&2; exit 1; }
for tool in mmdebstrap podman strip; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Reproducible timestamps in the base (mmdebstrap honours it) and layers.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# 1. A Debian root file system from the archive (Essential packages plus
# ca-certificates, whose postinst writes the bundle), without docs, man
# pages and translations.
full=$stage/debian
mmdebstrap --quiet --mode="$mode" --variant=essential --include=ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --format=directory "$suite" "$full" \
  "deb $mirror/debian $suite main" \
  "deb $mirror/debian $suite-updates main" \
  "deb $mirror/debian-security $suite-security main"
full_kib=$(du -sk "$full" | cut -f1)

# 2. The base: only the files of the kept packages (from dpkg's own lists),
# the merged-/usr symlinks, and the CA bundle. Paths under /lib, /bin ... are
# listed through the symlinks; they are stored under /usr. Left out: libc's
# iconv modules (gconv/, 8 MiB: graceway never calls iconv); the NSS modules
# for files and DNS stay.
slim=$stage/base
mkdir -p "$slim"
tops=()
for t in bin sbin lib lib32 lib64 libx32; do
  if [ -L "$full/$t" ]; then tops+=("$t"); fi
done
{
  printf '%s\n' "${tops[@]}"
  for p in "${keep[@]}"; do dpkg-query --admindir="$full/var/lib/dpkg" -L "$p"; done \
    | sed -E "s#^/($(IFS='|'; echo "${tops[*]}"))(/|\$)#/usr/\\1\\2#; s#^/##" \
    | grep -v -E '^(\.|usr/share/(doc|man|info|locale|lintian)(/.*)?|usr/lib/[^/]+/gconv(/.*)?)$'
  echo etc/ssl/certs/ca-certificates.crt
} | sort -u | while read -r path; do
  if [ -e "$full/$path" ] || [ -L "$full/$path" ]; then printf '%s\n' "$path"; fi
done > "$stage/files"
tar -C "$full" --no-recursion --numeric-owner -cf - -T "$stage/files" | tar -C "$slim" -xpf -
# Directories the kept files need (parents of listed paths) come out of
# tar as root 0755, like Debian's.
mkdir -p "$slim/var/lib/dpkg" "$slim/etc"
for p in "${keep[@]}"; do
  dpkg-query --admindir="$full/var/lib/dpkg" -s "$p"
  echo
done > "$slim/var/lib/dpkg/status"
install -d -m 1777 "$slim/tmp"
slim_kib=$(du -sk "$slim" | cut -f1)

# 3. The base image, then the Containerfile on it (COPY/USER/... only, so
# podman never runs a container). The context is a folder with exactly the
# files the Containerfile copies; the binary is stripped of debug info (as
# in the Debian package: symbols stay for perf and backtraces).

# The images this replaces, removed at the end (not when a build reuses one).
previous=$(podman image inspect --format '{{.Id}}' "$image" "$base" 2>/dev/null || true)
tar -C "$slim" --numeric-owner --sort=name --mtime="@$SOURCE_DATE_EPOCH" -cf - . \
  | podman import --quiet \
      --change 'LABEL org.opencontainers.image.description="Debian '"$suite"': libc6, libgcc-s1, CA bundle"' \
      - "$base" >/dev/null
ctx=$stage/context
mkdir -p "$ctx/target/release" "$ctx/packaging" "$ctx/conf"
install -m 0755 "$bin" "$ctx/target/release/graceway"
strip --strip-debug "$ctx/target/release/graceway"
cp -r packaging/image packaging/Containerfile "$ctx/packaging/"
cp conf/graceway.yaml "$ctx/conf/"
cp .containerignore "$ctx/"
# --layers=false: one layer over the base, and no intermediate images left.
podman build --quiet --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
  --build-arg BASE="$base" --build-arg VERSION="$version" \
  -f "$ctx/packaging/Containerfile" -t "$image" "$ctx" >/dev/null
mkdir -p "$out"
archive=$out/graceway_${version}_${arch}.oci.tar
rm -f "$archive"
podman save --quiet --format oci-archive -o "$archive" "$image"
current=$(podman image inspect --format '{{.Id}}' "$image" "$base")
for id in $previous; do
  case $current in *"$id"*) ;; *) podman rmi --force "$id" >/dev/null 2>&1 || true ;; esac
done
bin_kib=$(du -sk "$ctx/target/release/graceway" | cut -f1)
echo "build-image: Debian essential + ca-certificates $((full_kib / 1024)) MiB -> base $((slim_kib / 1024)) MiB; binary $((bin_kib / 1024)) MiB; archive $(($(stat -c %s "$archive") / 1048576)) MiB ($image)" >&2
echo "$archive"
