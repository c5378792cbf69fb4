"""ms/epoch of the two models under each of the pipeline's training changes, and the cost of each export.

One process, one data set (the bar's first design unless --data is given), each variant trained for a fixed
number of epochs after a warm-up, in this order: the tutorial's `train()` (Trace_ELBO, Pyro validation on, torch's
default threads); validation off; JitTrace_ELBO through the training mixin; torch's CUDA check cached; one torch
optimiser for all parameters (the pipeline); the same on 1 thread; the pipeline's callback removed (Lightning's own
per-epoch work only). Then the posterior export of the last model:
1000 samples (the tutorial) vs analytic. Writes benchmarks/results/epoch_costs_<timestamp>.json and a table.

    .venv/bin/python benchmarks/epoch_costs.py [--data DIR] [--epochs 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bin"))
sys.path.insert(0, str(HERE))

from c2lnf.runtime import prepare_environment, seed_everything, setup_logging  # noqa: E402

prepare_environment()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="a simulate.py output folder (default: build one, 400 spots)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--ref-epochs", type=int, default=30)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args()
    setup_logging()
    import logging

    logging.getLogger("c2l").setLevel(logging.WARNING)
    import anndata as ad
    import pandas as pd
    import pyro
    import torch
    from cell2location.models import Cell2location, RegressionModel
    from cell2location.utils.filtering import filter_genes
    from pyro.infer import JitTrace_ELBO, Trace_ELBO
    from scvi.model.base import PyroSviTrainMixin

    from c2lnf.training import Monitor, Plan, control_callback, export_posterior, one_adam
    from run import TESTDATA, machine, versions

    if a.data is None:
        import simulate

        a.data = HERE / "work" / "epoch_costs_data"
        panel = str(TESTDATA / "lymph_node" / "visium" / "filtered_feature_bc_matrix.h5")
        simulate.build(TESTDATA / "lymph_node" / "reference.h5ad", a.data, 400, 0, panel=panel)
    ref = ad.read_h5ad(a.data / "reference_half.h5ad")
    ref = ref[:, filter_genes(ref, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)].copy()
    spots = ad.read_h5ad(a.data / "spots.h5ad")
    default_threads = torch.get_num_threads()

    def timed_train(model, epochs, mode, threads, nvml):
        # "1": Lightning's own setting (NVML asked at every optimiser step); "0": the pipeline's (training.fit)
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = nvml
        torch.set_num_threads(threads)
        pyro.clear_param_store()
        seed_everything(0)
        monitor = Monitor(Plan(epochs, 0.002, 0.002).fixed())
        callbacks = [] if mode == "no_callback" else [control_callback(monitor, 10**9)]
        kw = {"max_epochs": epochs, "train_size": 1, "lr": 0.002, "accelerator": "cpu", "enable_progress_bar": False,
              "callbacks": callbacks}
        batch = 2500 if isinstance(model, RegressionModel) else None
        start = time.perf_counter()
        if mode == "tutorial":
            model.train(batch_size=batch, **kw)
        else:
            jit = mode in ("jit", "one_adam", "no_callback") and (batch is None or batch >= model.adata_manager.adata.n_obs)
            loss = JitTrace_ELBO(ignore_jit_warnings=True) if jit else Trace_ELBO()
            plan_kwargs = {"loss_fn": loss}
            if mode in ("one_adam", "no_callback"):
                plan_kwargs["optim"] = one_adam(0.002)
            with pyro.validation_enabled(False):
                PyroSviTrainMixin.train(model, batch_size=batch, plan_kwargs=plan_kwargs, **kw)
        return 1000 * (time.perf_counter() - start) / epochs

    # mode: how the model trains (training.fit: JitTrace_ELBO when an epoch is one batch, as here for both)
    common = [("tutorial", "tutorial: train(), Trace_ELBO, validation on", default_threads, "1"),
              ("validation_off", "+ Pyro validation off", default_threads, "1")]
    variants = {
        "reference": common + [
            ("jit", "+ JitTrace_ELBO", default_threads, "1"),
            ("jit", "+ CUDA check cached", default_threads, "0"),
            ("one_adam", "+ one optimiser for all parameters (the pipeline)", default_threads, "0"),
            ("one_adam", "the pipeline on 1 thread", 1, "0")],
        "mapping": common + [
            ("jit", "+ JitTrace_ELBO", default_threads, "1"),
            ("jit", "+ CUDA check cached", default_threads, "0"),
            ("one_adam", "+ one optimiser for all parameters (the pipeline)", default_threads, "0"),
            ("one_adam", "the pipeline on 1 thread", 1, "0"),
            ("no_callback", "the pipeline without its callback", default_threads, "0")],
    }
    rows = []
    for model_name, epochs in (("reference", a.ref_epochs), ("mapping", a.epochs)):
        if model_name == "reference":
            RegressionModel.setup_anndata(ref, batch_key="sample", labels_key="cell_type")
            make = lambda: RegressionModel(ref)  # noqa: E731
        else:
            genes = signatures.index.intersection(spots.var_names)
            vis = spots[:, genes].copy()
            vis.obs["sample"] = "sim"
            Cell2location.setup_anndata(vis, batch_key="sample")
            make = lambda: Cell2location(vis, cell_state_df=signatures.loc[genes], N_cells_per_location=30,  # noqa: E731
                                         detection_alpha=20)
        for mode, label, threads, nvml in variants[model_name]:
            timed_train(make(), 5, mode, threads, nvml)  # warm-up (JIT compilation, first-epoch set-up)
            model = make()
            ms = timed_train(model, epochs, mode, threads, nvml)
            rows.append({"model": model_name, "variant": label, "threads": threads, "ms_per_epoch": round(ms, 2)})
            print(rows[-1], flush=True)
        torch.set_num_threads(default_threads)
        target = ref if model_name == "reference" else vis
        batch = 2500 if model_name == "reference" else target.n_obs
        for analytic, label in ((False, "export: 1000 posterior samples (tutorial)"), (True, "export: analytic")):
            start = time.perf_counter()
            export_posterior(model, target.copy(), analytic, 1000, batch, "cpu")
            rows.append({"model": model_name, "variant": label, "threads": default_threads,
                         "seconds": round(time.perf_counter() - start, 2)})
            print(rows[-1], flush=True)
        if model_name == "reference":
            from c2lnf.train_reference import signatures as signature_table

            signatures = signature_table(export_posterior(model, ref.copy(), True, 1000, 2500, "cpu")[0])

    lines = ["| model | variant | threads | ms/epoch | export s |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['threads']} | {r.get('ms_per_epoch', '')} | {r.get('seconds', '')} |")
    md = "\n".join(lines)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"epoch_costs_{stamp}.json"
    path.write_text(json.dumps({"date": stamp, "epochs": {"reference": a.ref_epochs, "mapping": a.epochs},
                                "data": str(a.data), "machine": machine(), "versions": versions(), "rows": rows,
                                "table_markdown": md}, indent=2))
    print(md)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
