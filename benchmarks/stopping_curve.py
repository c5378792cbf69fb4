"""Ground-truth accuracy against the stopping point of the mapping model: how the default tolerance was chosen.

For each tolerance in --tols, trains Cell2location on the benchmark's simulated spots (benchmarks/simulate.py;
reference signatures from --signatures) with the pipeline's plan (training.Plan: lr 0.03 -> 0.002, x1/3 every
--level-epochs or, with 0, per plateau; window/check every --window epochs, JitTrace_ELBO) or, with --fixed, one
rate for all --max-epochs (with --tutorial-train through the model's own train(), as the tutorial), and records
where it stopped, the time, and every --eval-every epochs the q05 abundances' ground-truth metrics
(benchmarks/metrics.py), and their per-type Pearson r with a tutorial run's q05 when --tutorial-q05 is given.
Writes one JSON per tolerance under --out.

    .venv/bin/python benchmarks/stopping_curve.py --data DIR --signatures signatures.csv --out DIR [--tols 1e-3,1e-4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bin"))
sys.path.insert(0, str(HERE))

from c2lnf.cli import DEFAULTS  # noqa: E402
from c2lnf.runtime import prepare_environment, seed_everything, setup_logging  # noqa: E402

prepare_environment()


def run_one(a, tol: float, adata, truth, signatures, tutorial) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from cell2location.models import Cell2location
    from lightning.pytorch.callbacks import Callback
    from scvi.model.base import PyroSviTrainMixin

    from c2lnf import training as T
    from metrics import evaluate, per_type_pearson

    types = list(signatures.columns)
    current: list = [None]
    evals: list[dict] = []
    start = [time.perf_counter()]

    def q05_now():
        with torch.no_grad():
            w = current[0].module.guide.quantiles([0.05])["w_sf"].squeeze(0).cpu().numpy()
        return pd.DataFrame(w, index=adata.obs_names, columns=types)

    def score(q05: pd.DataFrame) -> dict:
        m = evaluate(truth, q05)["overall"]
        out = {k: m[k] for k in ("prop_pearson_spot", "prop_rmse", "abundance_pearson", "aupr")}
        if tutorial is not None:
            r = list(per_type_pearson(q05, tutorial).values())
            out.update(q05_r_tutorial_median=float(np.median(r)), q05_r_tutorial_min=float(np.min(r)))
        return out

    class Eval(Callback):  # the q05 of the guide as it is, every --eval-every epochs (not counted in train_s)
        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch % a.eval_every == 0:
                t = time.perf_counter()
                q05 = q05_now()
                evals.append({"epoch": epoch, **score(q05)})
                if a.save_q05:
                    q05.to_csv(Path(a.out) / f"stopping_tol{tol:g}{a.tag}_q05_epoch{epoch}.csv")
                start[0] += time.perf_counter() - t

    # the pipeline trains through PyroSviTrainMixin.train, the tutorial through Cell2location.train
    original = {PyroSviTrainMixin: PyroSviTrainMixin.train, Cell2location: Cell2location.train}

    def with_eval(cls):
        def train_with_eval(self, **kwargs):
            kwargs["callbacks"] = kwargs.get("callbacks", []) + [Eval()]
            return original[cls](self, **kwargs)
        return train_with_eval

    def make():
        current[0] = Cell2location(adata, cell_state_df=signatures, N_cells_per_location=30, detection_alpha=20)
        return current[0]

    plan = T.Plan(max_epochs=a.max_epochs, lr=a.lr, lr_min=a.lr_min, lr_factor=a.lr_factor, tol=tol,
                  window=a.window, check_every=a.window, min_epochs=a.min_epochs, level_epochs=a.level_epochs)
    if a.fixed:
        plan = plan.fixed()
    seed_everything(a.seed)
    for cls in original:
        cls.train = with_eval(cls)
    try:
        start[0] = time.perf_counter()
        model, monitor, attempts = T.fit(make, plan, "cpu", None, not a.tutorial_train, 1000)
        train_s = time.perf_counter() - start[0]
    finally:
        for cls, train in original.items():
            cls.train = train
    final = q05_now()
    final.to_csv(Path(a.out) / f"stopping_tol{tol:g}{a.tag}_q05.csv")
    return {"tol": tol, "plan": monitor.summary()["plan"], "stopped_epoch": monitor.stopped_epoch,
            "stop_reason": monitor.stop_reason, "lr_events": monitor.summary()["lr_events"], "train_s": train_s,
            "ms_per_epoch": 1000 * train_s / monitor.epoch, "final": score(final), "evals": evals,
            "elbo_every_10": monitor.elbo[::10], "restarts": len(attempts) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a simulate.py output folder (spots.h5ad, true_counts.csv)")
    ap.add_argument("--signatures", type=Path, required=True)
    ap.add_argument("--tutorial-q05", type=Path, default=None, help="q05 CSV of a tutorial run on the same spots")
    ap.add_argument("--tols", default="1e-3,1e-4")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--lr-min", type=float, default=0.002)
    ap.add_argument("--lr-factor", type=float, default=1 / 3, help="lr multiplier at each plateau above --lr-min")
    ap.add_argument("--level-epochs", type=int, default=DEFAULTS["map_level_epochs"],
                    help="epochs at each rate above --lr-min (the pipeline's --map_level_epochs); 0: lower it at "
                         "plateaus (the plan of the 20261126 results)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--min-epochs", type=int, default=500)
    ap.add_argument("--max-epochs", type=int, default=30000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--fixed", action="store_true",
                    help="the tutorial's path: --lr for all --max-epochs, no rate steps, no stopping "
                         "(--tols only names the file)")
    ap.add_argument("--tutorial-train", action="store_true",
                    help="train with the model's own train() as the tutorial does (Trace_ELBO; cell2location's "
                         "PyroAggressiveTrainingPlan: for 1000 epochs 20 steps of the per-location variables, then "
                         "one of the rest), not the pipeline's training loop")
    ap.add_argument("--save-q05", action="store_true", help="also write the q05 CSV at every evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    a = ap.parse_args()
    setup_logging()
    import anndata as ad
    import pandas as pd
    import torch
    from cell2location.models import Cell2location

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    spots = ad.read_h5ad(a.data / "spots.h5ad")
    truth = pd.read_csv(a.data / "true_counts.csv", index_col=0)
    sig = pd.read_csv(a.signatures, index_col=0)
    tutorial = pd.read_csv(a.tutorial_q05, index_col=0) if a.tutorial_q05 else None
    genes = sig.index.intersection(spots.var_names, sort=False)
    adata = spots[:, genes].copy()
    adata.obs["sample"] = "sim"
    Cell2location.setup_anndata(adata=adata, batch_key="sample")
    for tol in (float(t) for t in a.tols.split(",")):
        result = run_one(a, tol, adata, truth, sig.loc[genes], tutorial)
        (a.out / f"stopping_tol{tol:g}{a.tag}.json").write_text(json.dumps(result, indent=1, default=float))
        print(json.dumps({k: result[k] for k in ("tol", "stopped_epoch", "train_s", "final")}, default=float), flush=True)


if __name__ == "__main__":
    main()
