"""The analytic posterior export (c2lnf.training.posterior) against the sampled one: the same model, both exports."""

from __future__ import annotations

import numpy as np

from c2lnf.training.stopping import Plan


def test_analytic_export_matches_the_sampled_one(ln_halves, signatures_csv):
    """Same trained model, both exports (left half of the lymph node test data, 300 epochs).

    Means: per cell type Pearson r >= 0.999. q05/q95/stds: the analytic values are exact, the sampled ones carry
    Monte Carlo noise (a 5 % quantile of 1000 draws); so the analytic export must agree with a 1000-sample export at
    least as well as a second 1000-sample export (another seed) does, and at r >= 0.998 (q05; 0.995 for q95, 0.98
    for stds).
    """
    import anndata as ad
    import pandas as pd
    import pyro

    from c2lnf.map_cells import abundance_table, map_cells, read_signatures
    from c2lnf.runtime import seed_everything
    from c2lnf.training.posterior import export_posterior

    seed_everything(0)
    section = ad.read_h5ad(ln_halves["ln_left"])
    plan = Plan(max_epochs=300, lr=0.03, lr_min=0.002).fixed()
    trained, combined = map_cells({"ln": section}, read_signatures(signatures_csv), 30.0, {"ln": 20.0}, plan, "cpu",
                                  fast=True, analytic=True, num_samples=1000)
    assert trained.export.startswith("analytic")
    sampled = []
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        table, how = export_posterior(trained.model, combined.copy(), False, 1000, combined.n_obs, "cpu")
        assert how == "sampled (1000 posterior samples)"
        sampled.append(table)

    def per_type_r(x, y, stat):
        a, b = abundance_table(x, stat), abundance_table(y, stat)
        assert list(a.columns) == list(b.columns) and a.shape == b.shape
        return pd.Series({c: np.corrcoef(a[c], b[c])[0, 1] for c in a.columns})

    means = per_type_r(combined, sampled[0], "means")
    assert (means >= 0.999).all(), means.round(5).to_dict()
    for stat in ("q05", "q95", "stds"):
        exact_vs_sampled = per_type_r(combined, sampled[0], stat)
        sampled_vs_sampled = per_type_r(sampled[1], sampled[0], stat)
        floor = {"q05": 0.998, "q95": 0.995, "stds": 0.98}[stat]  # the upper tail and spread are noisier to sample
        assert (exact_vs_sampled >= floor).all(), (stat, exact_vs_sampled.round(5).to_dict())
        assert exact_vs_sampled.median() >= sampled_vs_sampled.median(), (stat, exact_vs_sampled.median(),
                                                                            sampled_vs_sampled.median())
    # every site's mean, also the global ones (m_g) and the deterministic one (u_sf_mRNA_factors): within five
    # standard errors of the 1000-sample mean
    means_a, means_s = combined.uns["mod"]["post_sample_means"], sampled[0].uns["mod"]["post_sample_means"]
    stds_a = combined.uns["mod"]["post_sample_stds"]
    assert set(means_a) == set(means_s)
    for site in ("m_g", "detection_y_s", "w_sf"):
        a, s, sd = (np.asarray(x[site], dtype=float) for x in (means_a, means_s, stds_a))
        assert a.shape == s.shape
        assert (np.abs(a - s) <= 5 * sd / np.sqrt(1000) + 1e-6).mean() > 0.999, site
    a, s = (np.asarray(x["u_sf_mRNA_factors"], dtype=float).ravel() for x in (means_a, means_s))
    assert np.corrcoef(a, s)[0, 1] > 0.999
