"""A faster fixed rate against the tutorial's path at the same learning rate x epochs: does it land where the
tutorial does?

Adam's path at a small rate depends, to first order, on learning rate x epochs (the distance travelled), not on
the number of steps: 6,000 epochs at lr 0.01 cover the tutorial's budget of 30,000 epochs at 0.002. Reads two
`benchmarks/stopping_curve.py --save-q05 --fixed` runs on one simulated design (the same signatures): the
tutorial's path (`--tutorial-train --lr 0.002`) and a run at `--lr` (the pipeline's loop), and for every snapshot
of the faster run scores its q05 against the ground truth and against the tutorial's snapshot at the same
budget (and at its 30,000th epoch, the bar's yardstick). Writes one JSON.

    .venv/bin/python benchmarks/same_budget.py --data DIR --tutorial DIR --run DIR --lr 0.01 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics import evaluate  # noqa: E402
from tutorial_path import METRICS, TUTORIAL_EPOCHS, median_r, read_run  # noqa: E402

TUTORIAL_LR = 0.002


def tutorial_epoch(epoch: int, lr: float, tutorial_lr: float = TUTORIAL_LR) -> float:
    """The tutorial's epoch with the same budget (learning rate x epochs) as `epoch` epochs at `lr`."""
    return epoch * lr / tutorial_lr


def compare(truth: pd.DataFrame, run: dict[int, pd.DataFrame], tutorial: dict[int, pd.DataFrame], lr: float) -> list:
    """One row per snapshot of `run`: its metrics, and their differences from the tutorial's snapshot at the same
    budget (when the tutorial has one there) and from the tutorial's 30,000th epoch."""
    def metrics(q):
        m = evaluate(truth, q)["overall"]
        return {k: round(float(m[k]), 4) for k in METRICS}

    yardstick = metrics(tutorial[TUTORIAL_EPOCHS]) if TUTORIAL_EPOCHS in tutorial else None
    rows = []
    for epoch, q in run.items():
        row = {"epoch": epoch, "tutorial_epoch": tutorial_epoch(epoch, lr), **metrics(q),
               "mean_q05": round(float(q.values.mean()), 4)}
        if yardstick:
            row["minus_tutorial_30000"] = {k: round(row[k] - yardstick[k], 4) for k in METRICS}
        same = tutorial.get(int(round(row["tutorial_epoch"])))
        if same is not None:
            m = metrics(same)
            row["minus_tutorial_same_budget"] = {k: round(row[k] - m[k], 4) for k in METRICS}
            row["tutorial_mean_q05"] = round(float(same.values.mean()), 4)
            row["q05_r_with_tutorial_median"] = round(median_r(q, same), 4)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the simulate.py folder (true_counts.csv)")
    ap.add_argument("--tutorial", type=Path, required=True, help="stopping_curve.py folder of the tutorial's path")
    ap.add_argument("--run", type=Path, required=True, help="stopping_curve.py folder of the run at --lr")
    ap.add_argument("--lr", type=float, required=True, help="the run's (fixed) learning rate")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    truth = pd.read_csv(a.data / "true_counts.csv", index_col=0)
    _, tutorial, _ = read_run(a.tutorial)
    _, run, _ = read_run(a.run)
    rows = compare(truth, run, tutorial, a.lr)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"data": str(a.data), "tutorial": str(a.tutorial), "run": str(a.run), "lr": a.lr,
                                 "tutorial_lr": TUTORIAL_LR, "rows": rows}, indent=1))
    for r in rows:
        same = r.get("minus_tutorial_same_budget")
        print(f"{r['epoch']:>6} (= tutorial {r['tutorial_epoch']:>7,.0f}): mean q05 {r['mean_q05']:.3f}"
              + (f"  vs the same budget " + " ".join(f"{same[k]:+.3f}" for k in METRICS)
                 + f" r {r['q05_r_with_tutorial_median']:.3f}" if same else "")
              + ("  vs 30,000 " + " ".join(f"{r['minus_tutorial_30000'][k]:+.3f}" for k in METRICS)
                 if "minus_tutorial_30000" in r else ""))


if __name__ == "__main__":
    main()
