"""The lymph node test set rebuilt from upstream files equals the shared copy (needs ../shared/testdata)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))

import build_testdata as testdata  # noqa: E402
from c2lnf.errors import C2LError  # noqa: E402

TESTDATA = Path(os.environ.get("C2L_TESTDATA", REPO.parent / "shared" / "testdata"))
SHARED_LN = TESTDATA / "lymph_node"
UPSTREAM_DIR = TESTDATA / "upstream" / "spacexr"

needs_testdata = pytest.mark.skipif(
    not (SHARED_LN.is_dir() and UPSTREAM_DIR.is_dir()),
    reason=f"shared test data not found at {TESTDATA} (set C2L_TESTDATA)",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if not (SHARED_LN.is_dir() and UPSTREAM_DIR.is_dir()):
        pytest.skip(f"shared test data not found at {TESTDATA} (set C2L_TESTDATA)")
    out = tmp_path_factory.mktemp("build")
    files = testdata.fetch_upstream(out / "upstream", [UPSTREAM_DIR], allow_download=False)
    assert not (out / "upstream").exists(), "local copies must be used, nothing downloaded"
    return testdata.build_lymph_node(files, out)


def _read_10x(path: Path) -> dict:
    import h5py
    import scipy.sparse as sp

    with h5py.File(path, "r") as f:
        m = f["matrix"]
        shape = tuple(m["shape"][:])
        X = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape)
        return {
            "attrs": {k: f.attrs[k] for k in f.attrs},
            "barcodes": m["barcodes"][:],
            "X": X,
            "dtypes": {k: m[k].dtype for k in ("data", "indices", "indptr", "shape", "barcodes")},
            "features": {k: m["features"][k][:] for k in m["features"]},
        }


def _positions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, index_col=0)


@needs_testdata
def test_layout(built: Path):
    expected = sorted(p.relative_to(SHARED_LN) for p in SHARED_LN.rglob("*"))
    got = sorted(p.relative_to(built) for p in built.rglob("*"))
    assert got == expected
    assert not any(p.name.startswith(".lymph_node") for p in built.parent.iterdir())  # no temp dirs left


@needs_testdata
def test_counts_h5_equal(built: Path):
    got = _read_10x(built / "visium" / "filtered_feature_bc_matrix.h5")
    exp = _read_10x(SHARED_LN / "visium" / "filtered_feature_bc_matrix.h5")
    assert list(got["barcodes"]) == list(exp["barcodes"])
    assert got["features"].keys() == exp["features"].keys()
    for k in exp["features"]:
        assert list(got["features"][k]) == list(exp["features"][k]), k
    assert got["X"].shape == exp["X"].shape == (2000, 1000)
    assert (got["X"] != exp["X"]).nnz == 0
    for k in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(got["X"], k), getattr(exp["X"], k)), k
    assert got["dtypes"] == exp["dtypes"]
    assert got["attrs"].keys() == exp["attrs"].keys()
    assert list(got["attrs"]["library_ids"]) == [b"V1_Human_Lymph_Node_subset"]
    for k in exp["attrs"]:
        assert np.array_equal(np.asarray(got["attrs"][k]), np.asarray(exp["attrs"][k])), k


@needs_testdata
def test_positions_equal(built: Path):
    got = _positions(built / "visium" / "spatial" / "tissue_positions_list.csv")
    exp = _positions(SHARED_LN / "visium" / "spatial" / "tissue_positions_list.csv")
    assert list(got.index) == list(exp.index)
    assert len(got) == 4992 and int(got[1].sum()) == 1000
    assert np.array_equal(got[[1, 2, 3]].to_numpy(), exp[[1, 2, 3]].to_numpy())
    np.testing.assert_allclose(got[[4, 5]].to_numpy(float), exp[[4, 5]].to_numpy(float), rtol=0, atol=1e-6)


@needs_testdata
def test_scalefactors_and_images(built: Path):
    from PIL import Image

    sp_got, sp_exp = built / "visium" / "spatial", SHARED_LN / "visium" / "spatial"
    got = json.loads((sp_got / "scalefactors_json.json").read_text())
    exp = json.loads((sp_exp / "scalefactors_json.json").read_text())
    assert got.keys() == exp.keys()
    for k in exp:
        assert got[k] == pytest.approx(exp[k], rel=1e-6), k
    for name in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        a, b = Image.open(sp_got / name), Image.open(sp_exp / name)
        assert (a.size, a.mode) == (b.size, b.mode)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert "PLACEHOLDER" in (built / "visium" / "DERIVED.txt").read_text()


@needs_testdata
def test_reference_equal(built: Path):
    import anndata as ad

    got = ad.read_h5ad(built / "reference.h5ad")
    exp = ad.read_h5ad(SHARED_LN / "reference.h5ad")
    assert got.shape == exp.shape == (330, 10237)
    assert list(got.obs_names) == list(exp.obs_names)
    assert list(got.var_names) == list(exp.var_names)
    assert got.X.dtype == exp.X.dtype
    assert (got.X != exp.X).nnz == 0
    pd.testing.assert_frame_equal(got.obs, exp.obs)
    assert got.obs["sample"].nunique() == 22
    assert got.obs["cell_type"].value_counts().eq(30).all()


@needs_testdata
def test_rebuild_replaces_existing(built: Path, tmp_path: Path):
    files = testdata.fetch_upstream(tmp_path / "upstream", [UPSTREAM_DIR], allow_download=False)
    (tmp_path / "lymph_node").mkdir()
    (tmp_path / "lymph_node" / "stale.txt").write_text("old")
    out = testdata.build_lymph_node(files, tmp_path)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lymph_node"]


def test_no_download_without_local_copy(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("C2L_TESTDATA", str(tmp_path / "nowhere"))
    with pytest.raises(C2LError, match="downloads are disabled"):
        testdata.fetch_upstream(tmp_path / "dest", [tmp_path / "empty"], allow_download=False)
    assert not (tmp_path / "dest").exists()


def _small_file(tmp_path: Path) -> Path:
    src = TESTDATA / "upstream" / "spacexr" / "SpatialRNA" / "VisiumLymphVignette" / "coords.rds"
    small = tmp_path / "src" / "coords.rds"
    small.parent.mkdir()
    if src.is_file():
        shutil.copyfile(src, small)
    else:  # the checksum logic does not need the real file
        small.write_bytes(b"not the upstream file\n")
    return small


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path: Path, monkeypatch):
    small = _small_file(tmp_path)
    real = hashlib.sha256(small.read_bytes()).hexdigest()
    fake = "0" * 64
    entry = testdata.UpstreamFile("coords.rds", ("SpatialRNA/VisiumLymphVignette/coords.rds",), small.as_uri(), fake)
    monkeypatch.setattr(testdata, "UPSTREAM", {"coords.rds": entry})
    monkeypatch.setenv("C2L_TESTDATA", str(tmp_path / "nowhere"))
    dest = tmp_path / "dest"
    with pytest.raises(testdata.ChecksumError) as err:
        testdata.fetch_upstream(dest, [], allow_download=True)
    msg = str(err.value)
    assert "coords.rds" in msg and fake in msg and real in msg
    assert not dest.exists() or [p for p in dest.rglob("*") if p.is_file()] == []


def test_download_verifies_and_renames(tmp_path: Path, monkeypatch):
    small = _small_file(tmp_path)
    real = hashlib.sha256(small.read_bytes()).hexdigest()
    entry = testdata.UpstreamFile("coords.rds", ("SpatialRNA/VisiumLymphVignette/coords.rds",), small.as_uri(), real)
    monkeypatch.setattr(testdata, "UPSTREAM", {"coords.rds": entry})
    monkeypatch.setenv("C2L_TESTDATA", str(tmp_path / "nowhere"))
    dest = tmp_path / "dest"
    got = testdata.fetch_upstream(dest, [], allow_download=True)
    assert got["coords.rds"] == dest / entry.relpath
    assert [p.name for p in dest.rglob("*") if p.is_file()] == ["coords.rds"]
    # a second call finds the earlier download instead of fetching again
    monkeypatch.setattr(testdata, "download", lambda *a, **k: pytest.fail("downloaded twice"))
    assert testdata.fetch_upstream(dest, [], allow_download=True) == got


def test_local_copy_with_wrong_checksum_is_ignored(tmp_path: Path, monkeypatch):
    small = _small_file(tmp_path)
    local = tmp_path / "local"
    (local / "SpatialRNA" / "VisiumLymphVignette").mkdir(parents=True)
    shutil.copyfile(small, local / "SpatialRNA" / "VisiumLymphVignette" / "coords.rds")
    rel = ("SpatialRNA/VisiumLymphVignette/coords.rds",)
    entry = testdata.UpstreamFile("coords.rds", rel, small.as_uri(), "f" * 64)
    monkeypatch.setattr(testdata, "UPSTREAM", {"coords.rds": entry})
    monkeypatch.setenv("C2L_TESTDATA", str(tmp_path / "nowhere"))
    with pytest.raises(C2LError, match="sha256"):
        testdata.fetch_upstream(tmp_path / "dest", [local], allow_download=False)


def test_failed_download_is_clear_and_leaves_nothing(tmp_path: Path):
    url = (tmp_path / "missing.rds").as_uri()
    target = tmp_path / "dest" / "missing.rds"
    with pytest.raises(C2LError, match="could not download missing.rds"):
        testdata.download(url, target, "0" * 64)
    assert [p for p in (tmp_path / "dest").rglob("*") if p.is_file()] == []
