"""Step `filter_reference`: check the single-cell reference and apply cell2location's gene filter."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .counts import check_raw_counts
from .errors import C2LError
from .genes import looks_ensembl

LOG = logging.getLogger("c2l.filter_reference")
REFERENCE = "reference"


#: a batch key with more distinct values than this fraction of the cells is most likely not a batch
BATCH_FRACTION_WARN = 0.1
#: cell types with fewer cells than this get a warning: their signature is the mean of a handful of cells
FEW_CELLS_WARN = 10
#: labels that are missing values written out as text
MISSING_TEXT = {"nan", "none", "na", "n/a", "null", "<na>"}


def check_labels(labels: pd.Series, key: str, field: str, warn: bool = True) -> None:
    """Missing, empty or whitespace-only labels, missing values written as text ('nan'), and labels that differ
    only by spaces (or case: a warning), named as such."""
    if labels.isna().any():
        raise C2LError(f"column '{key}' has {int(labels.isna().sum())} missing value(s)", REFERENCE, field)
    text = labels.astype(str)
    empty = text.str.strip() == ""
    if empty.any():
        raise C2LError(f"column '{key}' has {int(empty.sum())} empty value(s) (\'\' or only spaces); "
                       "label those cells or drop them", REFERENCE, field)
    as_text = text.str.strip().str.lower().isin(MISSING_TEXT)
    if as_text.any():
        word = text[as_text].iloc[0]
        raise C2LError(f"column '{key}' has {int(as_text.sum())} value(s) '{word}': a missing value written as text; "
                       "label those cells or drop them", REFERENCE, field)
    check_near_duplicates(text, key, field, warn)


def _spaced(label: str) -> str:
    return " ".join(label.split())


def check_near_duplicates(text: pd.Series, key: str, field: str, warn: bool = True) -> None:
    """Two labels that differ only by spaces (around or inside: 'B' and 'B ') would be two cell types (two
    signatures, two columns, legends that look identical): refused, naming them. Two that differ only by case
    ('T_cd4' and 'T_CD4') stay two types, with a warning (they may be meant apart)."""
    levels = pd.Index(text.unique())
    groups: dict[str, list[str]] = {}
    for label in levels:
        groups.setdefault(_spaced(label), []).append(label)
    clashes = [sorted(labels) for labels in groups.values() if len(labels) > 1]
    if clashes:
        listing = "; ".join(" and ".join(repr(x) for x in labels) for labels in clashes[:5])
        raise C2LError(f"column '{key}' has value(s) that differ only by spaces: {listing}; they would be separate "
                       "cell types: make them the same label", REFERENCE, field)
    by_case: dict[str, list[str]] = {}
    for label in levels:
        by_case.setdefault(_spaced(label).casefold(), []).append(label)
    cased = [sorted(labels) for labels in by_case.values() if len(labels) > 1]
    if cased and warn:
        listing = "; ".join(" and ".join(repr(x) for x in labels) for labels in cased[:5])
        LOG.warning("reference: column '%s' (%s) has value(s) that differ only by case: %s; they are kept as separate "
                    "cell types (make them the same label if they are one)", key, field, listing)


def normalise_labels(values: pd.Series) -> pd.Series:
    """Labels as text without surrounding spaces ('B ' is 'B'): what every step compares and writes."""
    return values.astype(str).str.strip()


def check_batches(values: pd.Series, key: str, field: str, warn: bool = True) -> None:
    """A batch (or covariate) column with one value per cell is an error; with more than a tenth of the cells as
    distinct values, a warning: each level gets its own parameters, so such a column makes a meaningless model."""
    n, levels = len(values), values.astype(str).nunique()
    if n > 1 and levels == n:
        raise C2LError(f"column '{key}' has a different value in every cell ({n} cells): it cannot be a batch "
                       "(a cell id or a numeric measurement?); name the donor, sample or 10x reaction column",
                       REFERENCE, field)
    if warn and levels > BATCH_FRACTION_WARN * n:
        LOG.warning("reference: column '%s' (%s) has %d distinct values for %d cells: more batches than a tenth of "
                    "the cells; is it really a batch?", key, field, levels, n)


def same_partition(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns group the cells identically (one value of `a` per value of `b` and back)."""
    pairs = pd.DataFrame({"a": a.astype(str).to_numpy(), "b": b.astype(str).to_numpy()}).drop_duplicates()
    return bool(len(pairs) == pairs["a"].nunique() == pairs["b"].nunique())


def check_types_have_counts(adata: ad.AnnData, labels_key: str) -> None:
    """A cell type whose cells hold no count at all would still get a signature (the prior's ~1e-4 per gene) and be
    placed in every spot: refused by name. After the gene filter (train-reference) this covers the kept genes."""
    labels = adata.obs[labels_key].astype(str).to_numpy()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    per_type = pd.Series(totals).groupby(labels).sum()
    empty = per_type[per_type <= 0]
    if len(empty):
        cells = pd.Series(labels).value_counts()
        listing = ", ".join(f"{k} ({cells[k]} cells)" for k in empty.index)
        genes = "" if "c2l_filter" not in adata.uns else " over the genes kept by the gene filter"
        raise C2LError(f"cell type(s) without any count{genes}: {listing}; their cells are empty: drop them or fix "
                       "the counts", REFERENCE, "labels_key")


def symbols_column(adata: ad.AnnData) -> pd.Series | None:
    """Gene symbols kept in a var column beside Ensembl var_names (CELLxGENE: feature_name), or None."""
    for col in ("SYMBOL", "feature_name", "gene_symbols", "gene_symbol", "gene_name", "symbol"):
        if col in adata.var:
            return adata.var[col].astype(str)
    return None


def load_reference(
    path: Path,
    labels_key: str,
    batch_key: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    gene_id_column: str | None = None,
    min_cells_per_type: int = 5,
    layer: str | None = None,
    warn: bool = True,
) -> ad.AnnData:
    """Read a reference h5ad and check it: raw counts (X, a layer, or `.raw` with `layer='raw'`), annotation
    columns, enough cells per type. `warn=False`: no warnings (train-reference, after filter-reference gave them)."""
    from .counts import select_counts

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
        check_labels(adata.obs[key], key, field, warn)
        if normalise_labels(adata.obs[key]).ne(adata.obs[key].astype(str)).any():
            adata.obs[key] = pd.Categorical(normalise_labels(adata.obs[key]))
        if field != "labels_key":
            check_batches(adata.obs[key], key, field, warn)
    if batch_key is not None and same_partition(adata.obs[labels_key], adata.obs[batch_key]):
        raise C2LError(f"columns '{labels_key}' (labels_key) and '{batch_key}' (batch_key) group the cells the same way: "
                       "the labels would be the batches, not cell types; name the cell-type column", REFERENCE,
                       "labels_key")
    source = adata
    adata = select_counts(adata, layer, REFERENCE, "reference_layer")
    where = "reference (counts)" if not layer else f"reference ({'.raw' if layer == 'raw' else f'layer {layer}'})"
    check_raw_counts(adata.X, REFERENCE, field=where, adata=None if layer else source, option="--reference_layer",
                     chosen=layer)
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
        symbols = symbols_column(adata) if looks_ensembl(adata.var_names) else None
        adata.var["SYMBOL"] = symbols.to_numpy() if symbols is not None else adata.var_names.astype(str)
    duplicated = adata.var_names[adata.var_names.duplicated()]
    if warn and len(duplicated):
        LOG.warning("reference: %d duplicated gene id(s) renamed with a -1, -2... suffix (e.g. %s); they will not "
                    "match the sections' genes", len(duplicated), duplicated[0])
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
    check_types_have_counts(adata, labels_key)
    few = counts[counts < FEW_CELLS_WARN]
    if warn and len(few):
        LOG.warning("reference: %d cell type(s) with fewer than %d cells (%s): their signatures rest on very few cells",
                    len(few), FEW_CELLS_WARN, ", ".join(f"{k} ({v})" for k, v in few.items()))
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


#: a cell type left with half or fewer of its 20 markers (markers.N_MARKERS) after the gene filter is flagged:
#: the filter step warns, the report grades it WARN (calibration: docs/output.md, "Markers")
from .markers import MIN_KEPT as MIN_MARKERS_KEPT  # noqa: E402

#: the options of the gene filter, named in the warning
FILTER_OPTIONS = "--cell_count_cutoff / --cell_percentage_cutoff2 / --nonz_mean_cutoff"


def genes_table(adata: ad.AnnData, kept: pd.Index, markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Per-gene statistics written by filter_genes, whether the gene was kept and the cell types it marks."""
    from .markers import marker_columns

    table = adata.var[[c for c in ("SYMBOL", "n_cells", "nonz_mean") if c in adata.var]].copy()
    table["kept"] = np.isin(adata.var_names, kept)
    if markers is not None:
        table = table.join(marker_columns(markers, adata.var_names))
    table.index.name = "gene"
    return table


def reference_markers(adata: ad.AnnData, labels_key: str) -> dict[str, list[str]]:
    """Each type's top markers in the whole (unfiltered) reference (markers.top_markers)."""
    from .markers import top_markers, type_means

    return top_markers(*type_means(adata, labels_key))


def log_markers(markers: dict[str, list[str]], adata: ad.AnnData, kept: pd.Index) -> pd.DataFrame:
    """Per type, how many of its markers the filter kept (info), and a warning naming the types left with fewer
    than MIN_MARKERS_KEPT, their dropped genes and the options that drop them."""
    from .markers import marker_check

    symbols = dict(zip(adata.var_names.astype(str), adata.var["SYMBOL"].astype(str))) if "SYMBOL" in adata.var else {}
    check = marker_check(markers, set(map(str, kept)), symbols=symbols)
    LOG.info("markers kept by the gene filter (of the top %d per type): %s", max(check["markers"], default=0),
             ", ".join(f"{t} {r.kept}" for t, r in check.iterrows()))
    low = check[check["kept"] < MIN_MARKERS_KEPT]
    for t, r in low.iterrows():
        LOG.warning("reference: the gene filter keeps %d of the %d top markers of '%s' (fewer than %d); dropped: %s. "
                    "Lower %s (the tutorial's: 5 / 0.03 / 1.12) to keep them", r.kept, r.markers, t,
                    MIN_MARKERS_KEPT, r.dropped, FILTER_OPTIONS)
    return check


def run(reference: Path, labels_key: str, batch_key: str | None, categorical_covariate_keys: list[str],
        gene_id_column: str | None, cell_count_cutoff: int, cell_percentage_cutoff2: float, nonz_mean_cutoff: float,
        min_cells_per_type: int, outdir: Path, prefix: str, layer: str | None = None) -> None:
    """The step: check the reference, keep the genes that pass filter_genes, check that each type keeps its
    markers (markers.py); writes <prefix>_filtered.h5ad, <prefix>_filter.png and <prefix>_genes.csv (with the
    markers: columns marker_of, marker_rank) into `outdir` (all or none)."""
    from .runtime import save_figures, staged_outputs, write_h5ad

    adata = load_reference(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column, min_cells_per_type,
                           layer)
    filtered, figures = filter_reference(adata, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff)
    check_types_have_counts(filtered, labels_key)
    markers = reference_markers(adata, labels_key)
    check = log_markers(markers, adata, filtered.var_names)
    filtered.uns["c2l_filter"]["markers_kept"] = {str(t): int(k) for t, k in check["kept"].items()}
    with staged_outputs(outdir) as out:
        write_h5ad(filtered, out.path(f"{prefix}_filtered.h5ad"))
        save_figures(figures, out.path(f"{prefix}_filter.png"))
        genes_table(adata, filtered.var_names, markers).to_csv(out.path(f"{prefix}_genes.csv"))
