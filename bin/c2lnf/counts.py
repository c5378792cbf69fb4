"""Checks on count matrices shared by the spatial and the reference side, and where raw counts are kept."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import C2LError

#: the value of --reference_layer / the samplesheet's `layer` that means `.raw.X` (with `.raw.var`)
RAW = "raw"
#: layer names under which raw counts are usually kept, most likely first
COUNT_LAYER_NAMES = ("counts", "raw_counts", "count", "umi_counts", "umis", "raw")


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def problem(X) -> str | None:
    """Why X does not hold raw counts (None when it does)."""
    values = _values(X)
    if values.size == 0:
        return "the count matrix is empty"
    if not np.all(np.isfinite(values)):
        n = int((~np.isfinite(values)).sum())
        return f"{n} count value(s) are NaN or infinite; raw integer counts are required"
    if values.min() < 0:
        return f"negative counts found (min {values.min():g}); raw integer counts are required"
    frac = np.abs(values - np.round(values))
    if frac.max() > 1e-6:
        example = values[np.argmax(frac)]
        return (f"non-integer values found (e.g. {example:g}): the data look normalised or log-transformed; "
                "cell2location needs raw integer counts")
    return None


def counts_sources(adata) -> list[str]:
    """Where else this AnnData holds raw integer counts: layer names (likely names first), then 'raw' for .raw."""
    found = []
    names = sorted(adata.layers.keys(), key=lambda k: (k not in COUNT_LAYER_NAMES, str(k)))
    for name in names:
        layer = adata.layers[name]
        if _values(layer).size and problem(layer) is None:
            found.append(str(name))
    if adata.raw is not None and _values(adata.raw.X).size and problem(adata.raw.X) is None:
        found.append(RAW)
    return found


def check_raw_counts(X, sample: str, field: str = "X", adata=None, option: str | None = None,
                     chosen: str | None = None) -> None:
    """Raise unless X holds finite, non-negative integer counts (cell2location models raw UMI counts).

    With `adata` (the object X came from) and `option` (how the user picks a layer, e.g. '--reference_layer'),
    the message says which layer or `.raw` holds raw counts instead, or that none does; `chosen`: the layer the
    user picked ('raw' for .raw), named when it is the one that is not raw counts.
    """
    why = problem(X)
    if why is None:
        return
    if "non-integer" in why:
        sources = counts_sources(adata) if adata is not None else []
        if chosen:
            why += f" (the chosen {'.raw' if chosen == RAW else f'layer {chosen!r}'} does not hold raw counts either)"
        elif sources and option:
            where = ", ".join(".raw" if s == RAW else f"layers['{s}']" for s in sources)
            why += f" ({where} hold{'s' if len(sources) == 1 else ''} raw counts: set {option} to {sources[0]})"
        elif option:
            why += " (and no layer nor .raw of this file holds integer counts)"
        else:
            why += " (use .raw or a counts layer)"
    raise C2LError(why, sample, field)


def select_counts(adata, layer: str | None, sample: str, field: str):
    """The AnnData whose X holds the counts: X itself (layer None), a layer, or `.raw` (X and var of .raw)."""
    import anndata as ad

    if not layer:
        return adata
    if layer == RAW:
        if adata.raw is None:
            have = ", ".join(map(str, adata.layers.keys())) or "none"
            raise C2LError(f"the file has no .raw (layers: {have})", sample, field)
        raw = adata.raw
        var = raw.var.copy()
        for col in adata.var.columns:  # e.g. CELLxGENE's feature_name, kept in var only
            if col not in var:
                var[col] = adata.var[col].reindex(var.index)
        return ad.AnnData(X=raw.X, obs=adata.obs, var=var, obsm=dict(adata.obsm), uns=dict(adata.uns))
    if layer not in adata.layers:
        have = ", ".join(map(str, adata.layers.keys())) or "none"
        raise C2LError(f"no layer '{layer}' in the file (layers: {have}{'; .raw is set' if adata.raw is not None else ''})",
                       sample, field)
    return ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), uns=dict(adata.uns))


def row_totals(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


def as_csr_float32(X) -> sp.csr_matrix:
    return sp.csr_matrix(X, dtype=np.float32)
