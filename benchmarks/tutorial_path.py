"""Where the tutorial's mapping run is at its 30,000th epoch, and where it goes after: is its answer converged?

Reads `benchmarks/stopping_curve.py --save-q05` runs on one simulated design (the bar's data, the same
signatures): the tutorial's path continued past 30,000 epochs (`--fixed --tutorial-train --lr 0.002 --lr-min
0.002 --max-epochs 60000`), optionally the same rate through the pipeline's training loop (`--fixed`, without
`--tutorial-train`), and the pipeline's default plan (optionally more seeds of it, `--pipeline-seed`). For every
saved epoch it scores the q05 abundances against the ground truth (benchmarks/metrics.py) and records their mean
(the abundances' scale), the per-type Pearson r with the pipeline's final q05, and the -ELBO (mean of the 500
epochs before). Writes one JSON and a figure: the scale and the metrics' distance from the pipeline's answer
along each path.

    .venv/bin/python benchmarks/tutorial_path.py --data DIR --run tutorial=DIR --run plain=DIR \\
        --pipeline DIR --out benchmarks/results/tutorial_path_<date>.json --figure docs/images/tutorial_path.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics import evaluate, per_type_pearson  # noqa: E402

METRICS = ("prop_pearson_spot", "prop_rmse", "abundance_pearson", "aupr")
LABELS = {"prop_pearson_spot": "proportion r", "prop_rmse": "proportion RMSE", "abundance_pearson": "abundance r",
          "aupr": "AUPR"}
TUTORIAL_EPOCHS = 30000


def read_run(folder: Path) -> tuple[dict, dict[int, pd.DataFrame], pd.DataFrame]:
    """(the run's JSON, {epoch: q05 table}, its final q05) from one stopping_curve.py --save-q05 output folder. A
    run stopped before its end has no JSON yet: its snapshots are read, the last one is its final q05, and the
    -ELBO is not known."""
    jsons = list(folder.glob("stopping_tol*.json"))
    csvs = list(folder.glob("stopping_tol*_q05_epoch*.csv"))
    if len(jsons) > 1 or not (jsons or csvs):
        raise SystemExit(f"{folder}: expected one stopping_curve.py --save-q05 run, found {len(jsons)} JSONs, "
                         f"{len(csvs)} snapshots")
    stem = jsons[0].stem if jsons else re.sub(r"_q05_epoch\d+$", "", csvs[0].stem)
    snapshots = {}
    for p in folder.glob(f"{stem}_q05_epoch*.csv"):
        snapshots[int(re.search(r"epoch(\d+)\.csv$", p.name).group(1))] = pd.read_csv(p, index_col=0)
    snapshots = dict(sorted(snapshots.items()))
    if jsons:
        return json.loads(jsons[0].read_text()), snapshots, pd.read_csv(folder / f"{stem}_q05.csv", index_col=0)
    last = max(snapshots)
    return {"stopped_epoch": last, "stopped_early": True}, snapshots, snapshots[last]


def median_r(a: pd.DataFrame, b: pd.DataFrame) -> float:
    return float(np.median(list(per_type_pearson(a, b).values())))


def elbo_before(summary: dict, epoch: int, span: int = 500) -> float | None:
    """Mean -ELBO of the `span` epochs up to `epoch` (the JSON keeps every 10th epoch)."""
    values = np.asarray(summary.get("elbo_every_10") or [], dtype=float)
    i = epoch // 10
    part = values[max(0, i - span // 10):i]
    return float(part.mean()) if len(part) else None


def score(truth: pd.DataFrame, q05: pd.DataFrame, answer: pd.DataFrame) -> dict:
    m = evaluate(truth, q05)["overall"]
    return {**{k: round(float(m[k]), 4) for k in METRICS}, "mean_q05": round(float(q05.values.mean()), 4),
            "q05_r_with_pipeline_median": round(median_r(q05, answer), 4)}


def analyse(data: Path, runs: dict[str, Path], pipeline: Path, pipeline_seeds: list[Path] = ()) -> dict:
    """Every snapshot of `runs` scored and compared with the pipeline's answer (`pipeline`'s final q05);
    `pipeline_seeds`: more runs of the pipeline's plan with other seeds, whose final metrics are recorded against
    the same answer (how far the pipeline's own answer moves from seed to seed)."""
    truth = pd.read_csv(data / "true_counts.csv", index_col=0)
    p_summary, p_snapshots, answer = read_run(pipeline)
    result = {"data": str(data), "pipeline": {"folder": str(pipeline), "epochs": p_summary["stopped_epoch"],
                                              "elbo_last_500": elbo_before(p_summary, p_summary["stopped_epoch"]),
                                              "final": score(truth, answer, answer),
                                              "path": [{"epoch": e, **score(truth, q, answer)}
                                                       for e, q in p_snapshots.items()]},
              "runs": {}}
    base = result["pipeline"]["final"]
    result["pipeline_seeds"] = []
    for folder in pipeline_seeds:
        summary, _, final = read_run(folder)
        s = score(truth, final, answer)
        result["pipeline_seeds"].append({"folder": str(folder), "epochs": summary.get("stopped_epoch"), "final": s,
                                         "minus_pipeline": {k: round(s[k] - base[k], 4) for k in METRICS}})
    for name, folder in runs.items():
        summary, snapshots, _ = read_run(folder)
        path = []
        for e, q in snapshots.items():
            s = score(truth, q, answer)
            s["elbo_last_500"] = elbo_before(summary, e)  # None for a run without its JSON
            s["minus_pipeline"] = {k: round(s[k] - base[k], 4) for k in METRICS}
            path.append({"epoch": e, **s})
        within = [p["epoch"] for p in path if max(abs(v) for v in p["minus_pipeline"].values()) <= 0.01]
        result["runs"][name] = {"folder": str(folder), "plan": summary.get("plan"), "train_s": summary.get("train_s"),
                                "last_epoch": max(snapshots), "stopped_early": bool(summary.get("stopped_early")),
                                "path": path, "epochs_within_0.01_of_pipeline": within}
    return result


def figure(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"tutorial": ("tab:red", "the tutorial's train(), lr 0.002"),
              "plain": ("tab:orange", "the pipeline's loop, lr 0.002 fixed")}
    pipe = result["pipeline"]
    ax1.plot([p["epoch"] for p in pipe["path"]], [p["mean_q05"] for p in pipe["path"]], color="tab:blue", lw=1.5,
             label=f"pipeline defaults (stops at {pipe['epochs']:,})")
    for name, run in result["runs"].items():
        color, label = styles.get(name, ("grey", name))
        ax1.plot([p["epoch"] for p in run["path"]], [p["mean_q05"] for p in run["path"]], color=color, lw=1.5,
                 label=label)
    for ax in (ax1, ax2):
        ax.axvline(TUTORIAL_EPOCHS, color="black", ls=":", lw=1)
    low, high = ax1.get_ylim()
    ax1.text(TUTORIAL_EPOCHS, low + 0.04 * (high - low), "the tutorial stops ", fontsize=8, ha="right")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean q05 abundance (cells per spot and type)")
    ax1.set_title("the abundances' scale along each path", fontsize=10)
    ax1.legend(fontsize=8, loc="upper right")

    run = result["runs"].get("tutorial") or next(iter(result["runs"].values()))
    ax2.axhspan(-0.01, 0.01, color="0.9", label="within 0.01")
    for k, color in zip(METRICS, ("tab:purple", "tab:brown", "tab:green", "tab:cyan")):
        ax2.plot([p["epoch"] for p in run["path"]], [p["minus_pipeline"][k] for p in run["path"]], color=color,
                 lw=1.3, label=LABELS[k])
    for seed in result["pipeline_seeds"]:  # the pipeline's other seeds, at their stops
        for k, color in zip(METRICS, ("tab:purple", "tab:brown", "tab:green", "tab:cyan")):
            ax2.plot(seed["epochs"], seed["minus_pipeline"][k], "o", ms=3.5, color=color)
    if result["pipeline_seeds"]:
        ax2.plot([], [], "o", ms=3.5, color="0.4", label="the pipeline, other seeds (at their stop)")
    ax2.axhline(0, color="tab:blue", lw=1)
    ax2.set_xlabel("epoch of the tutorial's run")
    ax2.set_ylabel("tutorial's metric - pipeline's (at its stop)")
    ax2.set_title("the tutorial's metrics, relative to the pipeline's answer", fontsize=10)
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the simulate.py folder (true_counts.csv)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                    help="a stopping_curve.py --save-q05 folder of a long fixed-rate run (names: tutorial, plain)")
    ap.add_argument("--pipeline", type=Path, required=True, help="its folder of the pipeline's default plan")
    ap.add_argument("--pipeline-seed", type=Path, action="append", default=[], metavar="DIR",
                    help="a run of the pipeline's plan with another seed (repeatable): its final metrics against "
                         "the answer of --pipeline")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    runs = dict(r.split("=", 1) for r in a.run)
    result = analyse(a.data, {k: Path(v) for k, v in runs.items()}, a.pipeline, a.pipeline_seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    if a.figure:
        figure(result, a.figure, a.title)
    for name, run in result["runs"].items():
        for p in run["path"]:
            if p["epoch"] % 10000 == 0:
                d = p["minus_pipeline"]
                print(f"{name} {p['epoch']:>6}: " + " ".join(f"{LABELS[k]} {d[k]:+.3f}" for k in METRICS)
                      + f"  mean q05 {p['mean_q05']:.3f}  r {p['q05_r_with_pipeline_median']:.3f}"
                      + (f"  -ELBO {p['elbo_last_500']:.0f}" if p["elbo_last_500"] else ""))
    print("pipeline", result["pipeline"]["final"], "-ELBO", round(result["pipeline"]["elbo_last_500"] or 0))
    for seed in result["pipeline_seeds"]:
        print("pipeline, other seed", seed["folder"], seed["epochs"], seed["final"])


if __name__ == "__main__":
    main()
