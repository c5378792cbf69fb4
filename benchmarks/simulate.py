"""Simulated Visium-like spots with known cell-type composition, built from real reference cells.

The design follows the cell2location paper's synthetic benchmark (Kleshchevnikov et al., Nat Biotechnol 2022;
`vitkl/cell2location_paper`, notebooks/benchmarking/synthetic_data_construction_improved.ipynb), scaled down to
the 330-cell lymph node reference (11 types x 30 cells):

1. **Split.** The reference cells are split per cell type into two halves (stratified, seeded): the
   *generation* half builds the spots, the *reference* half is the only reference any method sees.
2. **Tissue zones.** Spots lie on a square grid (`obsm['spatial']` = grid x/y in micrometres, 100 um apart).
   `n_zones` zones each get a smooth weight map: a 2D Gaussian bump (random centre, width 15-30% of the grid
   side) scaled to a maximum of 1. Most types are *zonal*: each is placed in 1 + Binomial(n_zones - 1, 0.02)
   zones (the paper's rule) and its weight map is the maximum of its zones' maps; the zones are dealt out so
   that every zone has at least one type, so types co-occur within zones. The remaining `n_uniform` types
   are *uniform*: their weight at each spot is an independent Uniform(0, 1) draw (no spatial pattern).
3. **Abundance.** 20% of the types (rounded, at least 1) are high-density (mean 3.2 cells), the rest low
   density (mean 1.5 cells). For type t at spot s, g_ts ~ Gamma with that mean and mean/variance ratio 5
   (shape = 5 * mean, scale = 1/5), as in the paper; the number of cells is n_ts = round(w_ts * g_ts),
   where w_ts is the type's weight at the spot. A spot left with no cell gets one cell of its highest-weight
   type; a spot above `max_cells` (30) is scaled down to it. Totals therefore lie in 1..30.
4. **Counts.** Each spot's counts are the sum of the raw counts of n_ts cells of each type, drawn with
   replacement from that type's generation half.

Everything is drawn from one `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

MEAN_LOW, MEAN_HIGH, MEAN_VAR_RATIO = 1.5, 3.2, 5.0
HIGH_DENSITY_FRACTION = 0.2
SPOT_SPACING_UM = 100.0


@dataclass
class Composition:
    """True cells per type per spot plus the design that produced them."""

    counts: pd.DataFrame          # spots x cell types, integer cell numbers
    coords: np.ndarray            # spots x 2, grid x/y (um)
    design: dict                  # zones, densities, seed: everything needed to describe the draw


def split_reference(adata: ad.AnnData, labels_key: str, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Split cells per type into (generation, reference) halves, stratified and seeded."""
    rng = np.random.default_rng(seed)
    gen_idx, ref_idx = [], []
    labels = adata.obs[labels_key].astype(str).to_numpy()
    for ct in sorted(set(labels)):
        idx = np.flatnonzero(labels == ct)
        idx = rng.permutation(idx)
        half = len(idx) // 2
        gen_idx.extend(idx[:half])
        ref_idx.extend(idx[half:])
    return adata[np.sort(gen_idx)].copy(), adata[np.sort(ref_idx)].copy()


def grid_coords(n_spots: int) -> np.ndarray:
    """A near-square grid holding exactly n_spots spots (row-major), spacing 100 um."""
    side = int(np.ceil(np.sqrt(n_spots)))
    yy, xx = np.divmod(np.arange(n_spots), side)
    return np.column_stack([xx, yy]).astype(float) * SPOT_SPACING_UM


def simulate_composition(
    cell_types: list[str],
    n_spots: int,
    seed: int,
    n_zones: int = 4,
    n_uniform: int = 3,
    max_cells: int = 30,
) -> Composition:
    """Cells per type per spot following the paper's zones + Gamma abundance design (see module docstring)."""
    rng = np.random.default_rng(seed)
    n_types = len(cell_types)
    n_uniform = min(n_uniform, n_types - 1)
    coords = grid_coords(n_spots)
    side = coords.max(axis=0) + SPOT_SPACING_UM

    # zone weight maps: smooth 2D Gaussian bumps, max 1
    zone_maps, zone_info = [], []
    for z in range(n_zones):
        centre = rng.uniform(0.1, 0.9, size=2) * side
        width = rng.uniform(0.15, 0.30) * side.mean()
        w = np.exp(-((coords - centre) ** 2).sum(axis=1) / (2 * width**2))
        zone_maps.append(w / w.max())
        zone_info.append({"centre_um": centre.round(1).tolist(), "width_um": round(float(width), 1)})
    zone_maps = np.array(zone_maps)

    order = rng.permutation(n_types)
    uniform = sorted(order[:n_uniform].tolist())
    zonal = [i for i in order[n_uniform:]]
    n_high = max(1, int(round(HIGH_DENSITY_FRACTION * n_types)))
    high = set(rng.choice(n_types, size=n_high, replace=False).tolist())
    means = np.array([MEAN_HIGH if i in high else MEAN_LOW for i in range(n_types)])

    weights = np.zeros((n_spots, n_types))
    zones_of: dict[str, list[int]] = {}
    for k, t in enumerate(zonal):
        first = k % n_zones  # deal zones out so that every zone holds at least one type
        extra = rng.binomial(n_zones - 1, 0.02)
        others = rng.choice([z for z in range(n_zones) if z != first], size=extra, replace=False).tolist() if extra else []
        zs = [first] + others
        zones_of[cell_types[t]] = zs
        weights[:, t] = zone_maps[zs].max(axis=0)
    for t in uniform:
        weights[:, t] = rng.uniform(0, 1, size=n_spots)

    shape = MEAN_VAR_RATIO * means
    g = rng.gamma(shape=shape, scale=1.0 / MEAN_VAR_RATIO, size=(n_spots, n_types))
    n = np.rint(weights * g).astype(int)
    empty = n.sum(axis=1) == 0
    n[empty, weights[empty].argmax(axis=1)] = 1
    total = n.sum(axis=1)
    over = total > max_cells
    if over.any():
        scaled = np.floor(n[over] * (max_cells / total[over])[:, None]).astype(int)
        scaled[scaled.sum(axis=1) == 0, 0] = 1
        n[over] = scaled

    barcodes = [f"spot{i:05d}" for i in range(n_spots)]
    counts = pd.DataFrame(n, index=pd.Index(barcodes, name="barcode"), columns=cell_types)
    design = {
        "seed": seed,
        "n_spots": n_spots,
        "n_zones": n_zones,
        "zones": zone_info,
        "zonal_types": {k: v for k, v in zones_of.items()},
        "uniform_types": [cell_types[t] for t in uniform],
        "high_density_types": sorted(cell_types[t] for t in high),
        "mean_cells_low_high": [MEAN_LOW, MEAN_HIGH],
        "mean_var_ratio": MEAN_VAR_RATIO,
        "max_cells": max_cells,
        "cells_per_spot": {"min": int(n.sum(1).min()), "median": float(np.median(n.sum(1))),
                           "mean": float(n.sum(1).mean()), "max": int(n.sum(1).max())},
        "types_per_spot_mean": float((n > 0).sum(1).mean()),
    }
    return Composition(counts=counts, coords=coords, design=design)


def spots_from_cells(gen: ad.AnnData, labels_key: str, comp: Composition, seed: int) -> sp.csr_matrix:
    """Counts per spot = sum of the raw counts of the spot's cells, drawn with replacement per type."""
    rng = np.random.default_rng(seed + 1)
    X = sp.csr_matrix(gen.X).astype(np.float64)
    labels = gen.obs[labels_key].astype(str).to_numpy()
    pools = {ct: np.flatnonzero(labels == ct) for ct in comp.counts.columns}
    rows, cols = [], []
    for s, (_, row) in enumerate(comp.counts.iterrows()):
        for ct, k in row.items():
            if k > 0:
                picked = rng.choice(pools[ct], size=int(k), replace=True)
                rows.extend([s] * len(picked))
                cols.extend(picked.tolist())
    # membership matrix (spots x cells) with multiplicities, times the cells' counts
    member = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(comp.counts.shape[0], gen.n_obs))
    Y = (member @ X).tocsr()
    Y.data = np.rint(Y.data)
    return Y.astype(np.float32)


def spot_gene_panel(panel: str, genes: pd.Index, seed: int) -> pd.Index:
    """Genes the spots carry: 'all', an integer (random seeded subset), or a path to a gene list / h5ad / 10x h5."""
    if panel == "all":
        return genes
    if panel.isdigit():
        rng = np.random.default_rng(seed + 2)
        return genes[np.sort(rng.choice(len(genes), size=min(int(panel), len(genes)), replace=False))]
    path = Path(panel)
    if path.suffix == ".h5":
        import scanpy as sc

        names = sc.read_10x_h5(path).var_names
    elif path.suffix == ".h5ad":
        names = ad.read_h5ad(path, backed="r").var_names
    else:
        names = pd.Index([line.strip() for line in path.read_text().splitlines() if line.strip()])
    return genes[genes.isin(names)]


def build(
    reference: Path,
    outdir: Path,
    n_spots: int = 400,
    seed: int = 0,
    labels_key: str = "cell_type",
    panel: str = "all",
    n_zones: int = 4,
    n_uniform: int = 3,
) -> dict:
    """Write reference_half.h5ad, spots.h5ad, true_counts.csv, design.json under outdir; return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    full = ad.read_h5ad(reference)
    gen, ref = split_reference(full, labels_key, seed)
    cell_types = sorted(full.obs[labels_key].astype(str).unique())
    comp = simulate_composition(cell_types, n_spots, seed, n_zones=n_zones, n_uniform=n_uniform)
    Y = spots_from_cells(gen, labels_key, comp, seed)
    genes = spot_gene_panel(panel, full.var_names, seed)
    keep = full.var_names.get_indexer(genes)
    spots = ad.AnnData(
        X=sp.csr_matrix(Y[:, keep]),
        obs=pd.DataFrame({"sample": "sim"}, index=comp.counts.index.astype(str)),
        var=pd.DataFrame(index=genes.astype(str)),
    )
    spots.obsm["spatial"] = comp.coords
    spots.uns["simulation"] = json.dumps(comp.design)
    totals = np.asarray(spots.X.sum(axis=1)).ravel()
    if (totals == 0).any():  # can only happen with a tiny gene panel
        raise SystemExit(f"simulate: {(totals == 0).sum()} spots have no counts over the {len(genes)}-gene panel")
    ref.obs[labels_key] = ref.obs[labels_key].astype(str).astype("category")
    paths = {
        "reference": outdir / "reference_half.h5ad",
        "spots": outdir / "spots.h5ad",
        "truth": outdir / "true_counts.csv",
        "design": outdir / "design.json",
    }
    ref.write_h5ad(paths["reference"])
    spots.write_h5ad(paths["spots"])
    comp.counts.to_csv(paths["truth"])
    design = {**comp.design, "n_genes_spots": int(len(genes)), "gene_panel": panel,
              "n_generation_cells": int(gen.n_obs), "n_reference_cells": int(ref.n_obs),
              "median_umis_per_spot": float(np.median(totals))}
    paths["design"].write_text(json.dumps(design, indent=2))
    return {k: str(v) for k, v in paths.items()} | {"design_summary": design}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--outdir", type=Path, required=True)
    p.add_argument("--n-spots", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--panel", default="all", help="'all', N random genes, or a file naming the genes")
    a = p.parse_args()
    print(json.dumps(build(a.reference, a.outdir, a.n_spots, a.seed, panel=a.panel)["design_summary"], indent=2))


if __name__ == "__main__":
    main()
