"""plot-spatial: the three figures of a mapped section, with and without a tissue image."""

from __future__ import annotations

import anndata as ad
import numpy as np
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


def hd_like_section(n: int, n_types: int = 25, seed: int = 0) -> ad.AnnData:
    """A mapped section of n locations on a square grid of 16 um bins (no image), random abundances."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.stack([np.arange(n) % side, np.arange(n) // side], 1).astype(float) * 57.6
    adata = ad.AnnData(X=np.zeros((n, 2), dtype=np.float32))
    adata.obsm["spatial"] = xy
    types = [f"type_{i:02d}" for i in range(n_types)]
    for stat in ("means", "stds", "q05", "q95"):
        adata.obsm[f"{stat}_cell_abundance_w_sf"] = pd.DataFrame(
            rng.gamma(0.5, 1.0, (n, n_types)), index=adata.obs_names, columns=[f"{stat}cell_abundance_w_sf_{t}" for t in types])
    adata.uns["spatial"] = {"hd": {"images": {}, "scalefactors": {"spot_diameter_fullres": 57.6}, "metadata": {}}}
    return adata


def test_many_locations_get_rasters_and_a_dominant_type_map(tmp_path):
    """Above MAX_PIES locations (Visium HD): rasterised maps, one scatter per panel, dominant type instead of pies."""
    from c2lnf import plot_spatial as P

    adata = hd_like_section(P.MAX_PIES + 1)
    maps = P.plot_abundance_maps(adata)
    panels = [ax for ax in maps.axes if ax.get_visible() and ax.get_title().startswith("type_")]
    assert len(panels) == 25 and all(len(ax.collections) == 1 and ax.collections[0].get_rasterized() for ax in panels)
    props = P.plot_proportion_pies(adata)
    (ax,) = [a for a in props.axes if a.get_title().startswith("dominant cell type")]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == adata.n_obs  # no wedge per location
    colours = {tuple(np.round(h.get_facecolor(), 3)) for h in ax.get_legend().legend_handles}
    assert len(colours) == 25  # 25 types, 25 distinct colours
    path = tmp_path / "section.h5ad"
    adata.write_h5ad(path)
    invoke("plot-spatial", path, "--sample", "hd", "--outdir", tmp_path / "out")
    for name in ("hd.q05_abundance.png", "hd.overlay.png", "hd.proportions.png"):
        assert_png(tmp_path / "out" / name)


def test_few_locations_keep_the_tutorial_figures():
    from c2lnf import plot_spatial as P

    fig = P.plot_proportion_pies(hd_like_section(400, n_types=5))
    assert any(ax.get_title().startswith("cell-type proportions per spot") for ax in fig.axes)


def test_pies_show_the_top_types_and_a_zoomed_region():
    """Pies: at most top_k coloured wedges per spot plus one grey 'other' wedge; a second panel zooms into a
    window of about zoom_spots spots, outlined on the overview."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from c2lnf import plot_spatial as P

    adata = hd_like_section(400, n_types=8)
    fig = P.plot_proportion_pies(adata, top_k=3, zoom_spots=60)
    overview, zoom = fig.axes[0], fig.axes[1]
    wedges = [c for c in overview.collections if isinstance(c, PatchCollection)][0]
    grey = np.isclose(wedges.get_facecolors()[:, :3], 0.8).all(axis=1)
    # random proportions over 8 types: every spot has a rest, and at most 3 coloured wedges
    assert grey.sum() == adata.n_obs
    assert len(wedges.get_paths()) - grey.sum() <= 3 * adata.n_obs
    outline = [p for p in overview.patches if isinstance(p, Rectangle)]
    assert len(outline) == 1
    x0, x1 = zoom.get_xlim()
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    y1, y0 = zoom.get_ylim()
    inside = ((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).sum()
    assert 20 <= inside <= 90, inside  # about zoom_spots (a square around a circle of 60)
    assert zoom.get_legend() is not None and "other" in [t.get_text() for t in zoom.get_legend().get_texts()]


def imaged_section(where: str, n_types: int = 7, seed: int = 0) -> ad.AnnData:
    """A mapped section on a 1000 x 1000 px hires image (scale factor 0.5 of a 2000 px full-resolution slide): a
    Visium-like lattice of spots either reaching the image's right and bottom edges (`edge`) or filling its
    top-left quarter (`quarter`); a textured image so that any band past it would show."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    step = 60.0  # full-resolution px between spots
    if where == "edge":
        xs, ys = np.arange(900, 2000, step), np.arange(700, 2000, step * np.sqrt(3) / 2)
    else:
        xs, ys = np.arange(40, 1000, step), np.arange(40, 1000, step * np.sqrt(3) / 2)
    xy = np.array([(x + (step / 2 if i % 2 else 0), y) for i, y in enumerate(ys) for x in xs], dtype=float)
    xy = np.clip(xy, 0, 1999.0)  # spots on the edge itself
    n = len(xy)
    adata = ad.AnnData(X=np.zeros((n, 2), dtype=np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))
    adata.obsm["spatial"] = xy
    types = [f"type_{i}" for i in range(n_types)]
    base = rng.gamma(0.8, 3.0, (n, n_types)) * (1 + np.sin(xy[:, :1] / 200.0))
    for stat, f in (("means", 1.0), ("stds", 0.2), ("q05", 0.6), ("q95", 1.5)):
        adata.obsm[f"{stat}_cell_abundance_w_sf"] = pd.DataFrame(
            base * f, index=adata.obs_names, columns=[f"{stat}cell_abundance_w_sf_{t}" for t in types])
    yy, xx = np.mgrid[0:1000, 0:1000]
    img = np.stack([0.75 + 0.2 * np.sin(xx / 40.0), 0.7 + 0.2 * np.cos(yy / 55.0), 0.8 * np.ones_like(xx, float)],
                   axis=-1).astype(np.float32)
    adata.uns["spatial"] = {"lib": {"images": {"hires": img},
                                    "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 50.0},
                                    "metadata": {}}}
    return adata


@pytest.mark.parametrize("where", ["edge", "quarter"])
def test_figures_are_cropped_to_the_spots_and_never_past_the_image(where, tmp_path):
    """Every panel of the three figures: its view holds all spots, stays inside the image (no band beyond its
    edge) and, for a section on a quarter of the image, shows about that quarter, not the whole image; every colour
    bar labels its minimum and maximum. The PNGs are written to tmp_path (looked at: docs/output.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from c2lnf import plot_spatial as P
    from c2lnf.runtime import save_figures

    adata = imaged_section(where)
    scale = 0.5
    xy = np.asarray(adata.obsm["spatial"]) * scale
    figs = {"q05_abundance": P.plot_abundance_maps(adata),
            "overlay": P.plot_overlay(adata, P.top_cell_types(adata, 5)),
            "proportions": P.plot_proportion_pies(adata)}
    for name, fig in figs.items():
        panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None and ax.images]
        assert panels, name
        for ax in panels:
            (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
            assert x0 >= -0.5 - 1e-6 and x1 <= 999.5 + 1e-6 and y0 >= -0.5 - 1e-6 and y1 <= 999.5 + 1e-6, \
                (name, ax.get_xlim(), ax.get_ylim())
            if ax.get_title().startswith("zoom"):
                continue
            assert x0 <= xy[:, 0].min() and x1 >= xy[:, 0].max() and y0 <= xy[:, 1].min() and y1 >= xy[:, 1].max(), name
            if where == "quarter":
                assert x1 - x0 < 600 and y1 - y0 < 600, (name, ax.get_xlim(), ax.get_ylim())
        for ax in fig.axes:
            cbar = getattr(ax, "_colorbar", None)
            if cbar is None:
                continue
            labels = [t.get_text() for t in (ax.get_xticklabels() + ax.get_yticklabels()) if t.get_text()]
            assert len(labels) >= 2, (name, labels)
            ends = P.tick_labels([cbar.norm.vmin, cbar.norm.vmax])
            assert ends[0] in labels and ends[1] in labels and not any("e" in t for t in labels), (name, labels)
        if name == "q05_abundance":  # its title just above the panels, no empty band between (saved tight)
            top = max(ax.get_position().y1 for ax in fig.axes)
            assert 0 < (fig._suptitle.get_position()[1] - top) * fig.get_figheight() < 0.5, name
        save_figures([fig], tmp_path / f"{where}.{name}.png")
        plt.close(fig)
    for name in figs:
        assert_png(tmp_path / f"{where}.{name}.png", min_kb=10)
