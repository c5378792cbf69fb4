"""Checks on count matrices shared by the spatial and the reference side."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import C2LError


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def check_raw_counts(X, sample: str, field: str = "X") -> None:
    """Raise unless X holds finite, non-negative integer counts (cell2location models raw UMI counts)."""
    values = _values(X)
    if values.size == 0:
        raise C2LError("the count matrix is empty", sample=sample, field=field)
    if not np.all(np.isfinite(values)):
        n = int((~np.isfinite(values)).sum())
        raise C2LError(f"{n} count value(s) are NaN or infinite; raw integer counts are required", sample, field)
    if values.min() < 0:
        raise C2LError(f"negative counts found (min {values.min():g}); raw integer counts are required", sample, field)
    frac = np.abs(values - np.round(values))
    if frac.max() > 1e-6:
        example = values[np.argmax(frac)]
        raise C2LError(
            f"non-integer values found (e.g. {example:g}): the data look normalised or log-transformed; "
            "cell2location needs raw integer counts (use .raw or a counts layer)",
            sample,
            field,
        )


def row_totals(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


def as_csr_float32(X) -> sp.csr_matrix:
    return sp.csr_matrix(X, dtype=np.float32)
