"""Does training the reference past the tutorial's 250 epochs make the maps more accurate? (One-off, not in the
suite's list: it reuses a bar run's work folder.)

On the bar's designs (the same simulated data and seed as a `make bench NAME=bar` run), the pipeline at its
defaults except `--ref_max_epochs N` (the tutorial's rate 0.002; the reference's stopping rule still stops it once
its -ELBO is flat by the report's measure), against the bar run's pipeline (defaults: 250 epochs) and tutorial:
ground-truth metrics of the three, per-type q05 r of the longer run with the other two, and how the signatures'
scale moved (sum over genes per type, longer run over default).

    .venv/bin/python benchmarks/reference_budget.py --bar-json benchmarks/results/bench_bar_<stamp>.json \
        --ref-max-epochs 3000

Writes benchmarks/results/reference_budget_<stamp>.json. Timings are recorded, not judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bar import DESIGNS, METRICS  # noqa: E402
from common import REPO, device, log, pipeline_command, versions  # noqa: E402

Q05 = "map_cells/joint/sim.q05_cell_abundance_w_sf.csv"


def one_design(design: dict, bar_work: Path, work: Path, epochs: int, env: dict, dev: dict) -> dict:
    from metrics import evaluate, per_type_pearson

    data = {"spots": str(bar_work / "data/spots.h5ad"), "reference": str(bar_work / "data/reference_half.h5ad")}
    truth = pd.read_csv(bar_work / "data/true_counts.csv", index_col=0)
    work.mkdir(parents=True, exist_ok=True)
    cmd, out = pipeline_command(work, data, dev, design["seed"], ["--ref_max_epochs", epochs])
    log(" ".join(map(str, cmd)))
    t0 = time.time()
    with open(work / "pipeline.log", "w") as fh:
        rc = subprocess.run(list(map(str, cmd)), cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"reference_budget: the pipeline failed on {design['name']} (log: {work / 'pipeline.log'})")
    q05 = {"longer": pd.read_csv(out / Q05, index_col=0),
           "default": pd.read_csv(bar_work / "pipeline_out" / Q05, index_col=0),
           "tutorial": pd.read_csv(bar_work / "tutorial_out/q05_cell_abundance_w_sf.csv", index_col=0)}
    ref = json.loads((out / "train_reference/reference_training.json").read_text())
    sig = {k: pd.read_csv(p / "train_reference/signatures.csv", index_col=0)
           for k, p in (("longer", out), ("default", bar_work / "pipeline_out"))}
    scale = sig["longer"].sum() / sig["default"].sum()
    r_default, r_tutorial = per_type_pearson(q05["default"], q05["longer"]), per_type_pearson(q05["tutorial"], q05["longer"])
    return {"metrics": {k: {m: evaluate(truth, v)["overall"][m] for m in METRICS} for k, v in q05.items()},
            "ref_epochs": ref.get("epochs"), "ref_stop": ref.get("stop_reason"),
            "ref_flat": ref.get("elbo_relative_change_last_10pct"), "wall_s": round(time.time() - t0, 1),
            "q05_r_longer_vs_default_median": float(np.median(list(r_default.values()))),
            "q05_r_longer_vs_tutorial_median": float(np.median(list(r_tutorial.values()))),
            "signature_sum_ratio_longer_over_default": {"median": float(scale.median()), "min": float(scale.min()),
                                                        "max": float(scale.max())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bar-json", type=Path, required=True, help="a bench_bar_*.json whose work folder still exists")
    ap.add_argument("--ref-max-epochs", type=int, default=3000)
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args()
    bar = json.loads(a.bar_json.read_text())
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", NXF_ANSI_LOG="false",
               NXF_OFFLINE="true", MPLBACKEND="Agg")
    dev = device()
    result = {"run_id": stamp, "bar_json": str(a.bar_json), "ref_max_epochs": a.ref_max_epochs,
              "versions": versions(), "designs": {}}
    for design in DESIGNS:
        bar_work = Path(bar["workdir"]) / design["name"]
        if not (bar_work / "data" / "spots.h5ad").exists():
            raise SystemExit(f"reference_budget: {bar_work}/data is gone; rerun the bar (make bench NAME=bar)")
        result["designs"][design["name"]] = one_design(design, bar_work,
                                                       a.workdir / f"reference_budget_{stamp}" / design["name"],
                                                       a.ref_max_epochs, env, dev)
        print(json.dumps({design["name"]: result["designs"][design["name"]]}, indent=1), flush=True)
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"reference_budget_{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log(f"JSON: {path}")


if __name__ == "__main__":
    main()
