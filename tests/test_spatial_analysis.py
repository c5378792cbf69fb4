"""Tissue regions (Leiden on q05 abundances) and co-location (NMF) on mapped sections with known zones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))

from c2lnf import colocation, regions  # noqa: E402

TYPES = ["B", "T", "Endo", "Fib", "Mac", "Epi"]
# three zones, each dominated by two types that co-locate
ZONES = {0: ("B", "T"), 1: ("Endo", "Fib"), 2: ("Mac", "Epi")}


def mapped_section(path: Path, sample: str, n: int, seed: int) -> pd.Series:
    """A MAP_CELLS-like h5ad: q05 abundances in obsm (zone types high), coordinates; returns the true zones."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.array([(i % side, i // side) for i in range(n)], dtype=float) * 100
    zone = np.minimum((xy[:, 0] / (side * 100) * 3).astype(int), 2)
    q05 = rng.gamma(1.0, 0.3, size=(n, len(TYPES)))
    for z, pair in ZONES.items():
        for t in pair:
            q05[zone == z, TYPES.index(t)] += rng.gamma(6.0, 1.0, size=(zone == z).sum())
    barcodes = [f"{sample}-{i}" for i in range(n)]
    adata = ad.AnnData(X=np.ones((n, 3), dtype=np.float32), obs=pd.DataFrame(index=barcodes))
    adata.obsm["spatial"] = xy
    adata.obsm["q05_cell_abundance_w_sf"] = pd.DataFrame(q05, index=barcodes,
                                                         columns=[f"q05cell_abundance_w_sf_{t}" for t in TYPES])
    adata.uns["cell2location"] = {"factor_names": TYPES}
    adata.write_h5ad(path)
    return pd.Series(zone, index=[f"{sample}:{b}" for b in barcodes])


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    d = tmp_path_factory.mktemp("mapped")
    truth = pd.concat([mapped_section(d / "s1.cell2location.h5ad", "s1", 300, 1),
                       mapped_section(d / "s2.cell2location.h5ad", "s2", 250, 2)])
    return {"s1": d / "s1.cell2location.h5ad", "s2": d / "s2.cell2location.h5ad"}, truth


def test_regions_recover_the_zones(sections, tmp_path):
    from sklearn.metrics import homogeneity_score

    paths, truth = sections
    found = regions.run(paths, n_neighbors=15, resolution=0.3, seed=0, outdir=tmp_path)
    # every region lies within one zone (Leiden on abundances may split a zone by cell density, as in the tutorial)
    assert homogeneity_score(truth.loc[found.index], found) > 0.9
    assert 3 <= found.nunique() <= 8
    table = pd.read_csv(tmp_path / "regions.csv")
    assert list(table.columns) == ["sample", "barcode", "region"]
    assert len(table) == 550 and set(table["sample"]) == {"s1", "s2"}
    comp = pd.read_csv(tmp_path / "regions_composition.csv", index_col=0)
    assert comp["n_spots"].sum() == 550
    props = comp[[f"proportion_{t}" for t in TYPES]]
    assert np.allclose(props.sum(axis=1), 1.0)
    # each region is dominated by the two types of one zone
    for _, row in props.iterrows():
        top2 = set(row.sort_values(ascending=False).index[:2].str.replace("proportion_", ""))
        assert top2 in [set(p) for p in ZONES.values()], row
    for name in ("regions_composition.png", "s1.regions.png", "s2.regions.png"):
        assert (tmp_path / name).stat().st_size > 5000


def test_regions_are_reproducible(sections, tmp_path):
    paths, _ = sections
    a = regions.run(paths, 15, 1.1, 0, tmp_path / "a")
    b = regions.run(paths, 15, 1.1, 0, tmp_path / "b")
    assert a.equals(b)


def test_colocation_finds_the_pairs(sections, tmp_path):
    paths, _ = sections
    colocation.run(paths, [3, 4], n_restarts=2, n_iter=2000, seed=0, outdir=tmp_path)
    for k in (3, 4):
        d = tmp_path / f"n_fact{k}"
        fr = pd.read_csv(d / "cell_type_fractions.csv", index_col=0)
        assert fr.shape == (len(TYPES), k)
        lf = pd.read_csv(d / "location_factors.csv", index_col=0)
        assert len(lf) == 550 and {"sample", "barcode"} <= set(lf.columns)
        for name in ("dotplot.png", "s1.factors.png", "s2.factors.png", "factor_markers.csv"):
            assert (d / name).stat().st_size > 200, name
    # with 3 factors, each zone's two types share their factor
    fr = pd.read_csv(tmp_path / "n_fact3" / "cell_type_fractions.csv", index_col=0)
    home = fr.idxmax(axis=1)
    for a, b in ZONES.values():
        assert home[a] == home[b], home
    assert home.nunique() == 3


def test_colocation_rejects_bad_factor_counts(sections, tmp_path):
    paths, _ = sections
    res = subprocess.run([sys.executable, str(REPO / "bin" / "c2l"), "colocation",
                          *[a for s, p in paths.items() for a in ("--section", f"{s}={p}")],
                          "--n-factors", "1", "--outdir", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "field 'colocation_factors'" in res.stderr and "1 factors" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
