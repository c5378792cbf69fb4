"""plot-spatial: the three figures of a mapped section, with and without a tissue image."""

from __future__ import annotations

import anndata as ad
import pytest

from conftest import LN_CELL_TYPES, assert_failed_cleanly, assert_png, invoke, no_staging
from c2lnf.plot_spatial import abundance, library, top_cell_types

FIGURES = ("q05_abundance", "overlay", "proportions")


@pytest.fixture(scope="module")
def mapped_left(joint_mapping):
    return joint_mapping / "ln_left.cell2location.h5ad"


def test_plot_spatial_on_tissue_image(mapped_left, tmp_path):
    invoke("plot-spatial", mapped_left, "--sample", "ln_left", "--outdir", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"ln_left.{f}.png" for f in FIGURES)
    for fig in FIGURES:
        assert_png(tmp_path / f"ln_left.{fig}.png", min_kb=20)
    no_staging(tmp_path)


def test_plot_spatial_without_image_and_named_overlay(mapped_left, tmp_path):
    adata = ad.read_h5ad(mapped_left)
    adata.uns["spatial"] = {}
    path = tmp_path / "noimage.cell2location.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    invoke("plot-spatial", path, "--sample", "noimage", "--overlay-cell-types", "B,T_CD4,DC", "--outdir", out)
    for fig in FIGURES:
        assert_png(out / f"noimage.{fig}.png", min_kb=10)


def test_unknown_overlay_cell_type(mapped_left, tmp_path):
    result = invoke("plot-spatial", mapped_left, "--sample", "ln_left", "--overlay-cell-types", "B,Neurons",
                    "--outdir", tmp_path / "out",
                    expect=None)
    assert_failed_cleanly(result, 1, "sample 'ln_left'", "field 'overlay_cell_types'", "unknown cell type(s) ['Neurons']",
                          outdir=tmp_path / "out")


def test_plot_helpers(mapped_left):
    adata = ad.read_h5ad(mapped_left)
    lib, img_key, sf = library(adata)
    assert lib == "V1_Human_Lymph_Node_subset" and img_key == "hires" and sf["spot_diameter_fullres"] > 0
    q05 = abundance(adata, "q05")
    assert list(q05.columns) == LN_CELL_TYPES and list(q05.index) == list(adata.obs_names)
    top = top_cell_types(adata, 3)
    totals = q05.sum(axis=0)
    assert len(top) == 3 and list(top) == list(totals.sort_values(ascending=False).index[:3])
