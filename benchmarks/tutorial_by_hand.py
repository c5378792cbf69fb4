"""The cell2location tutorial's own calls, run by hand in one Python process, with a wall clock per step.

This is the baseline the pipeline is compared with. The code is the tutorial's (cell2location docs,
"Mapping lymph node cell types", current master), changed only where the installed versions require it:

* `use_gpu=...` -> `accelerator=...` in `train()` and in `sample_kwargs` (scvi-tools >= 1.1 removed `use_gpu`);
* epochs / posterior samples come from the command line so that the benchmark can give both methods the
  same settings (the tutorial's values are the defaults here: 250 / 30000 epochs, 1000 samples);
* inputs are the benchmark's h5ad files instead of `sc.read_visium` and the downloaded reference;
* `scvi.settings.seed = SEED` is set once at the start (the tutorial does not seed; the pipeline does);
* the tutorial's figures (`plot_history`, `plot_QC`, spatial maps) are left out; its saves are kept.

Per-step wall times (`time.perf_counter`) and the peak RSS so far (`getrusage(RUSAGE_SELF)`) after each step
are written to `timings.json`; the q05/means abundances to `q05_cell_abundance_w_sf.csv` /
`means_cell_abundance_w_sf.csv` (spots x cell types, index `barcode`), the signatures to `signatures.csv`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

T0 = time.perf_counter()
STEPS: list[dict] = []
_last = [T0]


def step(name: str) -> None:
    """Close the running step: wall seconds since the previous mark and peak RSS (GiB) so far."""
    now = time.perf_counter()
    STEPS.append({"step": name, "wall_s": round(now - _last[0], 3),
                  "peak_rss_gb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)})
    _last[0] = now
    print(f"[tutorial_by_hand] {name}: {STEPS[-1]['wall_s']:.1f} s", flush=True)


p = argparse.ArgumentParser(description="The cell2location tutorial, by hand, timed per step.")
p.add_argument("--reference", required=True)
p.add_argument("--spots", required=True)
p.add_argument("--outdir", required=True)
p.add_argument("--ref-max-epochs", type=int, default=250)
p.add_argument("--map-max-epochs", type=int, default=30000)
p.add_argument("--ref-num-samples", type=int, default=1000)
p.add_argument("--map-num-samples", type=int, default=1000)
p.add_argument("--accelerator", default="cpu")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
outdir = Path(args.outdir)
outdir.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("MPLBACKEND", "Agg")

# ---------------------------------------------------------------- the tutorial
import scanpy as sc
import numpy as np
import matplotlib.pyplot as plt  # noqa: F401  (imported by the tutorial)

import cell2location
import scvi

scvi.settings.seed = args.seed
step("import")

results_folder = str(outdir) + "/"
ref_run_name = f"{results_folder}/reference_signatures"
run_name = f"{results_folder}/cell2location_map"

adata_vis = sc.read_h5ad(args.spots)
adata_vis.obs["sample"] = list(adata_vis.uns["spatial"].keys())[0] if "spatial" in adata_vis.uns else "sim"
adata_vis.var["SYMBOL"] = adata_vis.var_names
# find mitochondria-encoded (MT) genes and remove them for spatial mapping
adata_vis.var["MT_gene"] = [gene.startswith("MT-") for gene in adata_vis.var["SYMBOL"]]
adata_vis.obsm["MT"] = adata_vis[:, adata_vis.var["MT_gene"].values].X.toarray()
adata_vis = adata_vis[:, ~adata_vis.var["MT_gene"].values]
step("read_spots")

adata_ref = sc.read_h5ad(args.reference)
from cell2location.utils.filtering import filter_genes

selected = filter_genes(adata_ref, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
adata_ref = adata_ref[:, selected].copy()
step("filter_reference")

cell2location.models.RegressionModel.setup_anndata(adata=adata_ref, batch_key="sample", labels_key="cell_type")
from cell2location.models import RegressionModel

mod = RegressionModel(adata_ref)
mod.train(max_epochs=args.ref_max_epochs, batch_size=2500, train_size=1, lr=0.002, accelerator=args.accelerator)
step("train_reference.train")

adata_ref = mod.export_posterior(
    adata_ref, sample_kwargs={"num_samples": args.ref_num_samples, "batch_size": 2500, "accelerator": args.accelerator}
)
step("train_reference.export_posterior")

mod.save(f"{ref_run_name}", overwrite=True)
adata_file = f"{ref_run_name}/sc.h5ad"
adata_ref.write(adata_file)
step("train_reference.save")

if "means_per_cluster_mu_fg" in adata_ref.varm.keys():
    inf_aver = adata_ref.varm["means_per_cluster_mu_fg"][
        [f"means_per_cluster_mu_fg_{i}" for i in adata_ref.uns["mod"]["factor_names"]]
    ].copy()
else:
    inf_aver = adata_ref.var[[f"means_per_cluster_mu_fg_{i}" for i in adata_ref.uns["mod"]["factor_names"]]].copy()
inf_aver.columns = adata_ref.uns["mod"]["factor_names"]

intersect = np.intersect1d(adata_vis.var_names, inf_aver.index)
adata_vis = adata_vis[:, intersect].copy()
inf_aver = inf_aver.loc[intersect, :].copy()

cell2location.models.Cell2location.setup_anndata(adata=adata_vis, batch_key="sample")
mod = cell2location.models.Cell2location(adata_vis, cell_state_df=inf_aver, N_cells_per_location=30, detection_alpha=20)
step("map_cells.setup")

mod.train(max_epochs=args.map_max_epochs, batch_size=None, train_size=1, accelerator=args.accelerator)
step("map_cells.train")

adata_vis = mod.export_posterior(
    adata_vis,
    sample_kwargs={"num_samples": args.map_num_samples, "batch_size": mod.adata.n_obs, "accelerator": args.accelerator},
)
step("map_cells.export_posterior")

mod.save(f"{run_name}", overwrite=True)
adata_file = f"{run_name}/sp.h5ad"
adata_vis.write(adata_file)
step("map_cells.save")
# ---------------------------------------------------------------- end of the tutorial

import torch  # noqa: E402

for stat in ("q05", "means"):
    table = adata_vis.obsm[f"{stat}_cell_abundance_w_sf"].copy()
    table.columns = [c.replace(f"{stat}cell_abundance_w_sf_", "") for c in table.columns]
    table.index.name = "barcode"
    table.to_csv(outdir / f"{stat}_cell_abundance_w_sf.csv")
sig = inf_aver.copy()
sig.index.name = "gene"
sig.to_csv(outdir / "signatures.csv")
(outdir / "timings.json").write_text(json.dumps({
    "steps": STEPS,
    "total_wall_s_inside": round(time.perf_counter() - T0, 3),
    "n_genes_reference_filtered": int(adata_ref.n_vars),
    "n_shared_genes": int(len(intersect)),
    "torch_threads": torch.get_num_threads(),
    "accelerator": args.accelerator,
}, indent=2))
