"""Driver of benchmarks/gpu_check.sh: the two training steps on a GPU at the tutorial's shapes, timed.

Runs `bin/c2l train-reference` and `bin/c2l map-cells` for a FIXED number of epochs, each twice: the
pipeline's settings without convergence stopping (`--no-early-stop`) and the tutorial's settings
(`--tutorial-settings`), on data of the tutorial's shapes from benchmarks/tutorial_scale.py. Every step is a
subprocess with a hard timeout taken from one overall budget, and the JSON is rewritten after every step, so
that a step that is killed (or the whole command) still leaves what was measured so far.

Writes into $OUT (at most 6 files, the device tool brings back 8): gpu_check.json, gpu_check.log (this
driver, the install and read-visium) and one log per training run (ref_pipeline.log, ref_tutorial.log,
map_pipeline.log, map_tutorial.log).

Settings (environment variables; defaults in brackets):
  GPU_CHECK_CELLS [73260]  GPU_CHECK_GENES [10237]  GPU_CHECK_TYPES [34]  GPU_CHECK_BATCHES [23]
  GPU_CHECK_SPOTS [4000]   GPU_CHECK_REF_EPOCHS [12]  GPU_CHECK_MAP_EPOCHS [400]
  GPU_CHECK_DEVICE [cuda]  (cpu for a dry run)     GPU_CHECK_BUDGET_S [450] (whole script, from GPU_CHECK_T0)
  GPU_CHECK_VARIANTS [pipeline,dense,tutorial]: pipeline (--no-early-stop; the nonzero-count likelihood), dense
  (--no-early-stop --likelihood dense: the same with Pyro's dense GammaPoisson, the old path, for the
  per-epoch time and peak memory of the likelihood alone), tutorial (--tutorial-settings), hostdata
  (reference only: --no-early-stop --data-on-device off, scvi-tools' host-memory minibatches, the loader that
  `pipeline` replaces on a GPU)   GPU_CHECK_WORK [/tmp/gpu_check_work]  GPU_CHECK_SEED [0]
  GPU_CHECK_MEMORY_SHARDS [2,4]  GPU_CHECK_MEMORY_EPOCHS [30]: map-cells --shard 1/K after the four runs, for
  peak GPU memory against the memory model at fewer locations (issue 10), while time is left
  GPU_CHECK_MISSING_FLAG [skip]: what to do when the CLI lacks a variant's option: `skip` the variant
  (recorded in the JSON), or `run` it with the CLI's current defaults (labelled as such; for dry runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
C2L = REPO / "bin" / "c2l"
OUT = Path(os.environ.get("OUT") or (REPO / "gpu_check_out"))
T0 = float(os.environ.get("GPU_CHECK_T0") or time.time())


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


SHAPES = {
    "n_cells": _env_int("GPU_CHECK_CELLS", 73260),
    "n_genes": _env_int("GPU_CHECK_GENES", 10237),
    "n_types": _env_int("GPU_CHECK_TYPES", 34),
    "n_batches": _env_int("GPU_CHECK_BATCHES", 23),
    "n_spots": _env_int("GPU_CHECK_SPOTS", 4000),
}
TUTORIAL_SHAPES = {"n_cells": 73260, "n_genes": 10237, "n_types": 34, "n_batches": 23, "n_spots": 4000}
REF_EPOCHS = _env_int("GPU_CHECK_REF_EPOCHS", 12)
MAP_EPOCHS = _env_int("GPU_CHECK_MAP_EPOCHS", 400)
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
BUDGET_S = _env_int("GPU_CHECK_BUDGET_S", 450)
SEED = _env_int("GPU_CHECK_SEED", 0)
VARIANTS = [v.strip() for v in os.environ.get("GPU_CHECK_VARIANTS", "pipeline,dense,tutorial").split(",") if v.strip()]
MISSING_FLAG = os.environ.get("GPU_CHECK_MISSING_FLAG", "skip")
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_work"))
# issue 10: shards 1/K of the section, a few epochs each, for peak GPU memory against the memory model
MEMORY_SHARDS = [int(k) for k in os.environ.get("GPU_CHECK_MEMORY_SHARDS", "2,4").split(",") if k.strip()]
MEMORY_EPOCHS = _env_int("GPU_CHECK_MEMORY_EPOCHS", 30)

# the tutorial's full runs, for the extrapolation
TUTORIAL_EPOCHS = {"ref": 250, "map": 30000}
# the arguments each variant passes; its last option is the one whose presence in --help is checked
VARIANT_ARGS = {"pipeline": ["--no-early-stop"], "tutorial": ["--tutorial-settings"],
                "hostdata": ["--no-early-stop", "--data-on-device", "off"],
                "dense": ["--no-early-stop", "--likelihood", "dense"]}
VARIANT_FLAG = {v: [a for a in args if a.startswith("--")][-1] for v, args in VARIANT_ARGS.items()}
# `hostdata`: the pipeline's settings with scvi-tools' host-memory minibatch loader, the reference only (the
# mapping model trains in one full batch, which scvi-tools keeps on the GPU anyway)
VARIANT_KINDS = {"hostdata": ("ref",)}
# seconds kept back for each later step, so that one slow step cannot starve the rest
RESERVE_S = {"read_visium": 25, "ref": 80, "map": 60}
MIN_STEP_S = 25

LOGFILE = OUT / "gpu_check.log"
RESULT: dict = {}
_children: set[subprocess.Popen] = set()
CURRENT: dict = {}  # the training run in progress: what _on_term needs to keep its per-epoch numbers


def log(msg: str) -> None:
    line = f"[gpu_check {dt.datetime.now():%H:%M:%S} +{time.time() - T0:5.0f}s] {msg}"
    print(line, flush=True)
    with open(LOGFILE, "a") as fh:
        fh.write(line + "\n")


def save() -> None:
    """Write $OUT/gpu_check.json atomically (called after every step)."""
    RESULT["elapsed_s"] = round(time.time() - T0, 1)
    tmp = OUT / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(RESULT, indent=2, default=str) + "\n")
    os.replace(tmp, OUT / "gpu_check.json")


def time_left() -> float:
    return BUDGET_S - (time.time() - T0)


def _kill_children(*_args) -> None:
    for proc in list(_children):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _on_term(signum, _frame) -> None:
    _kill_children()
    RESULT.setdefault("errors", []).append(f"driver stopped by signal {signum}")
    if CURRENT:
        res = CURRENT["res"]
        res.update(status="killed", note=f"the driver was stopped (signal {signum}) during this run")
        try:
            training_numbers(res, CURRENT["logfile"], CURRENT["summary"], CURRENT["kind"], CURRENT["epochs"])
        except Exception as exc:  # noqa: BLE001
            res["analysis_error"] = f"{type(exc).__name__}: {exc}"
    save()
    sys.exit(128 + signum)


class GpuPoller:
    """nvidia-smi every second while a step runs: the largest memory.used and the mean utilisation."""

    def __init__(self):
        self.exe = shutil.which("nvidia-smi")
        self.mem_mib: list[float] = []
        self.util: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.exe:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run([self.exe, "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits",
                                      "--id=0"], capture_output=True, text=True, timeout=5).stdout
                mem, util = (float(x) for x in out.strip().split(",")[:2])
                self.mem_mib.append(mem)
                self.util.append(util)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=6)

    def summary(self) -> dict:
        if not self.mem_mib:
            return {"nvidia_smi": "not available" if not self.exe else "no reading"}
        busy = [u for u in self.util if u > 0]
        return {"nvidia_smi_peak_memory_gb": round(max(self.mem_mib) / 1024, 2),
                "nvidia_smi_mean_util_pct": round(sum(self.util) / len(self.util), 1),
                "nvidia_smi_mean_util_pct_when_busy": round(sum(busy) / len(busy), 1) if busy else 0.0,
                "nvidia_smi_samples": len(self.mem_mib)}


def run_step(name: str, cmd: list, timeout: float, logfile: Path, abort=None) -> dict:
    """cmd in its own process group, stdout+stderr to logfile, killed (the whole group) after timeout s
    or as soon as abort() returns a reason."""
    cmd = [str(c) for c in cmd]
    log(f"{name}: timeout {timeout:.0f} s: {' '.join(cmd)}")
    t0 = time.perf_counter()
    with open(logfile, "a") as fh, GpuPoller() as poller:
        fh.write(f"# {name}: {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
        _children.add(proc)
        deadline = time.perf_counter() + max(1.0, timeout)
        rc, status, why = None, "timeout", None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=min(1.0, max(0.01, deadline - time.perf_counter())))
                    status = "ok" if rc == 0 else "failed"
                    break
                except subprocess.TimeoutExpired:
                    why = abort() if abort else None
                    if why or time.perf_counter() >= deadline:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        rc, status = None, ("aborted" if why else "timeout")
                        break
        finally:
            _children.discard(proc)
    wall = time.perf_counter() - t0
    res = {"status": status, "exit_code": rc, "wall_s": round(wall, 1), "timeout_s": round(timeout),
           "command": " ".join(cmd), "log": logfile.name, **poller.summary()}
    if why:
        res["abort_reason"] = why
    log(f"{name}: {status} (exit {rc}) after {wall:.1f} s")
    if status == "failed":
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        res["log_tail"] = tail
        for line in tail[-6:]:
            log(f"  | {line}")
    return res


# ----------------------------------------------------------------------------------------------- probes
PROBE = r"""
import json, platform, importlib.metadata as md
out = {"python": platform.python_version(), "import_errors": {}}
for mod in ("torch", "lightning", "pyro", "scvi", "cell2location", "anndata", "scanpy"):
    try:
        __import__(mod)
    except Exception as exc:  # noqa: BLE001
        out["import_errors"][mod] = f"{type(exc).__name__}: {exc}"
versions = {}
for pkg in ("torch", "cell2location", "scvi-tools", "pyro-ppl", "lightning", "pytorch-lightning", "torchmetrics",
            "anndata", "scanpy", "numpy", "pandas", "scipy", "h5py", "numba", "llvmlite", "scikit-learn", "zarr",
            "matplotlib", "mudata", "jax"):
    try:
        versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        versions[pkg] = None
out["versions"] = versions
try:
    import cell2location, scvi
    out["cell2location_file"] = cell2location.__file__
    out["scvi_file"] = scvi.__file__
except Exception:  # noqa: BLE001
    pass
try:
    import torch
    out["torch_cuda_version"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 1024**3, 1),
                      "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
    out["torch_threads"] = torch.get_num_threads()
except Exception as exc:  # noqa: BLE001
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print("PROBE_JSON " + json.dumps(out))
"""


def probe() -> dict:
    try:
        cp = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return {"error": "the import probe took over 180 s"}
    with open(LOGFILE, "a") as fh:
        fh.write(cp.stdout + cp.stderr)
    for line in cp.stdout.splitlines():
        if line.startswith("PROBE_JSON "):
            return json.loads(line[len("PROBE_JSON "):])
    return {"error": f"probe exit {cp.returncode}", "stderr_tail": cp.stderr.splitlines()[-10:]}


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python_executable": sys.executable}
    try:
        mem = open("/proc/meminfo").read()
        info["ram_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 1024**2, 1)
        m = re.search(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read())
        info["cpu_model"] = m.group(1).strip() if m else None
    except (OSError, AttributeError):
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            info["nvidia_smi"] = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    return info


def cli_help(command: str) -> str:
    try:
        cp = subprocess.run([sys.executable, str(C2L), command, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
        return cp.stdout + cp.stderr
    except subprocess.TimeoutExpired:
        return ""


def default_max_epochs(help_text: str) -> int | None:
    m = re.search(r"--max-epochs\s+INTEGER[^\[]*\[default:\s*(\d+)\]", help_text, re.S)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------- analysis
# "epoch 40/500  -ELBO 1.234e+06  [lr 0.002  ]12.3 s elapsed, 307.5 ms/epoch" (the lr field is newer)
EPOCH_RE = re.compile(r"epoch (\d+)/(\d+)\s+-ELBO (\S+)\s.*?([\d.]+) s elapsed, ([\d.]+) ms/epoch")


def epoch_lines(logfile: Path) -> list[tuple[int, float, float]]:
    """(epoch, seconds elapsed, -ELBO) from the CLI's periodic progress lines."""
    rows = []
    for line in logfile.read_text(errors="replace").splitlines():
        m = EPOCH_RE.search(line)
        if m:
            try:
                elbo = float(m.group(3))
            except ValueError:
                elbo = float("nan")
            rows.append((int(m.group(1)), float(m.group(4)), elbo))
    return rows


def training_numbers(res: dict, logfile: Path, summary_json: Path, kind: str, epochs: int) -> None:
    """ms/epoch (overall from the JSON or the log, steady state from the log), JSON keys, extrapolation."""
    rows = epoch_lines(logfile)
    res["epochs_requested"] = epochs
    res["progress_lines"] = [[e, s] for e, s, _ in rows][-30:]
    if rows:
        res["epochs_reached_in_log"] = rows[-1][0]
        res["ms_per_epoch_from_log"] = round(1000 * rows[-1][1] / rows[-1][0], 2)
        res["final_elbo_in_log"] = rows[-1][2]
    if len(rows) >= 2 and rows[-1][0] > rows[0][0]:
        # after the first logged epoch: without CUDA start-up, the first epoch's compilation and warm-up
        res["ms_per_epoch_steady"] = round(1000 * (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]), 2)
    if summary_json.exists():
        js = json.loads(summary_json.read_text())
        res["training_json"] = js
        for key in ("epochs", "stopped_epoch", "stop_reason", "converged_epoch", "train_seconds", "seconds_per_epoch", "export",
                    "export_seconds", "peak_gpu_memory_gb", "device", "num_samples", "lr", "final_lr", "restarts",
                    "final_elbo", "elbo_relative_change_last_10pct", "data_loading"):
            if key in js:
                res[key] = js[key]
        if "seconds_per_epoch" in js:
            res["ms_per_epoch_json"] = round(1000 * float(js["seconds_per_epoch"]), 2)
    elif res.get("status") == "ok":
        res["note_json"] = f"{summary_json.name} was not written"
    spe = None
    for key, source in (("ms_per_epoch_steady", "steady state from the progress lines"),
                        ("ms_per_epoch_json", "seconds_per_epoch of the training JSON"),
                        ("ms_per_epoch_from_log", "overall from the progress lines")):
        if res.get(key):
            spe, res["ms_per_epoch_used"], res["ms_per_epoch_source"] = res[key] / 1000, res[key], source
            break
    res["extrapolation"] = extrapolate(res, kind, spe)


def extrapolate(res: dict, kind: str, spe: float | None) -> dict:
    if spe is None:
        return {"note": "no per-epoch time measured"}
    export = res.get("export_seconds")
    out = {"seconds_per_epoch": round(spe, 4), "export_seconds_measured": export}
    full_epochs = TUTORIAL_EPOCHS[kind]
    if res["variant"] == "tutorial":
        out["full_run_epochs"] = full_epochs
        out["full_train_seconds"] = round(spe * full_epochs, 1)
        out["full_train_plus_export_seconds"] = round(spe * full_epochs + export, 1) if export is not None else None
        out["basis"] = f"the tutorial's {full_epochs} epochs x seconds_per_epoch (+ the measured export)"
    else:
        stopped, reason = res.get("stopped_epoch"), res.get("stop_reason")
        if isinstance(res.get("converged_epoch"), (int, float)):
            # under --no-early-stop the training JSON notes where the stopping rule fired (at the starting rate)
            stopped, reason = res["converged_epoch"], "converged_epoch of the training JSON"
        converged = isinstance(stopped, (int, float)) and "max" not in str(reason or "").lower()
        if converged:
            out["converged_epoch"] = int(stopped)
            out["full_train_seconds"] = round(spe * int(stopped), 1)
            out["full_train_plus_export_seconds"] = round(spe * int(stopped) + export, 1) if export is not None else None
            out["basis"] = "the epoch where the pipeline's convergence test would have stopped x seconds_per_epoch"
        else:
            out["converged_epoch"] = "unknown"
            ran = res.get("epochs") or res.get("epochs_reached_in_log")
            out["note"] = (f"convergence not reached within the {ran} epochs run "
                           f"(stopped_epoch {stopped!r}, stop_reason {reason!r}): the pipeline's full-run time is unknown")
            cap = res.get("pipeline_default_max_epochs")
            if cap:
                out["upper_bound_epochs"] = cap
                out["upper_bound_train_seconds"] = round(spe * cap, 1)
                out["upper_bound_note"] = f"all {cap} epochs of the CLI's --max-epochs default at this speed"
    if SHAPES != TUTORIAL_SHAPES:
        out["warning"] = "measured at reduced shapes (see shapes): not the tutorial's scale"
    return out


def fallback_signatures(reference: Path, path: Path) -> None:
    """Mean counts per cell type of the reference: signatures for map-cells when no train-reference finished."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    ref = ad.read_h5ad(reference)
    labels = ref.obs["cell_type"].astype("category")
    onehot = sp.csr_matrix((np.ones(ref.n_obs), (labels.cat.codes.to_numpy(), np.arange(ref.n_obs))),
                           shape=(len(labels.cat.categories), ref.n_obs))
    means = np.asarray((onehot @ ref.X).todense()) / np.asarray(onehot.sum(axis=1))
    table = pd.DataFrame(means.T + 1e-6, index=ref.var_names, columns=labels.cat.categories.astype(str))
    table.index.name = "gene"
    table.to_csv(path)


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    WORK.mkdir(parents=True, exist_ok=True)
    RESULT.update({
        "what": "cell2location-nf GPU check: train-reference and map-cells, fixed epochs, pipeline vs tutorial settings",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": {"shapes": SHAPES, "tutorial_shapes": SHAPES == TUTORIAL_SHAPES, "ref_epochs": REF_EPOCHS,
                     "map_epochs": MAP_EPOCHS, "device": DEVICE, "budget_s": BUDGET_S, "seed": SEED,
                     "variants": VARIANTS, "missing_flag": MISSING_FLAG, "workdir": str(WORK),
                     "install": os.environ.get("GPU_CHECK_INSTALL_NOTE", "unknown")},
        "machine": machine(),
        "runs": {},
        "errors": [],
    })
    log(f"shapes {SHAPES}, ref {REF_EPOCHS} / map {MAP_EPOCHS} epochs, device {DEVICE}, budget {BUDGET_S} s")
    save()

    # 1. imports and the GPU (in a thread, while the data are generated: both take a while)
    holder: dict = {}
    prober = threading.Thread(target=lambda: holder.update(probe=probe()), daemon=True)
    prober.start()

    def probe_failed():
        pr = holder.get("probe")
        if pr and (pr.get("error") or pr.get("import_errors") or (DEVICE == "cuda" and not pr.get("cuda_available"))):
            return "the import/GPU probe failed"
        return None

    # 2. which variants the CLI offers
    helps = {"ref": cli_help("train-reference"), "map": cli_help("map-cells")}
    defaults = {k: default_max_epochs(v) for k, v in helps.items()}
    cli = {k: {"flags_present": {f: (f in helps[k]) for f in VARIANT_FLAG.values()},
               "default_max_epochs": defaults[k]} for k in helps}
    for k, text in helps.items():
        if "--max-epochs" not in text:
            cli[k]["help_failed"] = text.strip().splitlines()[-5:]
            log(f"WARNING: `c2l {'train-reference' if k == 'ref' else 'map-cells'} --help` failed: {text.strip()[-300:]}")
    RESULT["cli"] = cli
    save()

    # 3. data of the tutorial's shapes (cached between runs on the same machine)
    data_dir = WORK / ("data_" + "_".join(str(v) for v in SHAPES.values()) + f"_seed{SEED}")
    cmd = [sys.executable, HERE / "tutorial_scale.py", "--outdir", data_dir, "--seed", SEED] + [
        a for k, v in SHAPES.items() for a in (f"--{k.replace('_', '-')}", v)]
    cached = (data_dir / "design.json").exists()
    data_res = run_step("data", cmd, min(240, time_left() - 60), LOGFILE, abort=probe_failed)
    data_res["cached"] = cached

    prober.join(timeout=max(5.0, time_left()))
    pr = holder.get("probe") or {"error": "the probe did not finish"}
    RESULT["probe"] = pr
    RESULT["data"] = data_res
    save()
    if pr.get("error") or pr.get("import_errors"):
        RESULT["errors"].append(f"imports failed: {pr.get('error') or pr.get('import_errors')}")
        log(f"ERROR: imports failed: {pr.get('error') or pr.get('import_errors')}")
        save()
        return 1
    log(f"imports ok: {json.dumps(pr['versions'])}; cuda_available={pr.get('cuda_available')} gpu={pr.get('gpu')}")
    if DEVICE == "cuda" and not pr.get("cuda_available"):
        RESULT["errors"].append("torch.cuda.is_available() is False: nothing measured (set GPU_CHECK_DEVICE=cpu for a dry run)")
        log("ERROR: torch sees no CUDA device")
        save()
        return 1
    RESULT["device_name"] = (pr.get("gpu") or {}).get("name") if DEVICE == "cuda" else "cpu"

    res = data_res
    if res["status"] == "ok":
        design = json.loads((data_dir / "design.json").read_text())
        res["design"] = {k: v for k, v in design.items() if k != "zones"}
        res["reference_h5ad_mb"] = round((data_dir / "reference_half.h5ad").stat().st_size / 1024**2, 1)
    RESULT["data"] = res
    save()
    if res["status"] != "ok":
        RESULT["errors"].append("data generation did not finish")
        save()
        return 1
    reference, spots = data_dir / "reference_half.h5ad", data_dir / "spots.h5ad"

    # 4. the section h5ad, as the pipeline's READ_VISIUM makes it
    sec_dir = WORK / "section"
    section = sec_dir / "sim.h5ad"
    shutil.rmtree(sec_dir, ignore_errors=True)
    left = len(VARIANTS) * (RESERVE_S["ref"] + RESERVE_S["map"])
    res = run_step("read_visium", [sys.executable, C2L, "read-visium", "--sample", "sim", "--h5ad", spots, "--outdir", sec_dir],
                   min(120, max(MIN_STEP_S, time_left() - left)), LOGFILE)
    RESULT["read_visium"] = res
    save()

    # 5. the four trainings: ref pipeline, ref tutorial, map pipeline, map tutorial
    plan = [(k, v) for k in ("ref", "map") for v in VARIANTS if k in VARIANT_KINDS.get(v, ("ref", "map"))]
    for kind in ("ref", "map"):  # outputs of an earlier run on this machine must not be picked up
        for variant in VARIANT_FLAG:
            shutil.rmtree(WORK / f"{kind}_{variant}", ignore_errors=True)
    (WORK / "fallback_signatures.csv").unlink(missing_ok=True)
    for i, (kind, variant) in enumerate(plan):
        name = f"{kind}_{variant}"
        flag = VARIANT_FLAG.get(variant)
        res = {"variant": variant, "model": "RegressionModel" if kind == "ref" else "Cell2location",
               "pipeline_default_max_epochs": cli[kind]["default_max_epochs"]}
        RESULT["runs"][name] = res
        if flag is None:
            res.update(status="skipped", reason=f"unknown variant '{variant}'")
            continue
        extra = list(VARIANT_ARGS[variant])
        if not cli[kind]["flags_present"][flag]:
            if MISSING_FLAG != "run":
                res.update(status="skipped", reason=f"`c2l {'train-reference' if kind == 'ref' else 'map-cells'} --help` "
                                                    f"has no {flag}: variant not run")
                log(f"{name}: skipped ({flag} missing from the CLI)")
                save()
                continue
            extra = []
            res["flag_missing"] = f"{flag} missing from the CLI: ran with the CLI's current defaults instead"
        later = sum(RESERVE_S[k] for k, _ in plan[i + 1:])
        timeout = time_left() - later
        if timeout < MIN_STEP_S:
            res.update(status="skipped", reason=f"budget spent ({time_left():.0f} s left, {later} s kept for later steps)")
            log(f"{name}: skipped, no time left")
            save()
            continue
        outdir = WORK / name
        logfile = OUT / f"{name}.log"
        if kind == "ref":
            epochs = REF_EPOCHS
            cmd = [sys.executable, C2L, "train-reference", "--reference", reference, "--labels-key", "cell_type",
                   "--batch-key", "sample", "--max-epochs", epochs, "--device", DEVICE, "--seed", SEED,
                   "--log-every", max(1, epochs // 25), "--outdir", outdir, *extra]
            summary = outdir / "reference_training.json"
        else:
            if not section.exists():
                res.update(status="skipped", reason="no section h5ad (read-visium failed)")
                save()
                continue
            sig = None
            for src in ("ref_pipeline", "ref_tutorial"):
                cand = WORK / src / "signatures.csv"
                if cand.exists():
                    sig, res["signatures_from"] = cand, src
                    break
            if sig is None:
                sig = WORK / "fallback_signatures.csv"
                if not sig.exists():
                    fallback_signatures(reference, sig)
                res["signatures_from"] = "fallback: mean counts per cell type (no train-reference finished)"
            epochs = MAP_EPOCHS
            cmd = [sys.executable, C2L, "map-cells", "--section", f"sim={section}", "--signatures", sig, "--prefix", variant,
                   "--max-epochs", epochs, "--device", DEVICE, "--seed", SEED, "--log-every", max(1, epochs // 25),
                   "--outdir", outdir, *extra]
            summary = outdir / f"{variant}_training.json"
        CURRENT.update(res=res, logfile=logfile, summary=summary, kind=kind, epochs=epochs)
        res.update(run_step(name, cmd, timeout, logfile))
        CURRENT.clear()
        try:
            training_numbers(res, logfile, summary, kind, epochs)
        except Exception as exc:  # noqa: BLE001 - a parsing problem must not lose the other runs
            res["analysis_error"] = f"{type(exc).__name__}: {exc}"
        if res["status"] == "timeout":
            res["note"] = "killed at its time limit: per-epoch numbers come from the progress lines written before"
        save()

    # 6. issue 10: peak GPU memory against the memory model, at smaller location counts (shards of the same section)
    RESULT["memory_scan"] = scan = []
    sig = next((WORK / s / "signatures.csv" for s in ("ref_pipeline", "ref_tutorial")
                if (WORK / s / "signatures.csv").exists()), WORK / "fallback_signatures.csv")
    for count in MEMORY_SHARDS:
        entry = {"shard": f"1/{count}", "epochs": MEMORY_EPOCHS}
        scan.append(entry)
        if not section.exists() or not sig.exists() or time_left() < MIN_STEP_S + 10:
            entry.update(status="skipped", reason="no section/signatures, or no time left")
            save()
            continue
        outdir = WORK / f"memory_{count}"
        shutil.rmtree(outdir, ignore_errors=True)
        cmd = [sys.executable, C2L, "map-cells", "--section", f"sim={section}", "--signatures", sig, "--prefix", "mem",
               "--max-epochs", MEMORY_EPOCHS, "--device", DEVICE, "--seed", SEED, "--log-every", MEMORY_EPOCHS,
               "--shard", f"1/{count}", "--no-early-stop", "--outdir", outdir]
        entry.update(run_step(f"memory_1_of_{count}", cmd, time_left() - 5, LOGFILE))
        found = sorted(outdir.glob("*_training.json"))
        if found:
            js = json.loads(found[0].read_text())
            entry.update({k: js.get(k) for k in ("memory_estimate_gb", "peak_gpu_memory_gb", "seconds_per_epoch")})
            entry["model"] = js.get("model")
            entry["shard_info"] = js.get("shard")
        save()

    # 7. one line per run
    RESULT["summary"] = {
        name: {k: r.get(k) for k in ("status", "reason", "ms_per_epoch_used", "ms_per_epoch_source", "epochs",
                                     "train_seconds", "export", "export_seconds", "peak_gpu_memory_gb", "data_loading",
                                     "nvidia_smi_peak_memory_gb", "wall_s")}
        | {"extrapolated_full_train_s": (r.get("extrapolation") or {}).get("full_train_seconds"),
           "extrapolated_full_train_plus_export_s": (r.get("extrapolation") or {}).get("full_train_plus_export_seconds"),
           "converged_epoch": (r.get("extrapolation") or {}).get("converged_epoch")}
        for name, r in RESULT["runs"].items()
    }
    save()
    for name, s in RESULT["summary"].items():
        log(f"{name}: {json.dumps(s)}")
    bad = [n for n, r in RESULT["runs"].items() if r.get("status") in ("failed",)]
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as exc:  # noqa: BLE001 - record it in the JSON, then fail
        import traceback

        RESULT.setdefault("errors", []).append(f"driver crashed: {type(exc).__name__}: {exc}")
        RESULT["traceback"] = traceback.format_exc().splitlines()[-20:]
        save()
        _kill_children()
        raise
    sys.exit(rc)
