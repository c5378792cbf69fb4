#!/usr/bin/env bash
# A Singularity/Apptainer image (SIF) made from the image `make image` built, on a machine without a
# singularity or apptainer package (Debian 12 has neither): singularity-ce 4.1 from Ubuntu 24.04 "noble" runs
# inside a privileged podman container. Used by `make sif` / `make test-sif`; on a cluster with Apptainer,
# convert the image directly instead (containers/README.md).
#
#   containers/sif.sh build SIF        podman save --format oci-archive, then `singularity build SIF oci-archive:...`
#   containers/sif.sh shim DIR         write DIR/singularity: runs `singularity "$@"` in the privileged container,
#                                      with `exec -u` (user namespace, squashfuse), for Nextflow's -profile singularity
#
#   IMAGE            the image to convert (default: the one conf/base.config names)
#   SINGULARITY_IMAGE  the podman image holding singularity-ce (made here from a local noble base when absent)
#   SIF_MOUNTS       host folders the shim mounts at the same path (default: the repository's parent folder,
#                    /tmp and /var/tmp)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

die() { echo "sif: ERROR: $*" >&2; exit 1; }
log() { echo "sif: $*" >&2; }

version=$(sed -n "s/^ *version *= *'\([^']*\)'.*/\1/p" nextflow.config | head -1)
IMAGE=${IMAGE:-ghcr.io/cell2location-nf/cell2location-nf:$version}
SINGULARITY_IMAGE=${SINGULARITY_IMAGE:-localhost/singularity-ce:noble}
NOBLE_BASE=${NOBLE_BASE:-localhost/ubuntu:noble-local}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/containers/containers.conf}
command -v podman >/dev/null 2>&1 || die "podman not installed (make image installs it)"

# podman image with singularity-ce (Ubuntu noble's singularity-container package) and squashfuse
singularity_image() {
  podman image exists "$SINGULARITY_IMAGE" && return 0
  if ! podman image exists docker.io/library/ubuntu:noble && ! timeout 120 podman pull -q docker.io/library/ubuntu:noble >/dev/null 2>&1; then
    podman image exists "$NOBLE_BASE" || containers/local_base.sh "$NOBLE_BASE" noble
    base=$NOBLE_BASE
  else
    base=docker.io/library/ubuntu:noble
  fi
  log "making $SINGULARITY_IMAGE on $base"
  local dir
  dir=$(mktemp -d)
  cat >"$dir/Containerfile" <<CONTAINERFILE
FROM $base
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends singularity-container squashfuse squashfs-tools fuse3 uidmap \\
    && rm -rf /var/lib/apt/lists/*
CONTAINERFILE
  podman build --format docker -t "$SINGULARITY_IMAGE" "$dir" >&2
  rm -rf "$dir"
}

mounts() {
  local m args=()
  for m in ${SIF_MOUNTS:-$(dirname "$repo") /tmp /var/tmp}; do args+=(-v "$m:$m"); done
  printf '%s\n' "${args[@]}"
}

case ${1:-} in
  build)
    sif=$(realpath -m "${2:?usage: sif.sh build SIF}")
    podman image exists "$IMAGE" || die "no image $IMAGE here; run make image first"
    singularity_image
    mkdir -p "$(dirname "$sif")"
    archive=$(dirname "$sif")/.$(basename "$sif").oci.tar
    rm -f "$archive"
    start=$SECONDS
    log "podman save --format oci-archive $IMAGE"
    podman save --format oci-archive -o "$archive" "$IMAGE"
    log "singularity build $sif oci-archive://$archive"
    podman run --rm --privileged -v "$(dirname "$sif"):$(dirname "$sif")" "$SINGULARITY_IMAGE" \
      singularity build --force "$sif.tmp" "oci-archive://$archive" >&2
    mv "$sif.tmp" "$sif"
    rm -f "$archive"
    t=$((SECONDS - start))
    log "made $sif ($(du -h "$sif" | cut -f1)) in $((t / 60))m$((t % 60))s"
    ;;
  shim)
    dir=${2:?usage: sif.sh shim DIR}
    singularity_image
    mkdir -p "$dir"
    mapfile -t margs < <(mounts)
    # Nextflow runs `env - PATH=... SINGULARITYENV_...=... singularity exec ...`: the shim forwards those
    # variables, names the engine settings itself, and always uses a user namespace (-u: squashfuse, no setuid)
    {
      echo '#!/usr/bin/env bash'
      echo "# made by containers/sif.sh shim: singularity-ce in $SINGULARITY_IMAGE, run by podman --privileged"
      echo "export CONTAINERS_CONF=$(printf %q "$CONTAINERS_CONF")"
      echo 'envs=(-e SINGULARITY_USERNS=1)'
      echo 'for v in $(compgen -e); do case $v in SINGULARITYENV_*|APPTAINERENV_*) envs+=(-e "$v");; esac; done'
      # singularity binds /etc/localtime by default: the minbase noble image has none, so the host's is mounted
      printf 'exec podman run --rm --privileged --network host'
      [[ -e /etc/localtime ]] && printf ' -v /etc/localtime:/etc/localtime:ro'
      printf ' %q' "${margs[@]}"
      printf ' "${envs[@]}" -w "$PWD" %q singularity "$@"\n' "$SINGULARITY_IMAGE"
    } >"$dir/singularity"
    chmod +x "$dir/singularity"
    log "wrote $dir/singularity"
    ;;
  *) die "usage: sif.sh build SIF | sif.sh shim DIR" ;;
esac
