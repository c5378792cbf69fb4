"""read-visium: every loader on every Space Ranger fixture, MT handling and QC numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import FIXTURES, HIPPOCAMPUS, LN_LIBRARY, LYMPH_NODE, invoke, no_staging, require, run_c2l
from c2lnf.read_visium import find_matrix, load_section, read_10x_h5, read_positions


def positions(spatial: Path) -> pd.DataFrame:
    """The positions file as written by Space Ranger, read independently of the package."""
    if (spatial / "tissue_positions.csv").exists():
        return pd.read_csv(spatial / "tissue_positions.csv", index_col=0)
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    return pd.read_csv(spatial / "tissue_positions_list.csv", header=None, names=cols, index_col=0)


def check_spatial(adata: ad.AnnData, spatial: Path, library_id: str, sample: str, images: set[str]) -> None:
    """obsm['spatial'] = (pxl_col, pxl_row) of the positions file; uns['spatial'][library_id]; obs['sample']."""
    pos = positions(spatial)
    picks = [0, adata.n_obs // 2, adata.n_obs - 1]
    for i in picks:
        bc = adata.obs_names[i]
        x, y = adata.obsm["spatial"][i]
        assert x == pytest.approx(pos.loc[bc, "pxl_col_in_fullres"]), bc
        assert y == pytest.approx(pos.loc[bc, "pxl_row_in_fullres"]), bc
        assert adata.obs["array_row"].iloc[i] == pos.loc[bc, "array_row"]
        assert adata.obs["array_col"].iloc[i] == pos.loc[bc, "array_col"]
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    assert list(adata.uns["spatial"]) == [library_id]
    lib = adata.uns["spatial"][library_id]
    assert set(lib["images"]) == images
    for img in lib["images"].values():
        assert img.ndim in (2, 3) and img.shape[0] > 10
    expected_sf = json.loads((spatial / "scalefactors_json.json").read_text())
    for key in ("spot_diameter_fullres", "tissue_lowres_scalef"):
        assert lib["scalefactors"][key] == pytest.approx(expected_sf[key])
    assert (adata.obs["sample"] == sample).all()
    assert (adata.obs["library_id"] == library_id).all()
    assert adata.uns["c2l_sample"]["sample"] == sample


def is_ensembl(names) -> bool:
    return all(str(n).startswith("ENS") for n in names)


# ---------------------------------------------------------------- the real fixtures


def test_human_sr1_h5_ensembl_ids():
    folder = require(FIXTURES / "human_sr1_100x100")
    adata, qc = load_section("sr1", folder)
    assert adata.shape == (100, 100)
    assert is_ensembl(adata.var_names)
    assert "SYMBOL" in adata.var and adata.var["SYMBOL"].notna().all()
    assert adata.var_names[0] == "ENSG00000243485"
    check_spatial(adata, folder / "spatial", "custom", "sr1", {"hires", "lowres"})
    assert qc["n_spots"] == 100 and qc["n_genes"] == 100 and qc["total_umis"] == adata.X.sum()


def test_mouse_brain_without_library_id_falls_back_to_sample():
    folder = require(FIXTURES / "mouse_brain_100genes")
    with h5py.File(folder / "filtered_feature_bc_matrix.h5") as f:
        assert "library_ids" not in f.attrs  # the point of this fixture
        n_spots = int(f["matrix"]["shape"][1])
    # only 100 genes: some spots have no counts over them
    adata, qc = load_section("brain", folder, drop_empty_spots=True)
    assert adata.n_vars == 100 and 2680 <= adata.n_obs < n_spots == 2695
    assert is_ensembl(adata.var_names)
    assert adata.var.loc["ENSMUSG00000051951", "SYMBOL"] == "Xkr4"
    check_spatial(adata, folder / "spatial", "brain", "brain", {"hires", "lowres"})


@pytest.fixture(scope="module")
def sr3():
    folder = require(FIXTURES / "mouse_cytassist_sr3")
    return folder, load_section("placenta", folder)


def test_cytassist_sr3_h5_positions_with_header_lowres_only(sr3):
    folder, (adata, qc) = sr3
    assert find_matrix(folder, "placenta")[0].name == "filtered_feature_bc_matrix.h5"
    assert adata.shape == (2898, 19465)
    assert is_ensembl(adata.var_names)
    assert adata.var.loc["ENSMUSG00000051951", "SYMBOL"] == "Xkr4"
    check_spatial(adata, folder / "spatial", "Placenta_S3", "placenta", {"lowres"})
    assert (adata.obs["in_tissue"] == 1).all()


def test_cytassist_sr3_mtx_folder_matches_h5(sr3, tmp_path):
    folder, (from_h5, _) = sr3
    only_mtx = tmp_path / "sr3_mtx"
    only_mtx.mkdir()
    (only_mtx / "filtered_feature_bc_matrix").symlink_to(folder / "filtered_feature_bc_matrix")
    (only_mtx / "spatial").symlink_to(folder / "spatial")
    assert find_matrix(only_mtx, "placenta")[0].name == "filtered_feature_bc_matrix"
    adata, _ = load_section("placenta_mtx", only_mtx)
    assert adata.shape == from_h5.shape
    assert list(adata.var_names) == list(from_h5.var_names)
    assert list(adata.var["SYMBOL"]) == list(from_h5.var["SYMBOL"])
    from_h5 = from_h5[adata.obs_names]
    assert (adata.X != from_h5.X).nnz == 0
    # the mtx folder records no library id: the sample id is used
    check_spatial(adata, folder / "spatial", "placenta_mtx", "placenta_mtx", {"lowres"})


def test_raw_mtx_uncompressed_keeps_in_tissue_spots():
    folder = require(FIXTURES / "mouse_brain_mtx_50x50")
    outs = folder / "outs"
    matrix, is_raw = find_matrix(folder, "mtx")  # the parent of outs/ is accepted
    assert matrix == outs / "raw_feature_bc_matrix" and is_raw
    pos = positions(outs / "spatial")
    barcodes = pd.read_csv(outs / "raw_feature_bc_matrix" / "barcodes.tsv", header=None)[0]
    in_tissue = set(pos.index[pos["in_tissue"] == 1]) & set(barcodes)
    adata, _ = load_section("mtx", folder)
    assert adata.n_vars == 50 and adata.n_obs == len(in_tissue) == 22
    assert set(adata.obs_names) == in_tissue
    assert (adata.obs["in_tissue"] == 1).all()
    assert is_ensembl(adata.var_names) and adata.var["SYMBOL"].iloc[0] == "Xkr4"
    check_spatial(adata, outs / "spatial", "mtx", "mtx", {"lowres"})


def test_probe_level_h5_is_summed_per_gene():
    path = require(FIXTURES / "sr2_raw_probe_matrix" / "raw_probe_bc_matrix.h5")
    with h5py.File(path) as f:
        m = f["matrix"]
        shape = tuple(int(x) for x in m["shape"][:])
        probes = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape).T.tocsr()
        gene_of_probe = np.array([g.decode() for g in m["features"]["gene_id"][:]])
    adata, library_id = read_10x_h5(path, "probes")
    genes = pd.unique(gene_of_probe)
    assert shape == (1000, 4987)
    assert adata.shape == (4987, len(genes)) == (4987, 988)
    assert list(adata.var_names) == list(genes)
    # totals preserved, overall, per spot and per gene
    assert adata.X.sum() == probes.sum()
    np.testing.assert_array_equal(np.asarray(adata.X.sum(axis=1)).ravel(), np.asarray(probes.sum(axis=1)).ravel())
    multi = pd.Series(gene_of_probe).value_counts()
    gene = multi.index[0]
    assert multi.iloc[0] == 3
    expected = np.asarray(probes[:, np.flatnonzero(gene_of_probe == gene)].sum(axis=1)).ravel()
    np.testing.assert_array_equal(adata[:, gene].X.toarray().ravel(), expected)


def test_lymph_node_symbols():
    folder = require(LYMPH_NODE / "visium")
    adata, qc = load_section("ln", folder, obs={"donor": "d1"})
    assert adata.shape == (1000, 2000)
    assert not is_ensembl(adata.var_names[:50])
    assert list(adata.var_names) == list(adata.var["SYMBOL"])
    check_spatial(adata, folder / "spatial", LN_LIBRARY, "ln", {"hires", "lowres"})
    assert (adata.obs["donor"] == "d1").all()
    assert adata.obsm["MT"].shape == (1000, 0) and qc["n_mt_genes"] == 0 and qc["mean_mt_fraction"] == 0


def test_mouse_hippocampus():
    folder = require(HIPPOCAMPUS / "visium")
    adata, qc = load_section("hippo", folder)
    assert adata.shape == (313, 276)
    assert "Rpl7" in adata.var_names
    check_spatial(adata, folder / "spatial", "mouse_hippocampus_subset", "hippo", {"hires", "lowres"})
    assert qc["total_umis"] == pytest.approx(float(adata.X.sum()))


def test_read_visium_cli_writes_h5ad_and_qc(tmp_path):
    folder = require(FIXTURES / "mouse_brain_mtx_50x50")
    out = tmp_path / "out"
    invoke("read-visium", "--sample", "mtx", "--spaceranger-dir", folder, "--obs", "donor=d8", "--outdir", out)
    assert sorted(p.name for p in out.iterdir()) == ["mtx.h5ad", "mtx.qc.csv"]
    adata = ad.read_h5ad(out / "mtx.h5ad")
    assert adata.shape == (22, 50) and "spatial" in adata.obsm and "MT" in adata.obsm
    assert (adata.obs["donor"] == "d8").all() and adata.uns["c2l_sample"] == {"sample": "mtx", "donor": "d8"}
    qc = pd.read_csv(out / "mtx.qc.csv")
    assert qc.loc[0, "sample"] == "mtx" and qc.loc[0, "n_spots"] == 22 and qc.loc[0, "total_umis"] == 622


def test_read_visium_subprocess(tmp_path):
    folder = require(FIXTURES / "human_sr1_100x100")
    proc = run_c2l("read-visium", "--sample", "sr1", "--spaceranger-dir", folder, "--outdir", tmp_path)
    assert "sample sr1: 100 spots x 100 genes" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr1.h5ad", "sr1.qc.csv"]
    no_staging(tmp_path)


def test_positions_formats_agree():
    """tissue_positions_list.csv (SR1, no header) and tissue_positions.csv (SR >= 2) give the same table."""
    old = require(FIXTURES / "mouse_brain_100genes" / "spatial")
    new = require(FIXTURES / "mouse_cytassist_sr3" / "spatial")
    a, b = read_positions(old, "old"), read_positions(new, "new")
    assert list(a.columns) == list(b.columns)
    assert a.index.name is None or a.index.name == "barcode"
    assert len(a) == 4992 and len(b) > 4000


# ---------------------------------------------------------------- MT genes (synthetic: the test sets have none)


def write_10x_h5(path: Path, X: np.ndarray, barcodes, ids, names, library_id: str | None = None) -> None:
    """A minimal Space Ranger >= 1 feature-barcode HDF5 (spots x features dense X)."""
    csc = sp.csc_matrix(np.asarray(X).T)  # features x barcodes, stored column-wise per barcode
    with h5py.File(path, "w") as f:
        if library_id is not None:
            f.attrs["library_ids"] = np.array([library_id.encode()])
        m = f.create_group("matrix")
        m["data"] = csc.data.astype(np.int32)
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        feats = m.create_group("features")
        feats["id"] = np.array([i.encode() for i in ids])
        feats["name"] = np.array([n.encode() for n in names])
        feats["feature_type"] = np.array([b"Gene Expression"] * len(ids))


def synthetic_counts(n_spots: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(n_spots, n_genes)).astype(np.float32)
    X[:, 0] += 1  # no empty spot
    return X


def synthetic_spaceranger(folder: Path, symbols: list[str], n_spots: int = 40, library_id: str | None = "lib1") -> np.ndarray:
    """A Space Ranger folder with an h5 (Ensembl-like ids, the given symbols) and real SR1 spatial files."""
    src = require(FIXTURES / "human_sr1_100x100" / "spatial")
    folder.mkdir(parents=True)
    shutil.copytree(src, folder / "spatial")
    barcodes = pd.read_csv(src / "tissue_positions_list.csv", header=None)[0].tolist()[:n_spots]
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    X = synthetic_counts(n_spots, len(symbols))
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", X, barcodes, ids, symbols, library_id)
    return X


def test_human_mt_genes_moved_from_spaceranger_h5(tmp_path):
    symbols = ["CD3E", "MT-CO1", "MS4A1", "MT-ND1", "MTOR", "JCHAIN", "MT-ATP6", "VWF"]
    X = synthetic_spaceranger(tmp_path / "sr", symbols)
    adata, qc = load_section("human_mt", tmp_path / "sr")
    mt = [i for i, s in enumerate(symbols) if s.startswith("MT-")]
    assert adata.n_vars == 5 and is_ensembl(adata.var_names)
    assert "MTOR" in list(adata.var["SYMBOL"])  # MT- prefix, not MT
    assert adata.uns["MT_genes"] == ["MT-CO1", "MT-ND1", "MT-ATP6"]
    np.testing.assert_array_equal(adata.obsm["MT"], X[:, mt])
    # counts preserved: what stayed in X plus what went to obsm['MT'] is the original total, per spot
    np.testing.assert_allclose(np.asarray(adata.X.sum(axis=1)).ravel() + adata.obsm["MT"].sum(axis=1), X.sum(axis=1))
    assert qc["n_mt_genes"] == 3
    assert qc["total_umis"] == pytest.approx(X.sum())
    assert qc["mean_mt_fraction"] == pytest.approx(np.mean(X[:, mt].sum(axis=1) / X.sum(axis=1)), rel=1e-5)
    assert list(adata.uns["spatial"]) == ["lib1"]


def test_mouse_mt_genes_moved_from_h5ad(tmp_path):
    symbols = ["Xkr4", "mt-Co1", "Rp1", "mt-Nd1", "Sox17", "Mtor"]
    X = synthetic_counts(30, len(symbols), seed=1)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=[f"s{i}" for i in range(30)]),
                       var=pd.DataFrame(index=symbols))
    adata.obsm["spatial"] = np.random.default_rng(0).uniform(0, 1000, size=(30, 2))
    path = tmp_path / "mouse.h5ad"
    adata.write_h5ad(path)
    out, qc = load_section("mouse_mt", h5ad=path)
    assert list(out.var_names) == ["Xkr4", "Rp1", "Sox17", "Mtor"]
    assert out.uns["MT_genes"] == ["mt-Co1", "mt-Nd1"]
    assert out.X.sum() + out.obsm["MT"].sum() == pytest.approx(X.sum())
    frac = X[:, [1, 3]].sum(axis=1) / X.sum(axis=1)
    assert qc["mean_mt_fraction"] == pytest.approx(frac.mean(), rel=1e-5)
    assert qc["median_umis_per_spot"] == pytest.approx(np.median(X.sum(axis=1)))
    # an h5ad section without uns['spatial'] gets an empty entry under the sample id
    assert list(out.uns["spatial"]) == ["mouse_mt"]


def test_no_mt_genes_leaves_counts_untouched(tmp_path):
    symbols = ["A1", "B2", "C3"]
    X = synthetic_spaceranger(tmp_path / "sr", symbols, library_id=None)
    adata, qc = load_section("plain", tmp_path / "sr")
    assert adata.obsm["MT"].shape == (40, 0)
    np.testing.assert_array_equal(adata.X.toarray(), X)
    assert qc["mean_mt_fraction"] == 0 and qc["n_mt_genes"] == 0
    assert list(adata.uns["spatial"]) == ["plain"]
