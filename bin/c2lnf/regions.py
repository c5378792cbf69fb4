"""Step `regions`: tissue regions by Leiden clustering of the spots' cell-type abundances (the tutorial's
"Identifying discrete tissue regions by Leiden clustering").

All sections of a run are clustered together, as in the tutorial: a k-nearest-neighbour graph of the spots on
their q05 abundances (`sc.pp.neighbors(use_rep='q05_cell_abundance_w_sf', n_neighbors=15)`), Leiden clustering
at resolution 1.1. Writes `regions.csv` (every spot's region), `regions_composition.csv` (per region: spots and
the mean abundance and proportion of each cell type), `regions_composition.png` (the proportions as a heatmap)
and, per section, `<sample>.regions.png` (the regions on the tissue).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import C2LError

LOG = logging.getLogger("c2l.regions")
OBSM = "q05_cell_abundance_w_sf"


def load_abundances(sections: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """q05 abundances (spots x types, index `sample:barcode`) and the spots' sample and coordinates."""
    import anndata as ad

    tables, meta = [], []
    types = None
    for sample, path in sections.items():
        adata = ad.read_h5ad(path)
        if OBSM not in adata.obsm:
            raise C2LError(f"{path.name} has no obsm['{OBSM}'] (not a MAP_CELLS output)", sample, "h5ad")
        q05 = pd.DataFrame(np.asarray(adata.obsm[OBSM]), index=adata.obs_names.astype(str))
        names = list(adata.uns.get("mod", {}).get("factor_names", []) or
                     adata.uns.get("cell2location", {}).get("factor_names", []))
        if not names:
            cols = list(getattr(adata.obsm[OBSM], "columns", []))
            names = [str(c).replace("q05cell_abundance_w_sf_", "") for c in cols]
        if len(names) != q05.shape[1]:
            raise C2LError(f"cannot tell the cell types of obsm['{OBSM}'] ({q05.shape[1]} columns)", sample, "h5ad")
        q05.columns = names
        if types is None:
            types = names
        elif names != types:
            raise C2LError("the cell types differ from those of the first section", sample, "h5ad")
        q05.index = [f"{sample}:{b}" for b in q05.index]
        xy = np.asarray(adata.obsm["spatial"], dtype=float) if "spatial" in adata.obsm else np.full((adata.n_obs, 2), np.nan)
        meta.append(pd.DataFrame({"sample": sample, "barcode": adata.obs_names.astype(str), "x": xy[:, 0], "y": xy[:, 1]},
                                 index=q05.index))
        tables.append(q05)
    return pd.concat(tables), pd.concat(meta)


def cluster(q05: pd.DataFrame, n_neighbors: int, resolution: float, seed: int) -> pd.Series:
    """Leiden clusters ('0', '1', ... by size) of the spots on their q05 abundances."""
    import anndata as ad
    import scanpy as sc

    if len(q05) <= n_neighbors:
        raise C2LError(f"{len(q05)} spots: too few to cluster with {n_neighbors} neighbours", None, "regions")
    adata = ad.AnnData(X=np.zeros((len(q05), 1), dtype=np.float32), obs=pd.DataFrame(index=q05.index))
    adata.obsm[OBSM] = q05.to_numpy(dtype=np.float32)
    sc.pp.neighbors(adata, use_rep=OBSM, n_neighbors=n_neighbors, random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, key_added="region", flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed)
    return adata.obs["region"].astype(str)


def composition(q05: pd.DataFrame, regions: pd.Series) -> pd.DataFrame:
    """Per region: spots, mean abundance and mean proportion of each type."""
    props = q05.div(q05.sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
    grouped = regions.loc[q05.index]
    mean_ab = q05.groupby(grouped).mean().add_prefix("abundance_")
    mean_pr = props.groupby(grouped).mean().add_prefix("proportion_")
    out = pd.concat([grouped.value_counts().rename("n_spots"), mean_ab, mean_pr], axis=1)
    out.index.name = "region"
    return out.loc[sorted(out.index, key=int)]


def palette(n: int) -> list:
    import matplotlib.pyplot as plt

    colours = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def plot_section(meta: pd.DataFrame, regions: pd.Series, order: list[str], sample: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = meta[meta["sample"] == sample]
    reg = regions.loc[part.index]
    colours = dict(zip(order, palette(len(order))))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    span = max(np.ptp(part["x"]), np.ptp(part["y"]), 1.0)
    size = max(1.0, min(60.0, 2.5e5 / max(len(part), 1) * (span / span)))  # fewer spots, larger markers
    for r in order:
        sel = reg == r
        if sel.any():
            ax.scatter(part.loc[sel, "x"], part.loc[sel, "y"], s=size, color=colours[r], label=f"{r} ({int(sel.sum())})",
                       linewidths=0, rasterized=len(part) > 5000)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{sample}: tissue regions (Leiden on q05 abundances)")
    ax.legend(title="region (spots)", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, markerscale=1.5,
              frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_composition(comp: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    props = comp[[c for c in comp.columns if c.startswith("proportion_")]]
    props.columns = [c[len("proportion_"):] for c in props.columns]
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * props.shape[1], 1.2 + 0.4 * props.shape[0]))
    im = ax.imshow(props.to_numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(props.shape[1]), props.columns, rotation=90)
    ax.set_yticks(range(props.shape[0]), [f"{r} ({int(n)})" for r, n in zip(props.index, comp["n_spots"])])
    ax.set_ylabel("region (spots)")
    ax.set_title("mean cell-type proportion per region")
    fig.colorbar(im, ax=ax, fraction=0.04, label="proportion")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run(sections: dict[str, Path], n_neighbors: int, resolution: float, seed: int, outdir: Path) -> pd.Series:
    from .runtime import staged_outputs

    q05, meta = load_abundances(sections)
    regions = cluster(q05, n_neighbors, resolution, seed)
    comp = composition(q05, regions)
    order = list(comp.index)
    LOG.info("regions: %d spots of %d section(s) in %d regions (Leiden, %d neighbours, resolution %g)",
             len(q05), len(sections), len(order), n_neighbors, resolution)
    table = meta[["sample", "barcode"]].assign(region=regions.loc[meta.index].to_numpy())
    with staged_outputs(outdir) as out:
        table.to_csv(out.path("regions.csv"), index=False)
        comp.to_csv(out.path("regions_composition.csv"))
        plot_composition(comp, out.path("regions_composition.png"))
        for sample in sections:
            plot_section(meta, regions, order, sample, out.path(f"{sample}.regions.png"))
    return regions
