#!/usr/bin/env bash
# GPU check (issue 8, item 6): train-reference and map-cells on one GPU at the tutorial's shapes, fixed epochs,
# the pipeline's settings (--no-early-stop) and the tutorial's (--tutorial-settings); one JSON in $OUT.
#
# Made for the device machine (one H100, Python 3.12 with torch, no network, no Java/Nextflow):
#   here:       make gpu-wheels                      (the missing Python packages as wheels in .whl/)
#   on device:  bash benchmarks/gpu_check.sh         (carry .whl; timeout_s 540)
# Dry run on a CPU with the local environment and tiny shapes:
#   GPU_CHECK_SKIP_INSTALL=1 GPU_CHECK_PYTHON=.venv/bin/python GPU_CHECK_DEVICE=cpu GPU_CHECK_CELLS=2000 \
#   GPU_CHECK_GENES=500 GPU_CHECK_SPOTS=200 GPU_CHECK_TYPES=8 GPU_CHECK_BATCHES=3 OUT=/tmp/gpu_check_out \
#   bash benchmarks/gpu_check.sh
#
# 1. installs .whl/*.whl with pip --no-deps --no-index into a temporary --target folder (PYTHONPATH), except
#    pandas-*.whl, which is only installed when the machine's own pandas is >= 3 (anndata 0.12 needs < 3);
# 2. benchmarks/gpu_check.py does the rest (imports, torch.cuda, data, the c2l steps under one time budget,
#    $OUT/gpu_check.json rewritten after every step); see its docstring for the GPU_CHECK_* settings.
set -uo pipefail

export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s)}
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT=${OUT:-$PWD/gpu_check_out}
export OUT
mkdir -p "$OUT"
PY=${GPU_CHECK_PYTHON:-python3}
LOG=$OUT/gpu_check.log
BUDGET=${GPU_CHECK_BUDGET_S:-450}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
say() { echo "[gpu_check $(date +%H:%M:%S) +$(( $(date +%s) - GPU_CHECK_T0 ))s] $*" | tee -a "$LOG"; }

fail_json() {  # the one JSON, also when nothing else could run
  "$PY" - "$1" <<'EOF' || echo "{\"errors\": [\"$1\"]}" >"$OUT/gpu_check.json"
import json, os, sys
json.dump({"errors": [sys.argv[1]], "stage": "install"}, open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w"), indent=2)
EOF
}

say "python: $(command -v "$PY") ($("$PY" -c 'import platform; print(platform.python_version())' 2>&1))"
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
  export GPU_CHECK_INSTALL_NOTE="skipped (GPU_CHECK_SKIP_INSTALL=1): the packages of $PY as they are"
  say "install skipped"
else
  shopt -s nullglob
  all=(.whl/*.whl)
  if [ ${#all[@]} -eq 0 ]; then
    say "ERROR: no wheels in .whl/ (run make gpu-wheels here, and carry .whl)"
    fail_json "no wheels in .whl/: run make gpu-wheels and carry .whl"
    exit 1
  fi
  pandas_version=$("$PY" -c 'import pandas; print(pandas.__version__)' 2>/dev/null || echo none)
  pandas_major=${pandas_version%%.*}
  [[ $pandas_major =~ ^[0-9]+$ ]] || pandas_major=0
  wheels=()
  for w in "${all[@]}"; do
    case ${w##*/} in
      pandas-*)
        if [ "$pandas_major" -ge 3 ]; then wheels+=("$w"); say "the machine's pandas is $pandas_version: installing ${w##*/} over it"
        else say "keeping the machine's pandas $pandas_version (not installing ${w##*/})"; fi ;;
      *) wheels+=("$w") ;;
    esac
  done
  SITE=${GPU_CHECK_SITE:-$(mktemp -d /tmp/gpu_check_site.XXXXXX)}
  say "installing ${#wheels[@]} wheels into $SITE"
  t0=$(date +%s)
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
       --target "$SITE" "${wheels[@]}" >>"$LOG" 2>&1; then
    say "ERROR: pip install of the wheels failed (see gpu_check.log)"
    fail_json "pip install --no-deps --no-index of .whl/*.whl failed"
    exit 1
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export GPU_CHECK_INSTALL_NOTE="${#wheels[@]} wheels from .whl/ into $SITE in $(( $(date +%s) - t0 )) s (PYTHONPATH first)"
  say "$GPU_CHECK_INSTALL_NOTE"
fi

# The driver keeps to GPU_CHECK_BUDGET_S itself; this is the last resort (SIGTERM: it writes the JSON and stops).
timeout -k 10 $(( BUDGET + 30 )) "$PY" benchmarks/gpu_check.py
rc=$?
say "done (exit $rc) in $(( $(date +%s) - GPU_CHECK_T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
