"""Cell-type markers: does the gene filter keep them, and do the sections measure them?

A type's markers are its `N_MARKERS` most specific genes among those it expresses: specificity = the type's mean
expression (counts per 10,000 per cell) over the sum of all types' means (cell2location's tutorial reads marker
genes off its signatures the same way, `inf_aver / inf_aver.sum(1)`); "expressed" = detected in at least
`MIN_DETECTED` of the type's cells (a quarter: at a tenth, the markers of a 10-cell type are genes seen in one
cell). The filter step computes them on the whole reference (before the filter) and
records, per gene, the types it marks (`<prefix>_genes.csv`, columns `marker_of`, `marker_rank`); the report
counts, per type, how many of them the filter kept and how many of those each section measures (from the
section's gene list in the mapping model's training JSON), and grades the count against `MIN_KEPT`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: markers per cell type
N_MARKERS = 20
#: PASS when a type keeps at least this many of its N_MARKERS markers after the gene filter (more than half), WARN
#: down to MIN_KEPT_WARN, FAIL below (calibration: docs/output.md, "Markers")
MIN_KEPT = 11
MIN_KEPT_WARN = 3
#: a gene is "expressed" by a type when detected in at least this fraction of its cells
MIN_DETECTED = 0.25


def type_means(adata, labels_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(genes x types mean counts per 10,000 per cell, genes x types fraction of cells with a count)."""
    labels = pd.Categorical(adata.obs[labels_key].astype(str))
    X, norm = _per_10k(adata)
    onehot = _onehot(labels)
    n = np.asarray(onehot.sum(axis=1)).ravel()[:, None]
    means = np.asarray((onehot @ norm).todense()) / n
    detected = np.asarray((onehot @ (X > 0).astype(np.float32)).todense()) / n
    cols = list(map(str, labels.categories))
    return (pd.DataFrame(means.T, index=adata.var_names, columns=cols),
            pd.DataFrame(detected.T, index=adata.var_names, columns=cols))


def _per_10k(adata):
    """(the counts as CSR, the counts per 10,000 per cell as CSR)."""
    import scipy.sparse as sp

    X = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(np.asarray(adata.X))
    totals = np.asarray(X.sum(axis=1)).ravel()
    return X, sp.diags(1e4 / np.where(totals > 0, totals, 1.0)) @ X


def _onehot(labels: pd.Categorical):
    """groups x cells indicator matrix (CSR) of a categorical."""
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(labels)), (labels.codes, np.arange(len(labels)))),
                         shape=(len(labels.categories), len(labels)))


def top_markers(means: pd.DataFrame, detected: pd.DataFrame | None = None, n: int = N_MARKERS,
                min_detected: float = MIN_DETECTED) -> dict[str, list[str]]:
    """Per type (column of `means`) its `n` most specific genes, most specific first, among those it expresses
    (detected in >= `min_detected` of its cells; without `detected`, every gene with a positive mean)."""
    total = means.sum(axis=1).to_numpy()
    spec = means.to_numpy() / np.where(total > 0, total, 1.0)[:, None]
    out = {}
    for j, t in enumerate(means.columns):
        ok = (detected[t].to_numpy() >= min_detected) if detected is not None else np.ones(len(means), bool)
        ok &= means[t].to_numpy() > 0
        idx = np.flatnonzero(ok)
        # ties (specificity 1 for genes only one type expresses): the higher mean first
        order = np.lexsort((-means[t].to_numpy()[idx], -spec[idx, j]))
        out[str(t)] = [str(g) for g in means.index[idx[order[:n]]]]
    return out


def marker_columns(markers: dict[str, list[str]], genes: pd.Index) -> pd.DataFrame:
    """Per gene: `marker_of` (the types it marks, ';'-joined, '' if none) and `marker_rank` (its best rank, 1 =
    most specific; empty if none), for `<prefix>_genes.csv`."""
    of: dict[str, list[str]] = {}
    rank: dict[str, int] = {}
    for t, gs in markers.items():
        for i, g in enumerate(gs, start=1):
            of.setdefault(g, []).append(t)
            rank[g] = min(rank.get(g, i), i)
    return pd.DataFrame({"marker_of": [";".join(of.get(str(g), [])) for g in genes],
                         "marker_rank": pd.array([rank.get(str(g)) for g in genes], dtype="Int64")}, index=genes)


def markers_from_table(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per type, its markers in rank order, read back from a genes table with `marker_of`/`marker_rank` (the
    index or a `gene` column the gene ids, a `SYMBOL` column the names shown)."""
    if "marker_of" not in table:
        return {}
    rows = table[table["marker_of"].fillna("").astype(str) != ""]
    out: dict[str, list[tuple[int, str]]] = {}
    for gene, row in rows.iterrows():
        for t in str(row["marker_of"]).split(";"):
            out.setdefault(t, []).append((int(row["marker_rank"]) if pd.notna(row["marker_rank"]) else 999, str(gene)))
    return {t: [g for _, g in sorted(v)] for t, v in out.items()}


def marker_check(markers: dict[str, list[str]], kept: set[str],
                 sections: dict[str, set[str]] | None = None, symbols: dict[str, str] | None = None) -> pd.DataFrame:
    """Per type: markers, how many the filter kept, the names of those dropped, and per section how many of the
    kept ones it measures (`in <section>` columns)."""
    symbols = symbols or {}
    rows = {}
    for t, gs in markers.items():
        k = [g for g in gs if g in kept]
        row = {"markers": len(gs), "kept": len(k),
               "dropped": ", ".join(symbols.get(g, g) for g in gs if g not in kept),
               "kept_names": ", ".join(symbols.get(g, g) for g in k)}
        for s, genes in (sections or {}).items():
            row[f"in {s}"] = sum(g in genes for g in k)
        rows[t] = row
    return pd.DataFrame.from_dict(rows, orient="index")


#: genes (the most variable of log1p counts per 10,000) over which `label_signal` measures the labels
LABEL_SIGNAL_GENES = 1000


def label_signal(adata, labels_key: str, n_genes: int = LABEL_SIGNAL_GENES, seed: int = 0) -> dict:
    """How much of the reference's expression its labels explain, against labels of the same sizes at random.

    Over the `n_genes` most variable genes of log1p(counts per 10,000), the fraction of each gene's variance
    between the labels' groups (R^2 of a one-way ANOVA), averaged over the genes; `ratio` = that over the same with
    the labels permuted (seeded). Cell types explain much of it (ratio 6.6 - 19 on the three real references,
    docs/output.md); a column that groups the cells otherwise (a sample or batch column, a shuffled copy) is near 1:
    the signatures would then be averages of mixed cells whatever the model does."""
    y = _per_10k(adata)[1].tocsc()
    y.data = np.log1p(y.data)
    mean = np.asarray(y.mean(axis=0)).ravel()
    var = np.asarray(y.multiply(y).mean(axis=0)).ravel() - mean**2
    genes = np.argsort(-var)[: min(n_genes, int((var > 0).sum()))]
    y = y[:, genes].astype(np.float64)  # stays sparse: an atlas of 10^5 - 10^6 cells is never densified
    n_cells = y.shape[0]
    mean = np.asarray(y.mean(axis=0)).ravel()
    total = np.asarray(y.multiply(y).sum(axis=0)).ravel() - n_cells * mean**2  # sum of squares about the mean

    def explained(labels) -> float:
        onehot = _onehot(pd.Categorical(labels))
        n = np.asarray(onehot.sum(axis=1)).ravel()[:, None]
        sums = np.asarray((onehot @ y).todense())  # groups x genes
        between = (sums**2 / n).sum(axis=0) - n_cells * mean**2  # sum over groups of n_k (mean_k - mean)^2
        return float(np.mean(between / total))

    labels = adata.obs[labels_key].astype(str).to_numpy()
    r2 = explained(labels)
    r2_random = explained(np.random.default_rng(seed).permutation(labels))
    return {"n_genes": int(len(genes)), "r2": r2, "r2_permuted": r2_random,
            "ratio": float(r2 / r2_random) if r2_random > 0 else float("nan")}
