"""Step `filter_reference`: check the single-cell reference and apply cell2location's gene filter."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .counts import check_raw_counts
from .errors import C2LError

LOG = logging.getLogger("c2l.filter_reference")
REFERENCE = "reference"


def load_reference(
    path: Path,
    labels_key: str,
    batch_key: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    gene_id_column: str | None = None,
    min_cells_per_type: int = 5,
) -> ad.AnnData:
    """Read a reference h5ad and check it: raw counts, annotation columns, enough cells per type."""
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise C2LError(f"cannot read {Path(path).name}: {exc}", REFERENCE, "reference") from exc
    for key, field in [(labels_key, "labels_key"), (batch_key, "batch_key")] + [
        (c, "categorical_covariate_keys") for c in (categorical_covariate_keys or [])
    ]:
        if key is None:
            continue
        if key not in adata.obs:
            cols = ", ".join(map(str, adata.obs.columns[:12]))
            raise C2LError(f"column '{key}' is not in the reference obs (columns: {cols})", REFERENCE, field)
        if adata.obs[key].isna().any():
            raise C2LError(f"column '{key}' has {int(adata.obs[key].isna().sum())} missing value(s)", REFERENCE, field)
    check_raw_counts(adata.X, REFERENCE, field="reference (counts)")
    if gene_id_column:
        if gene_id_column not in adata.var:
            raise C2LError(
                f"column '{gene_id_column}' is not in the reference var (columns: {', '.join(map(str, adata.var.columns))})",
                REFERENCE,
                "reference_gene_id_column",
            )
        adata.var["SYMBOL"] = adata.var_names.astype(str)
        adata.var_names = pd.Index(adata.var[gene_id_column].astype(str).to_numpy())
    elif "SYMBOL" not in adata.var:
        adata.var["SYMBOL"] = adata.var_names.astype(str)
    adata.var_names_make_unique()
    adata.var.index.name = None
    counts = adata.obs[labels_key].astype(str).value_counts()
    small = counts[counts < min_cells_per_type]
    if len(small):
        listing = ", ".join(f"{k} ({v})" for k, v in small.items())
        raise C2LError(
            f"cell type(s) with fewer than {min_cells_per_type} cells: {listing}; merge or drop them "
            "(or lower --min_cells_per_type)",
            REFERENCE,
            "labels_key",
        )
    if len(counts) < 2:
        raise C2LError(f"only {len(counts)} cell type in '{labels_key}'; at least 2 are needed", REFERENCE, "labels_key")
    adata.obs[labels_key] = adata.obs[labels_key].astype(str).astype("category")
    return adata


def filter_reference(
    adata: ad.AnnData,
    cell_count_cutoff: int = 5,
    cell_percentage_cutoff2: float = 0.03,
    nonz_mean_cutoff: float = 1.12,
) -> tuple[ad.AnnData, list]:
    """cell2location.utils.filtering.filter_genes with the tutorial's cut-offs; returns (filtered, figures)."""
    from .light_imports import cell2location_function
    from .runtime import captured_figures

    filter_genes = cell2location_function("utils.filtering", "filter_genes")  # without torch: see light_imports

    with captured_figures() as figures:
        selected = filter_genes(
            adata,
            cell_count_cutoff=cell_count_cutoff,
            cell_percentage_cutoff2=cell_percentage_cutoff2,
            nonz_mean_cutoff=nonz_mean_cutoff,
        )
    if len(selected) == 0:
        raise C2LError("no gene passes the gene filter; check the cut-offs and that X holds raw counts", REFERENCE, "reference")
    filtered = adata[:, selected].copy()
    filtered.uns["c2l_filter"] = {
        "cell_count_cutoff": cell_count_cutoff,
        "cell_percentage_cutoff2": cell_percentage_cutoff2,
        "nonz_mean_cutoff": nonz_mean_cutoff,
        "n_genes_in": int(adata.n_vars),
        "n_genes_kept": int(filtered.n_vars),
    }
    LOG.info("gene filter kept %d of %d genes (%d cells)", filtered.n_vars, adata.n_vars, filtered.n_obs)
    return filtered, figures


def genes_table(adata: ad.AnnData, kept: pd.Index) -> pd.DataFrame:
    """Per-gene statistics written by filter_genes plus whether the gene was kept."""
    table = adata.var[[c for c in ("SYMBOL", "n_cells", "nonz_mean") if c in adata.var]].copy()
    table["kept"] = np.isin(adata.var_names, kept)
    table.index.name = "gene"
    return table


def run(reference: Path, labels_key: str, batch_key: str | None, categorical_covariate_keys: list[str],
        gene_id_column: str | None, cell_count_cutoff: int, cell_percentage_cutoff2: float, nonz_mean_cutoff: float,
        min_cells_per_type: int, outdir: Path, prefix: str) -> None:
    """The step: check the reference, keep the genes that pass filter_genes; writes <prefix>_filtered.h5ad,
    <prefix>_filter.png and <prefix>_genes.csv into `outdir` (all or none)."""
    from .runtime import save_figures, staged_outputs, write_h5ad

    adata = load_reference(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column, min_cells_per_type)
    filtered, figures = filter_reference(adata, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff)
    with staged_outputs(outdir) as out:
        write_h5ad(filtered, out.path(f"{prefix}_filtered.h5ad"))
        save_figures(figures, out.path(f"{prefix}_filter.png"))
        genes_table(adata, filtered.var_names).to_csv(out.path(f"{prefix}_genes.csv"))
