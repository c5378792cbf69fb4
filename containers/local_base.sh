#!/usr/bin/env bash
# Make a Debian bookworm base image locally, for machines that can reach Debian's mirror but no container
# registry: debootstrap (minbase + ca-certificates) into a folder, the host's CA certificates added (so HTTPS
# through a proxy that the host trusts works inside the build too), apt's caches emptied, then imported as
# an image with `podman import`. The recipe (containers/Dockerfile) then builds on it exactly as it builds on
# docker.io/library/debian:bookworm-slim: only the base layer's origin differs.
#
#   containers/local_base.sh TAG [MIRROR]
#
# Needs root, debootstrap and podman. TAG is e.g. localhost/debian:bookworm-slim-local.
set -euo pipefail

tag=${1:?usage: local_base.sh TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
suite=bookworm

[[ $(id -u) == 0 ]] || { echo "local_base.sh: ERROR: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "local_base.sh: ERROR: debootstrap not installed" >&2; exit 1; }

root=$(mktemp -d "${TMPDIR:-/var/tmp}/c2l-base.XXXXXX")
# debootstrap mounts /proc (and may bind /dev, /sys) inside the root while it works: unmount whatever is still
# mounted there before removing it, and never cross into another file system.
cleanup() {
  local m
  for m in $(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" || true
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "local_base.sh: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "local_base.sh: ERROR: debootstrap failed (log above)" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# apt sources as in the official image (bookworm, bookworm-updates, security), deb822 style
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# The host's CA certificates, one file each, where update-ca-certificates keeps them (a later
# `apt-get install ca-certificates` in the recipe regenerates the bundle and keeps these).
hostbundle=/etc/ssl/certs/ca-certificates.crt
if [[ -s $hostbundle ]]; then
  mkdir -p "$root/usr/local/share/ca-certificates/host"
  awk -v dir="$root/usr/local/share/ca-certificates/host" '
    /-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/host-%03d.crt", dir, n) }
    f { print > f }
    /-----END CERTIFICATE-----/ { close(f); f = "" }' "$hostbundle"
  chroot "$root" update-ca-certificates >/dev/null 2>&1  # duplicates of Debian's own CAs are skipped
fi

# what the official slim image leaves out: apt caches and lists, docs and man pages are kept minimal
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/var/log/*.log \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*

tar -C "$root" --numeric-owner -c . \
  | podman import -q --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --message "debootstrap $suite (minbase) from $mirror + host CA certificates" - "$tag" >/dev/null
echo "local_base.sh: made $tag ($(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
