"""Per-epoch time of the full-batch mapping at the bar's shapes, three ways in one process: scvi-tools' Lightning
loop with torch's per-tensor Adam (the pipeline before 2026-12-07), the plain full-batch loop
(`training.loop.train_full_batch`) with the per-tensor Adam, and the plain loop with torch's multi-tensor
(`foreach`) Adam (the default now); and that all three train the same model bit for bit.

At the bar's shapes (hundreds of spots x hundreds of genes x 11 types) a mapping epoch costs milliseconds that do
not depend on the data's size (Pyro's compiled trace, autograd, the optimiser, the training loop's own work), and
the pipeline's defaults run thousands of them; this is where the wall-time ratio against the tutorial is decided.

Data: the bar's designs (`bar.DESIGNS`, simulated by `bar.build_design` exactly as the bar run makes them);
signatures = the held-out reference half's mean counts per cell type (their values do not change the cost of an
epoch; the genes are all the section's, so design A is 400 x 558 x 11 here, 473 genes after the pipeline's
reference filter). Every variant trains through `training.loop.fit` (the pipeline's fast path: fused likelihood,
JitTrace_ELBO, fixed epochs at lr 0.03, seed 0, --threads threads) in the order lightning, plain, plain+foreach,
lightning, ... (--rounds rounds); the first --warmup epochs are left out and the median of the rest is ms/epoch.

    flock /tmp/c2l-heavy.lock .venv/bin/python benchmarks/loop_costs.py

Writes benchmarks/results/loop_costs_<timestamp>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bin"))
sys.path.insert(0, str(HERE))

from c2lnf.runtime import prepare_environment, seed_everything, setup_logging  # noqa: E402

prepare_environment()

VARIANTS = {  # name: (plain full-batch loop, foreach Adam)
    "lightning": (False, False),
    "plain": (True, False),
    "plain+foreach": (True, True),
}


def main(argv: list[str] | None = None) -> None:
    from bar import DESIGNS, build_design
    from common import device, epoch_callbacks, log, machine, mean_signatures, versions

    ap = argparse.ArgumentParser(prog="make bench NAME=loop", description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=",".join(d["name"] for d in DESIGNS))
    ap.add_argument("--n-spots", type=int, default=None, help="fewer spots than the design's (smoke tests)")
    ap.add_argument("--epochs", type=int, default=600, help="epochs per run (the first --warmup not counted)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=HERE / "work" / "loop_costs_data")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    setup_logging(False)

    import anndata as ad
    import numpy as np
    import pyro
    import torch
    from cell2location.models import Cell2location

    from c2lnf.training import loop
    from c2lnf.training.stopping import Plan

    torch.set_num_threads(a.threads)
    chosen = [d for d in DESIGNS if d["name"] in a.designs.split(",")]
    if not chosen:
        raise SystemExit(f"bench loop: no design among {a.designs}; known: {[d['name'] for d in DESIGNS]}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = {"run_id": f"loop_costs_{stamp}", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "epochs": a.epochs, "warmup": a.warmup, "rounds": a.rounds, "threads": a.threads,
              "machine": machine(), "device": device(), "versions": versions(), "designs": []}

    class EpochTimes:
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.t0)

    for design in chosen:
        data = build_design(design, a.data / design["name"], a.n_spots)
        ref = ad.read_h5ad(data["reference"])
        spots = ad.read_h5ad(data["spots"])
        genes = spots.var_names.intersection(ref.var_names)
        spots = spots[:, genes].copy()
        sig = mean_signatures(ref, ref.obs["cell_type"], genes)
        Cell2location.setup_anndata(spots, batch_key="sample")
        shape = {"spots": spots.n_obs, "genes": spots.n_vars, "types": sig.shape[1]}
        log(f"{design['name']}: {shape}")
        runs: dict[str, list] = {name: [] for name in VARIANTS}
        elbo: dict[str, list] = {}
        for _ in range(a.rounds):
            for name, (plain, foreach) in VARIANTS.items():
                timer = EpochTimes()
                original = loop.control_callback
                loop.control_callback = lambda monitor, log_every=None: epoch_callbacks(
                    original(monitor, 10**9), timer)
                loop.PLAIN_FULL_BATCH, loop.ADAM_FOREACH = plain, foreach
                seed_everything(0)
                try:
                    model, monitor, _ = loop.fit(
                        lambda: Cell2location(spots, cell_state_df=sig, N_cells_per_location=30, detection_alpha=20),
                        Plan(a.epochs, 0.03, 0.002).fixed(), "cpu", None, True)
                finally:
                    loop.control_callback = original
                    loop.PLAIN_FULL_BATCH, loop.ADAM_FOREACH = True, True
                ms = float(np.median([1000 * t for t in timer.times[a.warmup:]]))
                runs[name].append(round(ms, 2))
                elbo.setdefault(name, list(monitor.elbo))
                log(f"  {name}: {ms:.2f} ms/epoch")
                del model
                pyro.clear_param_store()
        same = {name: elbo[name] == elbo["lightning"] for name in VARIANTS}
        per_epoch = {name: round(float(np.median(v)), 2) for name, v in runs.items()}
        result["designs"].append({"design": design["name"], "shape": shape, "ms_per_epoch": per_epoch,
                                  "runs_ms_per_epoch": runs, "same_elbo_every_epoch_as_lightning": same,
                                  "speedup_vs_lightning": {k: round(per_epoch["lightning"] / v, 3)
                                                           for k, v in per_epoch.items()}})
        if not all(same.values()):
            log(f"  WARNING: not the same -ELBO at every epoch: {same}")

    a.results.mkdir(parents=True, exist_ok=True)
    out = a.results / f"loop_costs_{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nms per epoch (median of {a.rounds} runs; {a.epochs} epochs each, first {a.warmup} left out)\n")
    print("| design (spots x genes x types) | " + " | ".join(VARIANTS) + " | same -ELBO every epoch |")
    print("|---|" + "---:|" * len(VARIANTS) + "---|")
    for d in result["designs"]:
        s = d["shape"]
        print(f"| {d['design']} ({s['spots']} x {s['genes']} x {s['types']}) | "
              + " | ".join(f"{d['ms_per_epoch'][k]:.2f}" for k in VARIANTS)
              + f" | {'yes' if all(d['same_elbo_every_epoch_as_lightning'].values()) else 'NO'} |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
