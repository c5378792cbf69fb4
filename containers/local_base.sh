#!/usr/bin/env bash
# Make a base image locally, for machines that can reach a distribution's archive but no container registry:
# debootstrap (minbase + ca-certificates) into a folder, the host's CA certificates added (so HTTPS through a
# proxy that the host trusts works inside the build too), apt's caches emptied, then imported as an image
# with `podman import`.
#   bookworm (default): Debian 12 from Debian's mirror. containers/Dockerfile builds on it exactly as on
#            docker.io/library/debian:bookworm-slim: only the base layer's origin differs.
#   noble:   Ubuntu 24.04 from Ubuntu's archive (main + universe), its key from the ubuntu-keyring package
#            (fetched from the same archive); containers/sif.sh runs singularity-ce 4.1 from it.
#
#   containers/local_base.sh TAG [bookworm|noble]      (MIRROR=... overrides the archive)
#
# Needs root, debootstrap and podman. TAG is e.g. localhost/debian:bookworm-slim-local.
set -euo pipefail

tag=${1:?usage: local_base.sh TAG [bookworm|noble]}
suite=${2:-bookworm}
case $suite in
  bookworm)
    mirror=${MIRROR:-http://deb.debian.org/debian}
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    components=main
    include=ca-certificates
    security=http://deb.debian.org/debian-security
    script=bookworm
    sources=debian.sources ;;
  noble)
    mirror=${MIRROR:-http://archive.ubuntu.com/ubuntu}
    keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
    components="main universe"
    include=ca-certificates,ubuntu-keyring
    security=$mirror
    # Debian 12's debootstrap predates noble; Ubuntu's releases all use the same script
    script=$( [[ -e /usr/share/debootstrap/scripts/noble ]] && echo noble || echo /usr/share/debootstrap/scripts/gutsy )
    sources=ubuntu.sources ;;
  *) echo "local_base.sh: ERROR: unknown suite $suite (bookworm or noble)" >&2; exit 1 ;;
esac

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
  rm -rf --one-file-system "$root" "$root.keyring" "$root.keyring.deb" "$root.keyring.idx.gz" "$root.log"
}
trap cleanup EXIT

# the archive's signing key: Debian's is on every Debian host; Ubuntu's comes from its ubuntu-keyring package
keyring_opt=()
if [[ $suite == noble && ! -s $keyring ]]; then
  curl -fsS --max-time 300 -o "$root.keyring.idx.gz" "$mirror/dists/noble/main/binary-amd64/Packages.gz"
  deb=$(zcat "$root.keyring.idx.gz" | awk '/^Package: ubuntu-keyring$/ { p = 1 } p && /^Filename:/ { f = $2; p = 0 } END { print f }')
  [[ -n $deb ]] || { echo "local_base.sh: ERROR: ubuntu-keyring not found in $mirror" >&2; exit 1; }
  curl -fsS --max-time 120 -o "$root.keyring.deb" "$mirror/$deb"
  mkdir -p "$root.keyring" && dpkg-deb -x "$root.keyring.deb" "$root.keyring"
  keyring=$root.keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg
fi
[[ -s $keyring ]] && keyring_opt=(--keyring="$keyring")

echo "local_base.sh: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase --include="$include" --components="${components// /,}" "${keyring_opt[@]}" \
  "$suite" "$root" "$mirror" "$script" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "local_base.sh: ERROR: debootstrap failed (log above)" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# apt sources as in the official images (release, -updates, -security), deb822 style
rm -f "$root/etc/apt/sources.list"
mkdir -p "$root/etc/apt/sources.list.d"
cat >"$root/etc/apt/sources.list.d/$sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: $components
Signed-By: ${keyring#"$root.keyring"}

Types: deb
URIs: $security
Suites: $suite-security
Components: $components
Signed-By: ${keyring#"$root.keyring"}
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
