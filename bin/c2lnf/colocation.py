"""Step `colocation`: cell-type co-location by non-negative matrix factorisation (the tutorial's "Identifying
cellular compartments / tissue zones using matrix factorisation", `cell2location.run_colocation` with
`CoLocatedGroupsSklearnNMF`).

All sections of a run together (`sample_name_col='sample'`), for each number of factors asked for (the
tutorial sweeps 5..30): per factor count `n_fact<k>/` with `cell_type_fractions.csv` (types x factors: how
much of each type each factor holds), `location_factors.csv` (spots x factors), `factor_markers.csv` (the top
types of each factor), `dotplot.png` (the tutorial's cell-type loadings dot plot) and `<sample>.factors.png`
(each factor's spatial map).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import C2LError
from .regions import OBSM, load_abundances

LOG = logging.getLogger("c2l.colocation")


def fit(q05: pd.DataFrame, samples: pd.Series, n_fact: int, n_restarts: int, n_iter: int, seed: int) -> dict:
    """One run_colocation fit; returns the model's tables."""
    import anndata as ad
    from cell2location import run_colocation

    adata = ad.AnnData(X=np.zeros((len(q05), 1), dtype=np.float32), obs=pd.DataFrame({"sample": samples.to_numpy()},
                                                                                     index=q05.index))
    adata.obsm[OBSM] = q05.copy()
    adata.obsm[OBSM].columns = [f"q05cell_abundance_w_sf_{c}" for c in q05.columns]
    adata.uns["mod"] = {"factor_names": list(q05.columns)}
    import matplotlib

    # run_colocation sets rcParams (black axes) and writes its own files: both kept out of this step's outputs
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()) as printed, \
            matplotlib.rc_context():
        res, _ = run_colocation(
            adata,
            model_name="CoLocatedGroupsSklearnNMF",
            train_args={"n_fact": [n_fact], "n_iter": n_iter, "sample_name_col": "sample", "n_restarts": n_restarts},
            model_kwargs={"random_state": seed},
            export_args={"path": tmp + "/", "plot_extension": "png", "save_model": True, "scanpy_coords_name": None,
                         "top_n": min(10, q05.shape[1])},
        )
        matplotlib.pyplot.close("all")
    LOG.debug("run_colocation said: %s", printed.getvalue()[-2000:])
    mod = res[f"n_fact{n_fact}"]["mod"]
    fractions = pd.DataFrame(mod.cell_type_fractions)
    locations = pd.DataFrame(mod.location_factors_df)
    return {"mod": mod, "cell_type_fractions": fractions, "location_factors": locations}


def top_types(fractions: pd.DataFrame, top_n: int = 5) -> pd.DataFrame:
    rows = []
    for f in fractions.columns:
        col = fractions[f].sort_values(ascending=False)
        rows.append({"factor": f, **{f"top{i + 1}": f"{t} ({v:.2f})" for i, (t, v) in enumerate(col.head(top_n).items())}})
    return pd.DataFrame(rows).set_index("factor")


def plot_dotplot(fractions: pd.DataFrame, path: Path) -> Path:
    """Types (rows) x factors (columns): dot size and colour the share of the type in the factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = fractions.copy()
    # the tutorial's order: each type next to the factor that holds most of it
    f = f.loc[f.idxmax(axis=1).map(list(f.columns).index).sort_values(kind="stable").index]
    n_types, n_fact = f.shape
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * n_fact, 1.0 + 0.3 * n_types))
    xs, ys = np.meshgrid(np.arange(n_fact), np.arange(n_types))
    vals = f.to_numpy()
    sc = ax.scatter(xs.ravel(), ys.ravel(), s=300 * vals.ravel(), c=vals.ravel(), cmap="Reds", vmin=0, vmax=1,
                    edgecolors="grey", linewidths=0.3)
    ax.set_xticks(range(n_fact), [str(c).replace("mean_cell_type_factors", "") for c in f.columns], rotation=90)
    ax.set_yticks(range(n_types), f.index)
    ax.set_xlim(-0.7, n_fact - 0.3)
    ax.set_ylim(n_types - 0.5, -0.5)
    ax.set_title(f"cell-type fractions of {n_fact} co-location factors")
    fig.colorbar(sc, ax=ax, fraction=0.04, label="fraction of the type")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_factors(meta: pd.DataFrame, locations: pd.DataFrame, sample: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = meta[meta["sample"] == sample]
    loc = locations.loc[part.index]
    n = loc.shape[1]
    ncol = min(5, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    size = max(1.0, min(30.0, 1.2e5 / max(len(part), 1)))
    for ax, col in zip(axes.ravel(), loc.columns):
        v = loc[col].to_numpy(float)
        vmax = np.quantile(v, 0.992) if np.isfinite(v).any() else 1
        ax.scatter(part["x"], part["y"], c=v, s=size, cmap="magma", vmin=0, vmax=max(vmax, 1e-9), linewidths=0,
                   rasterized=len(part) > 5000)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(col).replace("mean_nUMI_factors", ""), fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"{sample}: co-location factors ({n})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def run(sections: dict[str, Path], n_factors: list[int], n_restarts: int, n_iter: int, seed: int,
        outdir: Path) -> dict[int, dict]:
    from .runtime import staged_outputs

    q05, meta = load_abundances(sections)
    n_types = q05.shape[1]
    bad = [k for k in n_factors if not 2 <= k <= max(2, len(q05) - 1)]
    if bad:
        raise C2LError(f"{bad[0]} factors: need 2 <= factors < spots ({len(q05)})", None, "colocation_factors")
    results = {}
    with staged_outputs(outdir) as out:
        for k in n_factors:
            res = fit(q05, meta["sample"], k, n_restarts, n_iter, seed)
            fr, lf = res["cell_type_fractions"], res["location_factors"]
            lf.index = q05.index
            fr.index = fr.index.astype(str)
            LOG.info("colocation: %d factors over %d spots x %d types (%d restarts)", k, len(q05), n_types, n_restarts)
            sub = f"n_fact{k}"
            fr.to_csv(out.path(f"{sub}/cell_type_fractions.csv"))
            lf.assign(sample=meta["sample"], barcode=meta["barcode"]).to_csv(out.path(f"{sub}/location_factors.csv"))
            top_types(fr).to_csv(out.path(f"{sub}/factor_markers.csv"))
            plot_dotplot(fr, out.path(f"{sub}/dotplot.png"))
            for sample in sections:
                plot_factors(meta, lf, sample, out.path(f"{sub}/{sample}.factors.png"))
            results[k] = res
    return results
