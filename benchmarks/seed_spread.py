"""`make bench NAME=seeds`: the bar's metrics on seed means, and how far apart two seeds of one method land.

The bar (benchmarks/bar.py) compares one pipeline run with one tutorial run, each at one training seed, and asks
that no overall ground-truth metric be worse than the tutorial's by more than 0.01, on seed means. This script reruns both methods on the bar's designs (the
same simulated data: the design seed fixes the data) with other training seeds, and reports for each method and
metric the values per seed, their range, and the difference between the two methods' means. The bar run's own
results (seed = design seed) are read from its JSON and counted as one seed of each method.

    make bench NAME=seeds BENCH_ARGS="--bar-json benchmarks/results/bench_bar_<stamp>.json \
        --pipeline-seeds 11,12,13 --tutorial-seeds 11"

The pipeline runs with the bar run's options (its --pipeline-args) and the tutorial with its settings.

The tutorial's settings do not change with the pipeline's defaults: `--tutorial-seeds "" --tutorial-runs-from
benchmarks/results/seed_spread_<earlier>.json` reuses an earlier run's tutorial seeds (same designs, hence the
same simulated data) instead of spending ~30 min per seed again.

Runs the designs side by side (--parallel, default 2), one core each; timings are not reported (the machine
is shared between the runs on purpose), only metrics. Writes benchmarks/results/seed_spread_<stamp>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bar import BAR, DESIGNS, METRICS, worse_by  # noqa: E402
from common import REPO, device, log, pipeline_command, timed_subprocess, versions  # noqa: E402


def one_design(design: dict, bar_design: dict, work: Path, env: dict, p_seeds: list, t_seeds: list,
               earlier_tutorial: dict | None = None, pipeline_args: list = (), tutorial: dict | None = None) -> dict:
    from metrics import evaluate

    bar_work = Path(bar_design["_workdir"])
    data = {"spots": str(bar_work / "data" / "spots.h5ad"), "reference": str(bar_work / "data" / "reference_half.h5ad")}
    truth = pd.read_csv(bar_work / "data" / "true_counts.csv", index_col=0)
    dev = device()
    work.mkdir(parents=True, exist_ok=True)
    runs = {"pipeline": {str(design["seed"]): bar_design["pipeline"]["metrics"]["overall"]},
            "tutorial": {str(design["seed"]): bar_design["tutorial_by_hand"]["metrics"]["overall"]}}
    for seed, metrics in (earlier_tutorial or {}).items():
        runs["tutorial"].setdefault(seed, metrics)
    q05s = {}
    for seed in p_seeds:
        w = work / f"pipeline_seed{seed}"
        w.mkdir(parents=True, exist_ok=True)
        # designs run side by side: one core each, as the tutorial (OMP_NUM_THREADS=1)
        cmd, out = pipeline_command(w, data, dev, seed, ["--max_cpus", "1", *pipeline_args])
        timed_subprocess(cmd, w, w / "pipeline.log", env)
        q05 = pd.read_csv(out / "map_cells" / "joint" / "sim.q05_cell_abundance_w_sf.csv", index_col=0)
        runs["pipeline"][str(seed)] = {k: evaluate(truth, q05)["overall"][k] for k in METRICS}
        log(f"{design['name']}: pipeline seed {seed}: {runs['pipeline'][str(seed)]}")
    for seed in t_seeds:
        w = work / f"tutorial_seed{seed}"
        cmd = [sys.executable, HERE / "tutorial_by_hand.py", "--reference", data["reference"], "--spots",
               data["spots"], "--outdir", w, "--ref-max-epochs", tutorial["ref_epochs"], "--map-max-epochs",
               tutorial["map_epochs"], "--ref-num-samples", tutorial["ref_samples"], "--map-num-samples",
               tutorial["map_samples"], "--accelerator", dev["accelerator"], "--seed", seed]
        w.mkdir(parents=True, exist_ok=True)
        timed_subprocess(cmd, w, w / "tutorial.log", env)
        q05s[seed] = pd.read_csv(w / "q05_cell_abundance_w_sf.csv", index_col=0)
        runs["tutorial"][str(seed)] = {k: evaluate(truth, q05s[seed])["overall"][k] for k in METRICS}
        log(f"{design['name']}: tutorial seed {seed}: {runs['tutorial'][str(seed)]}")
    summary = {}
    for method, per_seed in runs.items():
        vals = {m: [v[m] for v in per_seed.values()] for m in METRICS}
        summary[method] = {m: {"mean": float(np.mean(x)), "min": float(np.min(x)), "max": float(np.max(x)),
                               "range": float(np.ptp(x)), "n": len(x)} for m, x in vals.items()}
    summary["difference_of_means"] = {m: summary["pipeline"][m]["mean"] - summary["tutorial"][m]["mean"]
                                      for m in METRICS}
    summary["not_worse_on_seed_means"] = all(worse_by(m, d) <= BAR["metric_tolerance"]
                                             for m, d in summary["difference_of_means"].items())
    return {"design": design, "runs": runs, "summary": summary}


def table(results: list[dict]) -> str:
    lines = ["| design | method | seeds | " + " | ".join(f"{m} (mean; range)" for m in METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(METRICS)]
    for r in results:
        for method in ("pipeline", "tutorial"):
            s = r["summary"][method]
            cells = [f"{s[m]['mean']:.3f}; {s[m]['range']:.3f}" for m in METRICS]
            lines.append(f"| {r['design']['name']} | {method} | {s[METRICS[0]]['n']} | " + " | ".join(cells) + " |")
        d = r["summary"]["difference_of_means"]
        verdict = "not worse" if r["summary"]["not_worse_on_seed_means"] else "WORSE"
        lines.append(f"| {r['design']['name']} | pipeline - tutorial (means): {verdict} | | " +
                     " | ".join(f"{d[m]:+.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="make bench NAME=seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--bar-json", type=Path, required=True, help="a bench_bar_*.json whose work folder still exists")
    ap.add_argument("--pipeline-seeds", default="11,12,13")
    ap.add_argument("--tutorial-seeds", default="11")
    ap.add_argument("--tutorial-runs-from", type=Path, default=None,
                    help="an earlier seed_spread_*.json whose tutorial seeds are counted too (same designs)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    bar = json.loads(a.bar_json.read_text())
    by_name = {d["design"]["name"]: d for d in bar["designs"]}
    for name, d in by_name.items():
        d["_workdir"] = str(Path(bar["workdir"]) / name)
        if not (Path(d["_workdir"]) / "data" / "spots.h5ad").exists():
            raise SystemExit(f"seed_spread: {d['_workdir']}/data is gone; rerun the bar (make bench NAME=bar)")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = (a.workdir / f"seed_spread_{stamp}").resolve()
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1")
    p_seeds = [int(s) for s in a.pipeline_seeds.split(",") if s]
    t_seeds = [int(s) for s in a.tutorial_seeds.split(",") if s]
    designs = [d for d in DESIGNS if d["name"] in by_name]
    earlier = {}
    if a.tutorial_runs_from:
        for r in json.loads(a.tutorial_runs_from.read_text())["designs"]:
            if r["design"] != next((d for d in designs if d["name"] == r["design"]["name"]), None):
                raise SystemExit(f"seed_spread: {a.tutorial_runs_from} ran design {r['design']['name']} with other settings")
            earlier[r["design"]["name"]] = r["runs"]["tutorial"]
    with cf.ThreadPoolExecutor(a.parallel) as pool:
        futures = [pool.submit(one_design, d, by_name[d["name"]], work / d["name"], env, p_seeds, t_seeds,
                               earlier.get(d["name"]), bar.get("pipeline_args", []), bar["tutorial_settings"])
                   for d in designs]
        results = [f.result() for f in futures]
    md = table(results)
    out = {"run_id": f"seed_spread_{stamp}", "date": dt.datetime.now().isoformat(timespec="seconds"),
           "bar_json": str(a.bar_json), "pipeline_seeds": p_seeds, "tutorial_seeds": t_seeds,
           "tutorial_runs_from": str(a.tutorial_runs_from) if a.tutorial_runs_from else None,
           "versions": versions(), "designs": results, "table_markdown": md}
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"seed_spread_{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print(md)
    met = all(r["summary"]["not_worse_on_seed_means"] for r in results)
    print(f"\nNo overall metric worse than the tutorial's by more than {BAR['metric_tolerance']} on seed means: "
          f"{'met' if met else 'NOT met'} on {len(results)} design(s). JSON: {path}")


if __name__ == "__main__":
    main()
