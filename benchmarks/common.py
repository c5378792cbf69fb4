"""What the benchmarks share: paths, logging, timed subprocesses, Nextflow traces, versions, machine and device.

Imported by the benchmarks (and only by them); it imports none of them.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

TESTDATA = Path(os.environ.get("TESTDATA", REPO.parent / "shared" / "testdata"))
STEP_MAP = {  # pipeline process -> tutorial_by_hand steps doing the same work
    "READ_VISIUM": ["read_spots"],
    "FILTER_REFERENCE": ["filter_reference"],
    "TRAIN_REFERENCE": ["train_reference.train", "train_reference.export_posterior", "train_reference.save"],
    "MAP_CELLS": ["map_cells.setup", "map_cells.train", "map_cells.export_posterior", "map_cells.save"],
    "PLOT_SPATIAL": [],
}


def log(msg: str) -> None:
    print(f"[bench {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def timed_subprocess(cmd: list[str], cwd: Path, logfile: Path, env: dict | None = None) -> dict:
    """Run cmd, stdout+stderr to logfile; wall seconds and the peak RSS of the process tree (os.wait4)."""
    log("+ " + " ".join(map(str, cmd)))
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(open(logfile, errors="replace").readlines()[-40:])
        raise SystemExit(f"bench: {cmd[0]} failed (exit {proc.returncode}); last lines of {logfile}:\n{tail}")
    # ru_maxrss (KiB on Linux): the largest single process among it and its waited-for descendants
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),
            "cpu_user_s": round(usage.ru_utime, 1), "cpu_sys_s": round(usage.ru_stime, 1),
            "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_duration(text: str) -> float:
    if not text or text == "-":
        return float("nan")
    return sum(float(v) * _UNITS[u] for v, u in re.findall(r"([\d.]+)\s*(ms|s|m|h|d)\b", text))


def parse_bytes(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([KMGT]?B)", text or "")
    return float(m.group(1)) * _BYTES[m.group(2)] if m else float("nan")


def read_trace(outdir: Path) -> list[dict]:
    files = sorted(glob.glob(str(outdir / "pipeline_info" / "execution_trace_*.txt")), key=os.path.getmtime)
    if not files:
        raise SystemExit(f"bench: no Nextflow trace under {outdir}/pipeline_info")
    trace = pd.read_csv(files[-1], sep="\t")
    rows = []
    for _, r in trace.iterrows():
        rows.append({"process": str(r["process"]).split(":")[-1], "tag": str(r.get("tag", "")), "status": r["status"],
                     "realtime_s": parse_duration(str(r["realtime"])),
                     "duration_s": parse_duration(str(r["duration"])),
                     "peak_rss_gb": round(parse_bytes(str(r["peak_rss"])) / 1024**3, 3),
                     "cpu_percent": str(r["%cpu"])})
    return rows


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("cell2location", "scvi-tools", "torch", "pyro-ppl", "lightning", "anndata", "scanpy", "numpy", "scipy",
                "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        nf = subprocess.run(["nextflow", "-version"], capture_output=True, text=True, timeout=120).stdout
        m = re.search(r"version\s+([\d.]+\S*)", nf)
        out["nextflow"] = m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        out["nextflow"] = None
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus_visible": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0))}
    try:
        mem = open("/proc/meminfo").read()
        info["ram_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 1024**2, 1)
        cpu = open("/proc/cpuinfo").read()
        m = re.search(r"model name\s*:\s*(.+)", cpu)
        info["cpu_model"] = m.group(1).strip() if m else None
    except OSError:
        pass
    try:
        load = os.getloadavg()
        info["load_avg"] = [round(x, 2) for x in load]
    except OSError:
        pass
    return info


def device() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"accelerator": "gpu", "name": torch.cuda.get_device_name(0), "gpu_available": True}
    return {"accelerator": "cpu", "name": "cpu", "gpu_available": False,
            "note": "no GPU visible to torch: both methods trained on the CPU"}


def fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def pipeline_command(work: Path, data: dict, dev: dict, seed: int, extra: list) -> tuple[list, Path]:
    """The `nextflow run` of the pipeline on the simulated spots (one h5ad section) and its output folder."""
    sheet = work / "samplesheet.csv"
    sheet.write_text(f"sample,h5ad\nsim,{data['spots']}\n")
    nf_out = work / "pipeline_out"
    profile = "local,gpu" if dev["accelerator"] == "gpu" else "local"
    return ["nextflow", "run", REPO / "main.nf", "-profile", profile, "-work-dir", work / "nf-work",
            "--input", sheet, "--reference", data["reference"], "--labels_key", "cell_type", "--batch_key", "sample",
            "--outdir", nf_out, *extra, "--seed", seed], nf_out


def epoch_callbacks(*callbacks):
    """One Lightning callback that passes each epoch's start and end to `callbacks` in turn (the pipeline's
    training-control callback and a benchmark's timer): the plain full-batch loop calls the same two hooks."""
    from lightning.pytorch.callbacks import Callback

    class EpochCallbacks(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            for c in callbacks:
                if hasattr(c, "on_train_epoch_start"):
                    c.on_train_epoch_start(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            for c in callbacks:
                c.on_train_epoch_end(trainer, pl_module)

    return EpochCallbacks()


def mean_signatures(ref, labels: pd.Series, genes: pd.Index | None = None) -> pd.DataFrame:
    """Genes x types mean counts per cell of `ref` (+ 1e-3): stand-in signatures for timing the mapping (their
    values do not change the cost of an epoch)."""
    genes = ref.var_names if genes is None else genes
    x = ref[:, genes].X
    labels = labels.astype(str)
    return pd.DataFrame({c: np.asarray(x[(labels == c).to_numpy()].mean(0)).ravel() + 1e-3
                         for c in sorted(labels.unique())}, index=genes)
