"""Per-epoch time of both models at the tutorial's shapes on three paths, in one process: Pyro's dense
GammaPoisson ("pyro"), the nonzero-count likelihood alone ("nonzero", `likelihood.NonzeroGammaPoisson`) and the
fused observation part ("fused", `likelihood._Fused`: the pipeline's default), and where each millisecond of an
epoch goes.

Data: `tutorial_scale.generate` (synthetic, the tutorial's 4,000 spots x 10,237 genes x 34 types, the spots'
counts thinned to --spot-umis per spot, so that the share of nonzero counts is a Visium section's; a reference
of --ref-cells cells x 10,237 genes, 34 types, 23 batches, trained in the tutorial's 2,500-cell minibatches).
Signatures for the mapping are the synthetic reference's per-type mean expression (their values do not change
the cost of an epoch). Every path trains through `training.loop.fit` (the pipeline's fast path: JitTrace_ELBO for the
full-batch mapping, Trace_ELBO for the minibatched reference, one optimiser, fixed epochs, 2 threads), in the
order pyro, nonzero, fused, pyro, ... (--rounds rounds); each run's first --warmup epochs (JIT compilation, first
allocations) are left out and the median of the rest is its ms/epoch. Then:
- the phase table: --phase-steps Trace_ELBO steps of each model and path done by hand with each section timed
  (minibatch, guide, model, data log-likelihood, other log-densities, backward, optimiser), x steps per epoch;
- the operator table: one more epoch of each path under torch.profiler, self CPU time grouped by kind of operator;
- with --memory, the peak RSS of a 3-epoch mapping run of each path, each in its own process.

    flock /tmp/c2l-heavy.lock .venv/bin/python benchmarks/likelihood_costs.py --epochs 4 --ref-epochs 3 --rounds 2 --memory

Writes benchmarks/results/likelihood_costs_<timestamp>.json and prints markdown tables.
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

# self CPU time of torch operators (aten::<name>), grouped by name; everything else (the data loader, Python,
# Pyro, Lightning, the JIT's wrappers) is "other"
GROUPS = [
    ("special functions (lgamma, digamma)", {"lgamma", "digamma", "polygamma"}),
    ("matrix products", {"mm", "bmm", "addmm", "matmul"}),
    ("nonzero scan, gathers, scatters", {"nonzero", "index", "index_select", "index_add_", "index_put_",
                                         "_index_put_impl_", "gather", "scatter_add_", "take", "remainder"}),
    ("copies and fills", {"copy_", "fill_", "zero_", "clone", "contiguous", "empty", "_to_copy", "zeros",
                          "zeros_like", "ones_like", "empty_like", "empty_strided", "resize_"}),
    ("reductions (sum)", {"sum", "mean"}),
]


# the timed sections of one Trace_ELBO step (phase_times)
PHASES = ["minibatch (data loader)", "guide (sample the posterior)", "model: priors and expected counts",
          "data log-likelihood (forward)", "other log-densities, ELBO sum", "backward (all gradients)",
          "optimiser (Adam) and zeroing"]


def group_of(name: str) -> str:
    if name.startswith("enumerate(DataLoader)"):
        return "data loader (a minibatch densified from host memory)"
    if not name.startswith("aten::"):
        return "other (Python, Pyro, Lightning, JIT wrappers, optimiser bookkeeping)"
    op = name[len("aten::"):]
    for label, names in GROUPS:
        if op in names:
            return label
    return "elementwise arithmetic and everything else in aten"


def thin(X, median_umis: float, seed: int = 0):
    """Counts thinned binomially (each molecule kept with one probability) to the given median per row."""
    import numpy as np
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32)
    p = min(1.0, median_umis / float(np.median(np.asarray(X.sum(axis=1)).ravel())))
    data = np.random.default_rng(seed).binomial(X.data.astype(np.int64), p).astype(np.float32)
    out = sp.csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out


def breakdown_table(title: str, runs: list[dict], labels, value, total_label: str, total) -> str:
    """A markdown table: one row per label, one column per run (model and path), values in ms."""
    lines = [f"| {title} | " + " | ".join(f"{p['model']} {p['path']}" for p in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    lines += [f"| {lab} | " + " | ".join(f"{value(p, lab):.0f}" for p in runs) + " |" for lab in labels]
    lines.append(f"| {total_label} | " + " | ".join(f"{total(p):.0f}" for p in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="make bench NAME=epoch", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "work" / "likelihood_costs_data")
    ap.add_argument("--ref-cells", type=int, default=10000)
    ap.add_argument("--spots", type=int, default=4000)
    ap.add_argument("--genes", type=int, default=10237)
    ap.add_argument("--spot-umis", type=float, default=8000,
                    help="thin the spots' counts (binomially, seeded) to this median of UMIs per spot (0: keep)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per mapping run (the first --warmup not counted)")
    ap.add_argument("--ref-epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="mapping,reference")
    ap.add_argument("--paths", default="pyro,nonzero,fused",
                    help="pyro: Pyro's GammaPoisson; nonzero: the nonzero-count likelihood alone; fused: the fused "
                         "observation part (the default path); the speed-up is the last one's against pyro")
    ap.add_argument("--phase-steps", type=int, default=6,
                    help="Trace_ELBO steps timed section by section per model and path (0: no phase table)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--memory", action="store_true",
                    help="also the peak RSS of a 3-epoch mapping run of each path, each in its own process")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args()
    paths = a.paths.split(",")
    setup_logging()
    import logging

    logging.getLogger("c2l").setLevel(logging.WARNING)
    import anndata as ad
    import numpy as np
    import torch
    from cell2location.models import Cell2location, RegressionModel
    from lightning.pytorch.callbacks import Callback

    from c2lnf import likelihood
    from c2lnf.training import loop as training_loop
    from c2lnf.training.stopping import Plan
    from common import epoch_callbacks, machine, mean_signatures, versions
    from tutorial_scale import generate

    torch.set_num_threads(a.threads)
    from c2lnf.runtime import limit_heap_retention

    limit_heap_retention()  # as map-cells does at these sizes (peak RSS comparable with the memory model's)
    info = generate(a.data, n_cells=a.ref_cells, n_genes=a.genes, n_spots=a.spots)
    ref = ad.read_h5ad(a.data / "reference_half.h5ad")
    spots = ad.read_h5ad(a.data / "spots.h5ad")
    spots.obs["sample"] = "sim"
    if a.spot_umis:
        spots.X = thin(spots.X, a.spot_umis)
    sig = mean_signatures(ref, ref.obs["cell_type"])
    RegressionModel.setup_anndata(ref, batch_key="sample", labels_key="cell_type")
    Cell2location.setup_anndata(spots, batch_key="sample")
    shapes = {"mapping": {"spots": spots.n_obs, "genes": spots.n_vars, "types": sig.shape[1],
                          "nonzero_share": round(float(spots.X.nnz / (spots.n_obs * spots.n_vars)), 4)},
              "reference": {"cells": ref.n_obs, "genes": ref.n_vars, "minibatch": 2500, "types": sig.shape[1],
                            "batches": int(ref.obs["sample"].nunique()),
                            "nonzero_share": round(float(ref.X.nnz / (ref.n_obs * ref.n_vars)), 4)}}
    print(json.dumps(shapes), flush=True)
    makers = {
        "mapping": (lambda: Cell2location(spots, cell_state_df=sig, N_cells_per_location=30, detection_alpha=20),
                    None, a.epochs),
        "reference": (lambda: RegressionModel(ref), 2500, a.ref_epochs),
    }

    class EpochTimes(Callback):
        def __init__(self, profile_epoch: int | None = None):
            self.times: list[float] = []
            self.profile_epoch = profile_epoch
            self.prof = None

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()
            if self.profile_epoch is not None and trainer.current_epoch == self.profile_epoch:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.t0)
            if self.prof is not None and trainer.current_epoch == self.profile_epoch:
                self.prof.__exit__(None, None, None)

    def run(model_name: str, path: str, epochs: int, profile: bool = False) -> dict:
        make, batch, _ = makers[model_name]
        cb = EpochTimes(profile_epoch=epochs - 1 if profile else None)
        original = training_loop.control_callback
        seed_everything(0)
        training_loop.control_callback = lambda monitor, log_every=None: epoch_callbacks(
            original(monitor, 10**9), cb)
        likelihood.FUSED = path == "fused"
        try:
            training_loop.fit(make, Plan(epochs, 0.002, 0.002).fixed(), "cpu", batch, True,
                              nonzero_likelihood=path != "pyro")
        finally:
            training_loop.control_callback = original
            likelihood.FUSED = True
        ms = [1000 * t for t in cb.times]
        out = {"model": model_name, "path": path, "epoch_ms": [round(v, 1) for v in ms],
               "ms_per_epoch": round(float(np.median(ms[a.warmup:])), 1)}
        if profile and cb.prof is not None:
            groups: dict[str, float] = {}
            for ev in cb.prof.key_averages():
                groups[group_of(ev.key)] = groups.get(group_of(ev.key), 0.0) + ev.self_cpu_time_total / 1000
            total = sum(groups.values())
            out["profile_ms"] = {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
            out["profile_total_ms"] = round(total, 1)
            out["profile_top_ops"] = [(ev.key, round(ev.self_cpu_time_total / 1000, 1))
                                      for ev in sorted(cb.prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]
        print(json.dumps(out), flush=True)
        return out

    def phase_times(model_name: str, path: str) -> dict:
        """Trace_ELBO steps done by hand, each section timed: the model's own minibatch (reference: densified
        by scvi's loader), the guide, the model (priors and, unfused, the dense expected counts), the data's
        log-likelihood, the other sites' log-densities and the ELBO sum, the backward pass, the optimiser.
        ms per epoch = the median step's sections x the steps in an epoch."""
        import pyro
        from pyro import poutine
        from scvi.dataloaders import AnnDataLoader

        make, batch_size, _ = makers[model_name]
        seed_everything(0)
        pyro.clear_param_store()
        model = make()
        adata = model.adata_manager.adata
        bs = batch_size or adata.n_obs
        loader = AnnDataLoader(model.adata_manager, shuffle=True, batch_size=bs, drop_last=False)
        steps_per_epoch = -(-adata.n_obs // bs)
        optim = training_loop.one_adam(0.002)
        module = model.module
        times: dict[str, list[float]] = {k: [] for k in PHASES}
        likelihood.FUSED = path == "fused"
        it = iter(loader)
        try:
            with pyro.validation_enabled(False), likelihood.nonzero_likelihood(path != "pyro"):
                fixed = None
                for step in range(a.phase_steps + 1):
                    t0 = time.perf_counter()
                    if bs == adata.n_obs and fixed is not None:
                        args, kwargs = fixed  # full batch: the same tensor every step (as FullBatchSplitter)
                    else:
                        try:
                            tensors = next(it)
                        except StopIteration:
                            it = iter(loader)
                            tensors = next(it)
                        args, kwargs = module._get_fn_args_from_batch(tensors)
                        fixed = (args, kwargs)
                    t1 = time.perf_counter()
                    guide_tr = poutine.trace(module.guide).get_trace(*args, **kwargs)
                    t2 = time.perf_counter()
                    model_tr = poutine.trace(poutine.replay(module.model, trace=guide_tr)).get_trace(*args, **kwargs)
                    t3 = time.perf_counter()
                    model_tr.compute_log_prob(site_filter=lambda name, site: name == "data_target")
                    t4 = time.perf_counter()
                    model_tr.compute_log_prob()
                    guide_tr.compute_log_prob()
                    loss = -(sum(s["log_prob_sum"] for s in model_tr.nodes.values() if s["type"] == "sample")
                             - sum(s["log_prob_sum"] for s in guide_tr.nodes.values()
                                   if s["type"] == "sample" and not s["is_observed"]))
                    t5 = time.perf_counter()
                    loss.backward()
                    t6 = time.perf_counter()
                    params = {s["value"].unconstrained() for tr in (guide_tr, model_tr) for s in tr.nodes.values()
                              if s["type"] == "param"}
                    optim(params)
                    pyro.infer.util.zero_grads(params)
                    t7 = time.perf_counter()
                    if step == 0:
                        continue  # the first step makes the guide's parameters
                    for k, (u, v) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6),
                                                   (t6, t7)]):
                        times[k].append(1000 * (v - u))
        finally:
            likelihood.FUSED = True
        out = {"model": model_name, "path": path, "steps_per_epoch": steps_per_epoch, "steps": a.phase_steps,
               "phase_ms": {k: round(float(np.median(v)) * steps_per_epoch, 1) for k, v in times.items()}}
        print(json.dumps(out), flush=True)
        return out

    if a.child:  # one run in this process, for its peak memory
        model_name, path = a.child.split(":")
        run(model_name, path, 3)
        import resource

        print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}), flush=True)
        return

    memory = []
    if a.memory:
        import subprocess

        for path in paths:
            cmd = [sys.executable, __file__, "--data", str(a.data), "--ref-cells", str(a.ref_cells), "--spots",
                   str(a.spots), "--genes", str(a.genes), "--spot-umis", str(a.spot_umis), "--threads",
                   str(a.threads), "--child", f"mapping:{path}"]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peak = json.loads([ln for ln in res.stdout.splitlines() if "peak_rss_gb" in ln][-1])["peak_rss_gb"]
            memory.append({"model": "mapping", "path": path, "peak_rss_gb": round(peak, 3)})
            print(json.dumps(memory[-1]), flush=True)

    rows = []
    for model_name in a.models.split(","):
        epochs = makers[model_name][2]
        for _ in range(a.rounds):
            for path in paths:
                rows.append(run(model_name, path, epochs))
    phases = []
    if a.phase_steps:
        for model_name in a.models.split(","):
            for path in paths:
                phases.append(phase_times(model_name, path))
    profiles = []
    if not a.no_profile:
        for model_name in a.models.split(","):
            for path in paths:
                profiles.append(run(model_name, path, a.warmup + 1, profile=True))

    names = {"pyro": "Pyro's GammaPoisson", "nonzero": "nonzero-count likelihood (unfused)",
             "fused": "fused observation (default)"}
    lines = ["| model | " + " | ".join(f"{names[p]}, ms/epoch" for p in paths) + " | speed-up, " +
             f"{paths[-1]} vs pyro |", "|---|" + "---:|" * (len(paths) + 1)]
    summary = {}
    for model_name in a.models.split(","):
        runs = {p: [r["ms_per_epoch"] for r in rows if r["model"] == model_name and r["path"] == p] for p in paths}
        med = {p: float(np.median(v)) for p, v in runs.items()}
        summary[model_name] = {**{f"{p}_ms": med[p] for p in paths}, **{f"runs_{p}": runs[p] for p in paths},
                               "speedup": round(med["pyro"] / med[paths[-1]], 2) if "pyro" in med else None}
        lines.append(f"| {model_name} | " + " | ".join(
            f"{med[p]:.0f} ({', '.join(f'{v:.0f}' for v in runs[p])})" for p in paths) +
            (f" | {med['pyro'] / med[paths[-1]]:.2f}x |" if "pyro" in med else " | |"))
    md = "\n".join(lines)
    if phases:
        md += "\n\n" + breakdown_table("where an epoch goes (timed sections, ms/epoch, Trace_ELBO steps)", phases,
                                        PHASES, lambda p, lab: p["phase_ms"].get(lab, 0),
                                        "total", lambda p: sum(p["phase_ms"].values()))
    if memory:
        md += "\n\n| mapping, 3 epochs, own process | peak RSS (GB) |\n|---|---:|\n" + "\n".join(
            f"| {m['path']} | {m['peak_rss_gb']:.2f} |" for m in memory)
    if profiles:
        md += "\n\n" + breakdown_table("where the time goes (self CPU ms, one epoch)", profiles,
                                        sorted({k for p in profiles for k in p.get("profile_ms", {})}),
                                        lambda p, lab: p.get("profile_ms", {}).get(lab, 0),
                                        "total (profiled epoch)", lambda p: p.get("profile_total_ms", 0))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"likelihood_costs_{stamp}.json"
    path.write_text(json.dumps({"date": stamp, "args": {k: str(v) for k, v in vars(a).items()}, "shapes": shapes,
                                "data": info.get("design_summary", {}).get("generator"), "machine": machine(),
                                "versions": versions(), "runs": rows, "phases": phases, "profiles": profiles,
                                "memory": memory,
                                "summary": summary, "table_markdown": md}, indent=2))
    print(md)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
