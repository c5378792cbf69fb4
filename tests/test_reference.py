"""filter-reference and train-reference on the lymph node reference (tiny training, once per session)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd

from conftest import LN_CELL_TYPES, assert_png, no_staging


def test_filter_reference_outputs(filtered_reference, lymph_node):
    assert sorted(p.name for p in filtered_reference.iterdir()) == [
        "reference_filter.png", "reference_filtered.h5ad", "reference_genes.csv"]
    filtered = ad.read_h5ad(filtered_reference / "reference_filtered.h5ad")
    full = ad.read_h5ad(lymph_node / "reference.h5ad", backed="r")
    assert filtered.n_obs == 330
    # the tutorial's cut-offs keep about 8,900 of the 10,237 genes (README of the test data)
    assert 8500 < filtered.n_vars < 9300 < full.n_vars == 10237
    assert set(filtered.var_names) <= set(full.var_names)
    assert filtered.uns["c2l_filter"]["n_genes_kept"] == filtered.n_vars
    assert sorted(filtered.obs["cell_type"].cat.categories) == LN_CELL_TYPES
    genes = pd.read_csv(filtered_reference / "reference_genes.csv", index_col=0)
    assert len(genes) == 10237 and genes["kept"].sum() == filtered.n_vars
    assert list(genes.index[genes["kept"]]) == list(filtered.var_names)
    assert {"SYMBOL", "n_cells", "nonz_mean"} <= set(genes.columns)
    assert_png(filtered_reference / "reference_filter.png")


def test_train_reference_outputs(reference_run):
    names = sorted(p.name for p in reference_run.iterdir())
    assert names == ["reference_history.csv", "reference_history.png", "reference_model", "reference_posterior.h5ad",
                     "reference_qc.png", "reference_training.json", "signatures.csv"]
    summary = json.loads((reference_run / "reference_training.json").read_text())
    assert summary["epochs"] == 3 and summary["device"] == "cpu"
    assert np.isfinite(summary["final_elbo"]) and summary["train_seconds"] > 0
    rec = summary["reconstruction"]
    assert rec["n_obs_used"] == 330 and -1 <= rec["pearson_r"] <= 1 and -1 <= rec["pearson_r_log1p"] <= 1
    no_staging(reference_run)
    assert (reference_run / "reference_model" / "model.pt").is_file()
    history = pd.read_csv(reference_run / "reference_history.csv")
    assert list(history.columns) == ["epoch", "elbo_train"] and list(history["epoch"]) == [1, 2, 3]
    assert np.isfinite(history["elbo_train"]).all()
    assert_png(reference_run / "reference_history.png")
    assert_png(reference_run / "reference_qc.png")


def test_signatures_genes_by_cell_types(reference_run, filtered_reference):
    sig = pd.read_csv(reference_run / "signatures.csv", index_col=0)
    filtered = ad.read_h5ad(filtered_reference / "reference_filtered.h5ad", backed="r")
    assert sig.index.name == "gene"
    assert list(sig.columns) == LN_CELL_TYPES
    assert list(sig.index) == list(filtered.var_names)
    assert sig.shape == (filtered.n_vars, 11)
    assert np.isfinite(sig.to_numpy()).all() and (sig.to_numpy() > 0).all()
    posterior = ad.read_h5ad(reference_run / "reference_posterior.h5ad", backed="r")
    assert list(posterior.uns["mod"]["factor_names"]) == LN_CELL_TYPES
    assert posterior.uns["mod"]["post_sample_means"] is not None
