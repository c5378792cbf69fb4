"""read-visium on a Visium HD layout (Space Ranger >= 3): binned_outputs/square_008um|square_016um with a
feature-barcode HDF5, spatial/tissue_positions.parquet and spatial/scalefactors_json.json, written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import assert_failed_cleanly, invoke
from test_read_visium import write_10x_h5

SYMBOLS = ["CD3E", "MS4A1", "VWF", "PTPRC", "CD19", "LYZ", "MT-CO1", "MT-ND1", "ACTB", "GAPDH"]


def write_hd_fixture(root: Path, side: dict[int, int] | None = None, seed: int = 0) -> Path:
    """outs/binned_outputs/square_{008,016}um of a square capture area: side[b] x side[b] bins of b um, the outer
    ring of bins outside the tissue (in the parquet, not in the filtered matrix). Returns root/outs."""
    side = side or {16: 12, 8: 24}
    rng = np.random.default_rng(seed)
    outs = root / "outs"
    for size, n in side.items():
        folder = outs / "binned_outputs" / f"square_{size:03d}um"
        (folder / "spatial").mkdir(parents=True)
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        barcodes = [f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
        in_tissue = ((rows > 0) & (rows < n - 1) & (cols > 0) & (cols < n - 1)).astype(int)
        px_per_um = 3.6
        pos = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue, "array_row": rows, "array_col": cols,
                            "pxl_row_in_fullres": (rows + 0.5) * size * px_per_um,
                            "pxl_col_in_fullres": (cols + 0.5) * size * px_per_um})
        pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        keep = in_tissue == 1
        X = rng.poisson(size / 4, size=(int(keep.sum()), len(SYMBOLS))).astype(np.float32)
        X[:, 0] += 1  # no empty bin
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", X, [b for b, k in zip(barcodes, keep) if k],
                     [f"ENSG{i:011d}" for i in range(len(SYMBOLS))], SYMBOLS, "hd_lib")
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps({
            "spot_diameter_fullres": size * px_per_um, "bin_size_um": float(size), "microns_per_pixel": 1 / px_per_um,
            "tissue_lowres_scalef": 0.05, "tissue_hires_scalef": 0.2, "fiducial_diameter_fullres": 100.0}))
    return outs


@pytest.fixture(scope="module")
def hd(tmp_path_factory) -> Path:
    return write_hd_fixture(tmp_path_factory.mktemp("visium_hd"))


@pytest.mark.parametrize("bin_size,n_side", [(None, 12), ("16", 12), ("8", 24)])
def test_hd_bins_are_read_with_parquet_positions(hd, tmp_path, bin_size, n_side):
    args = ["--bin-size", bin_size] if bin_size else []
    for given in (hd, hd.parent):  # outs/ or the folder holding it
        out = tmp_path / f"out_{given.name}"
        invoke("read-visium", "--sample", "hd1", "--spaceranger-dir", given, *args, "--outdir", out)
        adata = ad.read_h5ad(out / "hd1.h5ad")
        size = int(bin_size or 16)
        assert adata.n_obs == (n_side - 2) ** 2  # in-tissue bins only (the filtered matrix)
        pos = pd.read_parquet(hd / "binned_outputs" / f"square_{size:03d}um" / "spatial" / "tissue_positions.parquet")
        pos = pos.set_index("barcode").loc[adata.obs_names]
        assert np.allclose(adata.obsm["spatial"], pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
        assert list(adata.obs["array_row"]) == list(pos["array_row"])
        meta = adata.uns["spatial"]["hd_lib"]["metadata"]
        assert meta["visium_hd"] and meta["bin_size_um"] == size
        assert adata.uns["spatial"]["hd_lib"]["scalefactors"]["bin_size_um"] == size
        assert list(adata.uns["MT_genes"]) == ["MT-CO1", "MT-ND1"] and "MT-CO1" not in set(adata.var["SYMBOL"])
        qc = pd.read_csv(out / "hd1.qc.csv")
        assert qc.loc[0, "n_spots"] == adata.n_obs


def test_missing_bin_size_folder_names_what_is_there(tmp_path):
    outs = write_hd_fixture(tmp_path / "hd", side={16: 6})
    result = invoke("read-visium", "--sample", "hd2", "--spaceranger-dir", outs, "--bin-size", "8", "--outdir",
                    tmp_path / "out", expect=None)
    assert_failed_cleanly(result, 1, "sample 'hd2', field 'bin_size'", "no square_008um", "found: square_016um",
                          outdir=tmp_path / "out")


def test_bin_size_on_a_standard_visium_folder_is_refused(lymph_node, tmp_path):
    result = invoke("read-visium", "--sample", "ln", "--spaceranger-dir", lymph_node / "visium", "--bin-size", "16",
                    "--outdir", tmp_path / "out", expect=None)
    assert_failed_cleanly(result, 1, "sample 'ln', field 'bin_size'", "is for Visium HD outputs",
                          outdir=tmp_path / "out")


def test_two_micron_bins_are_refused(hd, tmp_path):
    result = invoke("read-visium", "--sample", "hd1", "--spaceranger-dir", hd, "--bin-size", "2", "--outdir",
                    tmp_path / "out", expect=None)
    assert result.exit_code == 2 and "--bin-size" in result.output


def test_parquet_without_a_position_column_is_a_clean_error(tmp_path):
    outs = write_hd_fixture(tmp_path / "hd", side={16: 6})
    path = outs / "binned_outputs" / "square_016um" / "spatial" / "tissue_positions.parquet"
    pd.read_parquet(path).drop(columns=["pxl_row_in_fullres"]).to_parquet(path, index=False)
    result = invoke("read-visium", "--sample", "hd3", "--spaceranger-dir", outs, "--outdir", tmp_path / "out",
                    expect=None)
    assert_failed_cleanly(result, 1, "sample 'hd3', field 'spaceranger_dir'",
                          "tissue_positions.parquet lacks column(s) ['pxl_row_in_fullres']", outdir=tmp_path / "out")


# ---------------------------------------------------------------- issue 31: a bin folder given directly


@pytest.mark.parametrize("size, n_side", [(8, 24), (16, 12)])
def test_a_bin_folder_given_directly_is_read_as_visium_hd(hd, tmp_path, size, n_side):
    """square_NNNum/ itself (or binned_outputs/) is recognised by its contents: HD bins at that folder's size."""
    folder = hd / "binned_outputs" / f"square_{size:03d}um"
    for given, args in ((folder, []), (folder, ["--bin-size", str(size)]), (hd / "binned_outputs", ["--bin-size", str(size)])):
        out = tmp_path / f"out_{given.name}_{len(args)}"
        invoke("read-visium", "--sample", "hd1", "--spaceranger-dir", given, *args, "--outdir", out)
        adata = ad.read_h5ad(out / "hd1.h5ad")
        meta = adata.uns["spatial"]["hd_lib"]["metadata"]
        assert meta["visium_hd"] and meta["bin_size_um"] == size
        assert adata.n_obs == (n_side - 2) ** 2


def test_a_renamed_bin_folder_is_still_read_as_visium_hd(hd, tmp_path):
    """Recognised by its contents (parquet positions, scalefactors with bin_size_um), not by its name."""
    copy = tmp_path / "my_section"
    shutil.copytree(hd / "binned_outputs" / "square_008um", copy)
    invoke("read-visium", "--sample", "hd1", "--spaceranger-dir", copy, "--outdir", tmp_path / "out")
    meta = ad.read_h5ad(tmp_path / "out" / "hd1.h5ad").uns["spatial"]["hd_lib"]["metadata"]
    assert meta["visium_hd"] and meta["bin_size_um"] == 8


def test_bin_size_that_disagrees_with_a_bin_folder_is_refused(hd, tmp_path):
    result = invoke("read-visium", "--sample", "hd1", "--spaceranger-dir", hd / "binned_outputs" / "square_008um",
                    "--bin-size", "16", "--outdir", tmp_path / "out", expect=None)
    assert_failed_cleanly(result, 1, "sample 'hd1', field 'bin_size': bin_size is 16, but",
                          "square_008um holds 8 um bins (Visium HD bin folder)", outdir=tmp_path / "out")
