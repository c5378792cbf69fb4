"""Checks of the benchmark's own pieces (run: .venv/bin/python -m pytest benchmarks/test_benchmarks.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import evaluate, nnls_abundance, per_type_pearson  # noqa: E402
from simulate import simulate_composition, split_reference, spots_from_cells  # noqa: E402

TYPES = [f"t{i}" for i in range(11)]


def _toy_reference(n_per_type: int = 6, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels = np.repeat(TYPES, n_per_type)
    X = rng.poisson(3, size=(len(labels), n_genes)).astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"cell_type": labels, "sample": "s"},
                                                            index=[f"c{i}" for i in range(len(labels))]))


def test_per_type_pearson_aligns_spots_and_flags_constant_types():
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.gamma(2, size=(30, 3)), index=range(30), columns=["x", "y", "z"])
    b = a.copy()
    b["y"] = -b["y"]
    b["z"] = 1.0
    b.index = [str(i) for i in b.index]  # a CSV read back: string spot names
    b = b.iloc[::-1].iloc[5:]  # other order, and 5 spots fewer
    r = per_type_pearson(a, b)
    assert list(r) == ["x", "y", "z"]
    assert np.isclose(r["x"], 1) and np.isclose(r["y"], -1) and np.isnan(r["z"])
    c = a.iloc[::-1].copy()
    c["x"] = rng.permutation(c["x"].to_numpy())
    assert per_type_pearson(a, c)["x"] < 0.9 and np.isclose(per_type_pearson(a, c)["y"], 1)


def test_split_is_stratified_disjoint_and_seeded():
    ref = _toy_reference()
    gen, rest = split_reference(ref, "cell_type", seed=1)
    assert set(gen.obs_names).isdisjoint(rest.obs_names)
    assert (gen.obs["cell_type"].value_counts() == 3).all() and (rest.obs["cell_type"].value_counts() == 3).all()
    assert list(split_reference(ref, "cell_type", seed=1)[0].obs_names) == list(gen.obs_names)
    assert list(split_reference(ref, "cell_type", seed=2)[0].obs_names) != list(gen.obs_names)


def test_composition_follows_the_design():
    comp = simulate_composition(TYPES, 400, seed=0)
    n = comp.counts.to_numpy()
    totals = n.sum(axis=1)
    assert totals.min() >= 1 and totals.max() <= 30
    assert comp.coords.shape == (400, 2)
    assert len(comp.design["high_density_types"]) == 2  # 20% of 11
    assert len(comp.design["uniform_types"]) == 3
    # zonal types are absent from much of the grid, so presence/absence is informative
    zonal = list(comp.design["zonal_types"])
    assert (comp.counts[zonal] == 0).mean().mean() > 0.3
    again = simulate_composition(TYPES, 400, seed=0)
    pd.testing.assert_frame_equal(comp.counts, again.counts)


def test_spot_counts_are_sums_of_cells():
    ref = _toy_reference()
    comp = simulate_composition(TYPES, 30, seed=0)
    Y = spots_from_cells(ref, "cell_type", comp, seed=0)
    # every cell has counts; a spot with k cells has roughly k times a cell's total
    per_cell = float(ref.X.sum(axis=1).mean())
    ratio = np.asarray(Y.sum(axis=1)).ravel() / (comp.counts.sum(axis=1).to_numpy() * per_cell)
    assert np.allclose(ratio, 1, atol=0.2)


def test_metrics_perfect_and_nnls_recovers_noiseless_mixtures():
    rng = np.random.default_rng(0)
    comp = simulate_composition(TYPES, 50, seed=0)
    truth = comp.counts
    perfect = evaluate(truth, truth * 3.0)["overall"]
    assert perfect["prop_rmse"] < 1e-12 and perfect["aupr"] > 1 - 1e-9 and perfect["abundance_pearson"] > 0.999
    sig = pd.DataFrame(rng.gamma(1, 1, size=(60, len(TYPES))), index=[f"g{i}" for i in range(60)], columns=TYPES)
    Y = truth.to_numpy(float) @ sig.to_numpy().T
    est = nnls_abundance(sp.csr_matrix(Y), sig.index, sig, truth.index)
    assert np.allclose(est.to_numpy(), truth.to_numpy(), atol=1e-6)


def test_her2st_auroc_and_region_means():
    from her2st import auroc, expected_pair_aurocs, proportions, region_means, to_common

    spots = [f"s{i}" for i in range(8)]
    regions = pd.Series(["invasive cancer"] * 3 + ["connective tissue"] * 3 + ["undetermined"] * 2, index=spots)
    table = pd.DataFrame({
        "Cancer Epithelial": [9, 8, 7, 1, 0, 2, 3, 1],
        "Normal Epithelial": [0, 1, 0, 0, 0, 0, 0, 0],
        "CAFs": [1, 0, 2, 9, 5, 1, 3, 2],  # 1 in a connective spot ranks below 2 and 3 elsewhere
        "Plasmablasts": [1, 1, 1, 1, 1, 1, 1, 1],
    }, index=spots, dtype=float)
    common = to_common(table)
    assert sorted(common.columns) == ["CAFs", "Epithelial", "Plasma Cells"]
    assert common.loc["s1", "Epithelial"] == 9
    got = expected_pair_aurocs(common, regions)
    assert got["invasive cancer / Epithelial"] == 1.0
    # CAFs in connective tissue: 15 pairs, connective spot s5 (1) beats 1 of 5 others, s3 and s4 beat all
    assert abs(got["connective tissue / CAFs"] - (5 + 5 + 1.5) / 15) < 1e-12
    assert "immune infiltrate / T-cells" not in got  # a type the table does not have is skipped
    assert np.isnan(auroc(common["CAFs"], regions == "breast glands"))  # empty region
    assert auroc(-common["Epithelial"], regions == "invasive cancer") == 0.0  # the score's direction matters
    props = proportions(common)
    assert np.allclose(props.sum(axis=1), 1)
    means = region_means(props, regions)
    assert list(means.index) == ["invasive cancer", "connective tissue", "undetermined"]
    assert abs(means.loc["invasive cancer", "Epithelial"] - props.loc[["s0", "s1", "s2"], "Epithelial"].mean()) < 1e-12
