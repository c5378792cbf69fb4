"""How the mapping model's answer moves during training, and which signal says it has stopped moving.

Trains Cell2location on simulated sections (the sharding benchmark's data folder: left.h5ad, right.h5ad, one
batch each) with a fixed learning-rate schedule (the same for every seed, so seeds are comparable epoch by
epoch), and records: the sampled -ELBO of every epoch, every --every epochs the log joint density at the guide's
median (deterministic: no Monte Carlo noise) and the median abundances w_sf, and every --snap-every epochs the
q05 abundances. Writes <out>/trace_seed<seed>.npz. Offline analysis (seed-to-seed agreement, drift, where a
stopping rule would have stopped): --analyse.

    .venv/bin/python benchmarks/convergence_trace.py --data DIR --signatures CSV --seed 3 --out DIR
    .venv/bin/python benchmarks/convergence_trace.py --analyse --out DIR --truth true_counts.csv \
        --base seed3 --compare seed4 --compare shard1+shard2 --compare shard1w+shard2w [--figure PNG --label TAG=TEXT ...]

--analyse compares, every 1000 epochs, the q05 of --base (a trace's tag: trace_<tag>.npz) with each --compare
(tags joined by '+' are shards: their spots are concatenated): per-type Pearson r (median, lowest), the mean q05
(the abundances' scale) and the ground-truth metrics of both; writes <out>/analysis.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bin"))
sys.path.insert(0, str(HERE))


def schedule(spec: str) -> list[tuple[int, float]]:
    """'0:0.03,1500:0.01,...' -> [(epoch from which, lr)]."""
    return [(int(e), float(lr)) for e, lr in (p.split(":") for p in spec.split(","))]


def run(a) -> None:
    from c2lnf.runtime import prepare_environment, seed_everything, setup_logging

    prepare_environment()
    setup_logging()
    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch
    from cell2location.models import Cell2location
    from lightning.pytorch.callbacks import Callback
    from pyro import poutine
    from scvi.model.base import PyroSviTrainMixin

    from c2lnf import training as T

    torch.set_num_threads(a.threads)
    sig = pd.read_csv(a.signatures, index_col=0)
    parts = [ad.read_h5ad(a.data / f"{s}.h5ad") for s in ("left", "right")]
    for s, p in zip(("left", "right"), parts):
        p.obs["sample"] = s
    spots = ad.concat(parts, merge="same")
    if a.obs is not None:  # a subset of the spots (e.g. one shard's), one name per line
        spots = spots[[n.strip() for n in a.obs.read_text().split() if n.strip()]].copy()
    genes = sig.index.intersection(spots.var_names, sort=False)
    adata = spots[:, genes].copy()
    Cell2location.setup_anndata(adata=adata, batch_key="sample")
    plan_lr = schedule(a.schedule)
    current: list = [None]
    rec = {"epoch": [], "logjoint": [], "median": [], "q05_epoch": [], "q05": [], "wall": []}
    t0 = [time.perf_counter()]

    def lr_at(epoch: int) -> float:
        return [lr for e, lr in plan_lr if e <= epoch][-1]

    class Trace(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            T.set_learning_rate(pl_module, lr_at(epoch))
            if epoch % a.every:
                return
            model = current[0]
            guide = model.module.guide
            with torch.no_grad():
                med = guide.median()
                args, kwargs = T._model_args(model, None)
                tr = poutine.trace(poutine.condition(model.module.model, data=med)).get_trace(*args, **kwargs)
                rec["epoch"].append(epoch)
                rec["logjoint"].append(float(tr.log_prob_sum()))
                rec["median"].append(med["w_sf"].cpu().numpy().astype(np.float32))
                rec["wall"].append(time.perf_counter() - t0[0])
                if epoch % a.snap_every == 0:
                    rec["q05_epoch"].append(epoch)
                    rec["q05"].append(guide.quantiles([0.05])["w_sf"].squeeze(0).cpu().numpy().astype(np.float32))

    original = PyroSviTrainMixin.train

    def train_traced(self, **kwargs):
        kwargs["callbacks"] = kwargs.get("callbacks", []) + [Trace()]
        return original(self, **kwargs)

    def make():
        current[0] = Cell2location(adata, cell_state_df=sig.loc[genes], N_cells_per_location=30, detection_alpha=20)
        if a.gene_level_weight != 1:
            from c2lnf.map_cells import weigh_gene_level_terms

            weigh_gene_level_terms(current[0], a.gene_level_weight)
        return current[0]

    plan = T.Plan(max_epochs=a.max_epochs, lr=plan_lr[0][1], lr_min=plan_lr[0][1]).fixed()
    seed_everything(a.seed)
    PyroSviTrainMixin.train = train_traced
    try:
        t0[0] = time.perf_counter()
        model, monitor, _ = T.fit(make, plan, "cpu", None, True, 1000)
    finally:
        PyroSviTrainMixin.train = original
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out / f"trace_seed{a.seed}{a.tag}.npz", elbo=np.array(monitor.elbo), epoch=np.array(rec["epoch"]),
                        logjoint=np.array(rec["logjoint"]), median=np.stack(rec["median"]),
                        q05_epoch=np.array(rec["q05_epoch"]), q05=np.stack(rec["q05"]), wall=np.array(rec["wall"]),
                        obs_names=np.array(adata.obs_names, dtype=str), types=np.array(sig.columns, dtype=str), schedule=a.schedule)


def analyse(a) -> None:
    import json

    import numpy as np
    import pandas as pd

    from metrics import evaluate, per_type_pearson

    truth = pd.read_csv(a.truth, index_col=0)
    load = {}

    def q05(tag: str, epoch: int) -> pd.DataFrame:
        parts = []
        for t in tag.split("+"):
            if t not in load:
                load[t] = np.load(a.out / f"trace_{t}.npz", allow_pickle=True)
            d = load[t]
            i = list(d["q05_epoch"]).index(epoch)
            parts.append(pd.DataFrame(d["q05"][i], index=d["obs_names"], columns=list(d["types"])))
        return pd.concat(parts)

    keys = ("prop_pearson_spot", "prop_rmse", "abundance_pearson", "aupr")
    rows = []
    q05(a.base, 1000)
    last = int(load[a.base]["q05_epoch"].max())
    for other in a.compare:
        for t in other.split("+"):
            q05(t, 1000)
        end = min([last] + [int(load[t]["q05_epoch"].max()) for t in other.split("+")])
        for epoch in range(1000, end + 1, 1000):
            b, c = q05(a.base, epoch), q05(other, epoch)
            c = c.loc[b.index]
            r = list(per_type_pearson(b, c).values())
            mb, mc = evaluate(truth, b)["overall"], evaluate(truth, c)["overall"]
            rows.append({"base": a.base, "other": other, "epoch": epoch, "q05_r_median": float(np.median(r)),
                         "q05_r_min": float(min(r)), "q05_mean_base": float(b.to_numpy().mean()),
                         "q05_mean_other": float(c.to_numpy().mean()),
                         **{f"{k}_base": float(mb[k]) for k in keys}, **{f"{k}_other": float(mc[k]) for k in keys},
                         "largest_metric_difference": float(max(abs(mc[k] - mb[k]) for k in keys))})
            x = rows[-1]
            print(f"{other:>16} {epoch:>6}  r {x['q05_r_median']:.3f} / {x['q05_r_min']:.3f}  mean q05 "
                  f"{x['q05_mean_base']:.3f} / {x['q05_mean_other']:.3f}  largest metric difference "
                  f"{x['largest_metric_difference']:.3f}")
    if a.figure:
        plot(rows, a.base, a.figure, dict(item.split("=", 1) for item in a.label))
    schedules = {t: str(d["schedule"]) for t, d in load.items()}
    (a.out / "analysis.json").write_text(json.dumps({"base": a.base, "schedules": schedules, "rows": rows}, indent=1))


def plot(rows: list[dict], base: str, path: Path, labels: dict[str, str]) -> None:
    """Two panels against the epoch: the abundances' scale (mean q05) of every run, and each run's largest
    ground-truth metric difference from `base`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    others = list(dict.fromkeys(r["other"] for r in rows))
    first = [r for r in rows if r["other"] == others[0]]
    left.plot([r["epoch"] for r in first], [r["q05_mean_base"] for r in first], "k-o", label=labels.get(base, base))
    for other in others:
        mine = [r for r in rows if r["other"] == other]
        label = labels.get(other, other)
        left.plot([r["epoch"] for r in mine], [r["q05_mean_other"] for r in mine], "-o", ms=3, label=label)
        right.plot([r["epoch"] for r in mine], [r["largest_metric_difference"] for r in mine], "-o", ms=3, label=label)
    right.axhline(0.01, color="grey", ls="--", lw=1, label="bar: 0.01")
    left.set(xlabel="epoch", ylabel="mean q05 abundance", title="the abundances' scale keeps moving")
    right.set(xlabel="epoch", ylabel="largest ground-truth metric difference", title=f"against {labels.get(base, base)}, same rate path")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--signatures", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedule", default="0:0.03,1500:0.01,2500:0.0033333,3500:0.002")
    ap.add_argument("--max-epochs", type=int, default=9000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--snap-every", type=int, default=250)
    ap.add_argument("--obs", type=Path, default=None, help="train on these spots only (one name per line)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--gene-level-weight", type=float, default=1.0,
                    help="weight of the gene-level ELBO terms (a shard of n of N locations: n / N)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--analyse", action="store_true")
    ap.add_argument("--truth", type=Path)
    ap.add_argument("--base", default="seed3")
    ap.add_argument("--compare", action="append", default=[])
    ap.add_argument("--figure", type=Path, default=None, help="with --analyse: a PNG of the comparison")
    ap.add_argument("--label", action="append", default=[], help="TAG=TEXT: the figure's name for a run")
    a = ap.parse_args()
    analyse(a) if a.analyse else run(a)


if __name__ == "__main__":
    main()
