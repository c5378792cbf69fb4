#!/usr/bin/env bash
# `make image`: build containers/Dockerfile with podman (or buildah) into the local image store.
#
#   containers/build_image.sh                 # variables below, all optional
#
#   CUDA         13 (default: requirements.lock, torch 2.13.0 for NVIDIA drivers >= 580) or 12
#                (requirements-cu12.lock, torch 2.10.0 for drivers >= 525; the tag gets the suffix -cu12)
#   IMAGE        tag to build (default: the image conf/base.config names, or with CUDA=12 the one -profile cu12
#                names, so -profile podman[,cu12] runs it as is)
#   BASE_IMAGE   the recipe's base (default docker.io/library/debian:bookworm-slim). When it is the default and
#                no registry answers, a local Debian bookworm base is made with debootstrap
#                (containers/local_base.sh) and used instead: LOCAL_BASE names it.
#   UV_CACHE     the host folder mounted as uv's cache during the build (default: $UV_CACHE_DIR, else
#                ~/.cache/uv), so the ~5.5 GB of torch/CUDA wheels are downloaded once per machine
#   NO_CACHE=1   build without the layer cache
#
# Engine settings (runc, ulimits) come from containers/containers.conf through CONTAINERS_CONF. Installs
# podman, buildah, runc and debootstrap from Debian's packages when missing (root + apt-get only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "image: $*" >&2; }
die() { echo "image: ERROR: $*" >&2; exit 1; }

version=$(sed -n "s/^ *version *= *'\([^']*\)'.*/\1/p" nextflow.config | head -1)
[[ -n $version ]] || die "manifest.version not found in nextflow.config"
case ${CUDA:-13} in
  13) lock=requirements.lock; suffix=; torch_build="torch 2.13.0 (CUDA 13)" ;;
  12) lock=requirements-cu12.lock; suffix=-cu12; torch_build="torch 2.10.0 (CUDA 12.8)" ;;
  *) die "CUDA=$CUDA: must be 13 (default) or 12" ;;
esac
IMAGE=${IMAGE:-ghcr.io/cell2location-nf/cell2location-nf:$version$suffix}
DEFAULT_BASE=docker.io/library/debian:bookworm-slim
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
LOCAL_BASE=${LOCAL_BASE:-localhost/debian:bookworm-slim-local}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers/containers.conf}

need_pkgs=()
command -v podman >/dev/null 2>&1 || command -v buildah >/dev/null 2>&1 || need_pkgs+=(podman buildah)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
if (( ${#need_pkgs[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    die "missing ${need_pkgs[*]} (install podman or buildah, and runc; or run as root on Debian/Ubuntu)"
  fi
fi
if command -v podman >/dev/null 2>&1; then engine=podman; build=(podman build); else engine=buildah; build=(buildah build); fi

have_image() { "$engine" image exists "$1" 2>/dev/null || "$engine" inspect --type image "$1" >/dev/null 2>&1; }

# ---- the base image ----------------------------------------------------------------------------------------
base=$BASE_IMAGE
if have_image "$base"; then
  log "base $base (already here)"
elif timeout 120 "$engine" pull -q "$base" >/dev/null 2>&1; then
  log "base $base (pulled)"
elif [[ $base == "$DEFAULT_BASE" ]]; then
  base=$LOCAL_BASE
  if have_image "$base"; then
    log "no registry answers for $BASE_IMAGE; using the local base $base"
  else
    log "no registry answers for $BASE_IMAGE; making $base with debootstrap from Debian's mirror"
    if ! command -v debootstrap >/dev/null 2>&1; then
      [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1 || die "debootstrap missing (apt-get install debootstrap)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    [[ $engine == podman ]] || die "making the local base needs podman (podman import)"
    containers/local_base.sh "$base"
  fi
else
  die "cannot pull BASE_IMAGE=$base (and only the default $DEFAULT_BASE can be made locally)"
fi

# ---- the build ---------------------------------------------------------------------------------------------
lock_sha=$(sha256sum "$lock" | cut -d' ' -f1)
uv_cache=${UV_CACHE:-${UV_CACHE_DIR:-$HOME/.cache/uv}}
mkdir -p "$uv_cache"
args=(--format docker --layers
      -f containers/Dockerfile --ignorefile containers/Dockerfile.dockerignore
      --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" --build-arg "LOCK=$lock" --build-arg "LOCK_SHA256=$lock_sha" --build-arg "TORCH_BUILD=$torch_build"
      --build-arg UV_CACHE_DIR=/var/cache/uv-host --volume "$uv_cache:/var/cache/uv-host"
      -t "$IMAGE")
[[ ${NO_CACHE:-0} == 1 ]] && args+=(--no-cache)
log "+ ${build[*]} ${args[*]} ."
start=$SECONDS
"${build[@]}" "${args[@]}" .
t=$((SECONDS - start))
size=$("$engine" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')
log "built $IMAGE on $base in $((t / 60))m$((t % 60))s; size $size ($lock sha256 ${lock_sha:0:16})"
