"""Synthetic data with the cell2location tutorial's shapes, for speed and memory measurements at scale.

The lymph node tutorial uses a 73,260-cell x 10,237-gene reference with 34 cell types from 23 batches and a
Visium section of about 4,000 spots. Nothing of that size is available offline, so this module draws data of
the same shapes (seeded, one `numpy.random.default_rng(seed)`):

* **Gene profiles.** A base profile p_g ~ Gamma(0.3, 1) (normalised); each type multiplies 5% of the genes
  (its markers) by exp(N(1.5, 0.5)) and every gene by exp(N(0, 0.2)); each batch multiplies every gene by
  exp(N(0, 0.1)). Profiles are renormalised to sum to 1.
* **Cells.** Type sizes ~ Dirichlet(2) (at least 200 cells each at full size), batches assigned uniformly; library size
  L_c ~ LogNormal(log 2500, 0.4); counts ~ NB(mean = L_c * p_{type, batch, g}, shape 5) as Gamma-Poisson,
  generated in chunks straight into a sparse CSR matrix.
* **Spots.** Composition from `simulate.simulate_composition` (the paper's zones + Gamma design: 8 zones,
  6 uniform types, 20% high-density types); counts ~ NB(mean = d * sum_t n_ts * 2500 * p_t, shape 5) over
  all genes, with a per-spot detection factor d ~ Gamma(20, 1/20).

Outputs (same names as simulate.build): reference_half.h5ad (here: the whole synthetic reference),
spots.h5ad, true_counts.csv, design.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from simulate import simulate_composition

TUTORIAL_SHAPES = {"n_cells": 73260, "n_genes": 10237, "n_types": 34, "n_batches": 23, "n_spots": 4000}
NB_SHAPE = 5.0
MEAN_LIBRARY = 2500.0


def _nb(rng: np.random.Generator, mu: np.ndarray) -> np.ndarray:
    """Negative binomial with mean mu and shape NB_SHAPE, as a Gamma-Poisson mixture."""
    return rng.poisson(rng.gamma(NB_SHAPE, mu / NB_SHAPE)).astype(np.float32)


def generate(
    outdir: Path,
    n_cells: int = TUTORIAL_SHAPES["n_cells"],
    n_genes: int = TUTORIAL_SHAPES["n_genes"],
    n_types: int = TUTORIAL_SHAPES["n_types"],
    n_batches: int = TUTORIAL_SHAPES["n_batches"],
    n_spots: int = TUTORIAL_SHAPES["n_spots"],
    seed: int = 0,
    chunk: int = 2000,
) -> dict:
    """Write the tutorial-shaped reference and spots under outdir (skipped when they already exist)."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "reference": outdir / "reference_half.h5ad",
        "spots": outdir / "spots.h5ad",
        "truth": outdir / "true_counts.csv",
        "design": outdir / "design.json",
    }
    if all(p.exists() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()} | {"design_summary": json.loads(paths["design"].read_text())}
    rng = np.random.default_rng(seed)
    genes = pd.Index([f"gene{g:05d}" for g in range(n_genes)])
    types = [f"type_{t:02d}" for t in range(n_types)]
    batches = [f"batch_{b:02d}" for b in range(n_batches)]

    base = rng.gamma(0.3, 1.0, size=n_genes)
    base /= base.sum()
    prof = np.tile(base, (n_types, 1)) * np.exp(rng.normal(0, 0.2, size=(n_types, n_genes)))
    for t in range(n_types):
        markers = rng.choice(n_genes, size=int(0.05 * n_genes), replace=False)
        prof[t, markers] *= np.exp(rng.normal(1.5, 0.5, size=len(markers)))
    prof /= prof.sum(axis=1, keepdims=True)
    batch_eff = np.exp(rng.normal(0, 0.1, size=(n_batches, n_genes)))

    min_size = min(200, n_cells // (2 * n_types))
    sizes = np.floor(rng.dirichlet(np.full(n_types, 2.0)) * (n_cells - min_size * n_types)).astype(int) + min_size
    sizes[np.argmax(sizes)] += n_cells - sizes.sum()
    labels = np.repeat(np.arange(n_types), sizes)
    rng.shuffle(labels)
    batch = rng.integers(0, n_batches, size=n_cells)
    lib = rng.lognormal(np.log(MEAN_LIBRARY), 0.4, size=n_cells)

    blocks = []
    for start in range(0, n_cells, chunk):
        sl = slice(start, min(n_cells, start + chunk))
        p = prof[labels[sl]] * batch_eff[batch[sl]]
        p /= p.sum(axis=1, keepdims=True)
        blocks.append(sp.csr_matrix(_nb(rng, lib[sl, None] * p)))
    X = sp.vstack(blocks).tocsr()
    ref = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"cell_type": pd.Categorical(np.array(types)[labels], categories=types),
                          "sample": pd.Categorical(np.array(batches)[batch], categories=batches)},
                         index=[f"cell{i:06d}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes),
    )

    comp = simulate_composition(types, n_spots, seed, n_zones=8, n_uniform=6)
    detection = rng.gamma(20.0, 1.0 / 20.0, size=n_spots)
    mu = detection[:, None] * (comp.counts.to_numpy(float) @ (MEAN_LIBRARY * prof))
    Y = sp.csr_matrix(_nb(rng, mu))
    spots = ad.AnnData(X=Y, obs=pd.DataFrame({"sample": "sim"}, index=comp.counts.index.astype(str)),
                       var=pd.DataFrame(index=genes))
    spots.obsm["spatial"] = comp.coords

    ref.write_h5ad(paths["reference"])
    spots.write_h5ad(paths["spots"])
    comp.counts.to_csv(paths["truth"])
    design = {**comp.design, "generator": "tutorial_scale", "n_cells": n_cells, "n_genes": n_genes,
              "n_types": n_types, "n_batches": n_batches, "nb_shape": NB_SHAPE, "mean_library": MEAN_LIBRARY,
              "reference_nnz": int(X.nnz), "reference_density": float(X.nnz / (n_cells * n_genes)),
              "median_umis_per_spot": float(np.median(np.asarray(Y.sum(axis=1)).ravel()))}
    paths["design"].write_text(json.dumps(design, indent=2))
    return {k: str(v) for k, v in paths.items()} | {"design_summary": design}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    for key, value in TUTORIAL_SHAPES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    a = p.parse_args()
    out = generate(a.outdir, a.n_cells, a.n_genes, a.n_types, a.n_batches, a.n_spots, a.seed)
    print(json.dumps({k: v for k, v in out["design_summary"].items() if k != "zones"}, indent=2))


if __name__ == "__main__":
    main()
