"""Accuracy metrics against the simulated truth, and the NNLS floor.

All functions take spots x cell types tables with the same index and columns (they are aligned first).

* proportions: true counts / spot total vs predicted abundances / spot total (a spot predicted all-zero
  gets uniform proportions);
* `prop_pearson_spot`: Pearson r between the true and predicted proportion vectors of each spot, averaged
  over spots (spots where either vector is constant are skipped);
* `prop_rmse`: root mean squared error of proportions over all spot x type entries (per type: over spots);
* `abundance_pearson`: Pearson r of predicted abundance vs true cell number over all entries (per type:
  over spots);
* `aupr`: average precision (sklearn.metrics.average_precision_score) for presence (true count > 0) with the
  predicted abundance as the score, over all entries (per type: over spots; NaN when a type is present in
  every spot or in none).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.metrics import average_precision_score


def _align(truth: pd.DataFrame, pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    pred = pred.copy()
    pred.index = pred.index.astype(str)
    truth = truth.copy()
    truth.index = truth.index.astype(str)
    missing = set(truth.columns) - set(pred.columns)
    if missing:
        raise ValueError(f"predictions lack cell types {sorted(missing)}")
    missing = set(truth.index) - set(pred.index)
    if missing:
        raise ValueError(f"predictions lack {len(missing)} spots, e.g. {sorted(missing)[:3]}")
    return truth.to_numpy(float), pred.loc[truth.index, truth.columns].to_numpy(float)


def proportions(x: np.ndarray) -> np.ndarray:
    tot = x.sum(axis=1, keepdims=True)
    out = np.full_like(x, 1.0 / x.shape[1], dtype=float)
    np.divide(x, tot, out=out, where=tot > 0)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def per_type_pearson(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """Pearson r of two spots x cell types tables (e.g. two q05 maps), per cell type (the columns of `a`), over
    the spots they share (NaN for a type constant in either)."""
    a, b = a.set_axis(a.index.astype(str)), b.set_axis(b.index.astype(str))
    shared = a.index.intersection(b.index)
    return {c: _pearson(a.loc[shared, c].to_numpy(float), b.loc[shared, c].to_numpy(float)) for c in a.columns}


def _ap(present: np.ndarray, score: np.ndarray) -> float:
    if present.all() or not present.any():
        return float("nan")
    return float(average_precision_score(present, score))


def evaluate(truth: pd.DataFrame, pred: pd.DataFrame) -> dict:
    """Overall and per-cell-type metrics (see module docstring)."""
    t, p = _align(truth, pred)
    tp, pp = proportions(t), proportions(p)
    spot_r = [_pearson(tp[i], pp[i]) for i in range(len(tp))]
    overall = {
        "prop_pearson_spot": float(np.nanmean(spot_r)),
        "prop_pearson_spot_median": float(np.nanmedian(spot_r)),
        "prop_rmse": float(np.sqrt(np.mean((tp - pp) ** 2))),
        "prop_rmse_spot_mean": float(np.mean(np.sqrt(np.mean((tp - pp) ** 2, axis=1)))),
        "abundance_pearson": _pearson(t.ravel(), p.ravel()),
        "aupr": _ap(t.ravel() > 0, p.ravel()),
        "prevalence": float((t > 0).mean()),
    }
    per_type = {}
    for j, ct in enumerate(truth.columns):
        per_type[ct] = {
            "prop_rmse": float(np.sqrt(np.mean((tp[:, j] - pp[:, j]) ** 2))),
            "abundance_pearson": _pearson(t[:, j], p[:, j]),
            "aupr": _ap(t[:, j] > 0, p[:, j]),
            "prevalence": float((t[:, j] > 0).mean()),
        }
    overall["aupr_type_mean"] = float(np.nanmean([v["aupr"] for v in per_type.values()]))
    overall["abundance_pearson_type_mean"] = float(np.nanmean([v["abundance_pearson"] for v in per_type.values()]))
    return {"overall": overall, "per_cell_type": per_type}


def nnls_abundance(spots_X, spot_genes: pd.Index, signatures: pd.DataFrame, barcodes) -> pd.DataFrame:
    """scipy.optimize.nnls per spot: counts over the shared genes ~ signatures (genes x types) @ abundance."""
    genes = pd.Index(signatures.index).intersection(spot_genes, sort=False)
    S = signatures.loc[genes].to_numpy(float)
    cols = pd.Index(spot_genes).get_indexer(genes)
    Y = spots_X[:, cols]
    Y = Y.toarray() if hasattr(Y, "toarray") else np.asarray(Y)
    out = np.vstack([nnls(S, y)[0] for y in Y.astype(float)])
    return pd.DataFrame(out, index=pd.Index(list(map(str, barcodes)), name="barcode"), columns=signatures.columns)
