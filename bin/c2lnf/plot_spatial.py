"""Step `plot_spatial`: the tutorial's spatial figures for one mapped section."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import C2LError

LOG = logging.getLogger("c2l.plot_spatial")

#: above this many locations (Visium HD bins) the abundance maps are rasterised scatters instead of scanpy's
#: circles, and the proportions figure colours each location by its dominant cell type instead of drawing a pie
#: per location (unreadable, and minutes to draw, at 10^5 bins)
MAX_PIES = 5000


def library(adata: ad.AnnData) -> tuple[str | None, str | None, dict]:
    """(library id, image key to draw on or None, scale factors) of a section."""
    spatial = adata.uns.get("spatial") or {}
    if not spatial:
        return None, None, {}
    lib = next(iter(spatial))
    images = spatial[lib].get("images") or {}
    img_key = "hires" if "hires" in images else ("lowres" if "lowres" in images else None)
    return lib, img_key, dict(spatial[lib].get("scalefactors") or {})


def abundance(adata: ad.AnnData, stat: str = "q05") -> pd.DataFrame:
    """Spots x cell types table of a posterior statistic stored in obsm by map_cells."""
    key = f"{stat}_cell_abundance_w_sf"
    if key not in adata.obsm:
        raise KeyError(f"obsm['{key}'] is missing")
    table = pd.DataFrame(adata.obsm[key]).copy()
    table.columns = [str(c).replace(f"{stat}cell_abundance_w_sf_", "") for c in table.columns]
    table.index = adata.obs_names
    return table


def _spot_size_px(adata: ad.AnnData) -> float:
    """Spot diameter in full-resolution pixels: from the scale factors, else the nearest-neighbour spacing."""
    _, _, sf = library(adata)
    if sf.get("spot_diameter_fullres"):
        return float(sf["spot_diameter_fullres"])
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]) * 0.9)


def crop_box(adata: ad.AnnData, img_key: str | None = None, margin: float = 0.04) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) in full-resolution pixels: the spots' extent plus a margin (one spot diameter,
    at least `margin` of the larger side), never past the tissue image (`img_key`) when there is one: the maps
    show the section, not an empty field or a band beyond the image."""
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = max(_spot_size_px(adata), margin * float(np.max(hi - lo)))
    lo, hi = lo - pad, hi + pad
    lib, _, sf = library(adata)
    image = ((adata.uns.get("spatial") or {}).get(lib) or {}).get("images", {}).get(img_key) if img_key else None
    if image is not None:
        scale = float(sf.get(f"tissue_{img_key}_scalef", 1.0))
        # the image's pixel edges, in full-resolution pixels
        size = np.array([image.shape[1], image.shape[0]], dtype=float) / scale
        lo = np.clip(lo, -0.5 / scale, size - 0.5 / scale)
        hi = np.clip(hi, -0.5 / scale, size - 0.5 / scale)
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels with as many decimals as the range needs for three significant digits (0.0 / 6.4 / 12.7, 0 / 75 /
    150, 0.000 / 0.185 / 0.370), none in scientific notation."""
    span = max(ticks) - min(ticks)
    decimals = int(max(0, 2 - np.floor(np.log10(span)))) if span > 0 else 2
    return [f"{t:.{decimals}f}" for t in ticks]


def label_colorbars(fig) -> None:
    """Every colour bar of `fig` with ticks at its ends and the middle, each labelled: the minimum and maximum of
    the scale are always readable."""
    for ax in fig.axes:
        cbar = getattr(ax, "_colorbar", None)
        if cbar is None:
            continue
        vmin, vmax = float(cbar.norm.vmin), float(cbar.norm.vmax)
        ticks = [vmin, (vmin + vmax) / 2, vmax] if vmax > vmin else [vmin]
        cbar.set_ticks(ticks, labels=tick_labels(ticks))


def _slide_with(adata: ad.AnnData, table: pd.DataFrame) -> ad.AnnData:
    slide = ad.AnnData(obs=table.copy(), obsm={"spatial": np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]})
    slide.uns["spatial"] = adata.uns.get("spatial", {})
    return slide


def plot_abundance_rasters(adata: ad.AnnData, stat: str = "q05", quantile: float = 0.992, ncols: int = 4):
    """plot_abundance_maps for sections of many small locations (Visium HD): one rasterised scatter of square
    markers per cell type, on black, same colour map and limit; seconds instead of minutes at 10^5 bins."""
    import matplotlib.pyplot as plt

    table = abundance(adata, stat)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    n_types = table.shape[1]
    nrows = int(np.ceil(n_types / ncols))
    span = np.ptp(xy, axis=0)
    aspect = float(span[1] / span[0]) if span[0] > 0 else 1.0
    width = 4.5
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(ncols * width, nrows * 0.8 * width * min(2.0, max(0.3, aspect)) + 0.4))
    marker_pt = max(0.3, 0.95 * width * 72 / np.sqrt(len(xy)))
    for ax, name in zip(axes.ravel(), table.columns):
        values = table[name].to_numpy()
        vmax = float(np.quantile(values, quantile)) or None
        order = np.argsort(values)  # the highest on top
        art = ax.scatter(xy[order, 0], xy[order, 1], c=values[order], cmap="magma", vmin=0, vmax=vmax,
                         s=marker_pt ** 2, marker="s", linewidths=0, rasterized=True)
        ax.set_facecolor("black")
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name)
        fig.colorbar(art, ax=ax, shrink=0.7)
    for ax in axes.ravel()[n_types:]:
        ax.set_visible(False)
    fig.suptitle(f"{stat} cell abundance (cells per location), {len(xy):,} locations")
    return fig


def plot_abundance_maps(adata: ad.AnnData, stat: str = "q05", vmax_quantile: str = "p99.2", ncols: int = 4):
    """One panel per cell type: `stat` abundance on the tissue image (magma, colour limit at the 99.2% quantile);
    above MAX_PIES locations, plot_abundance_rasters."""
    if adata.n_obs > MAX_PIES:
        return plot_abundance_rasters(adata, stat, float(vmax_quantile.lstrip("p")) / 100, ncols)
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    import scanpy as sc

    table = abundance(adata, stat)
    slide = _slide_with(adata, table)
    lib, img_key, _ = library(adata)
    kwargs = dict(cmap="magma", color=list(table.columns), ncols=ncols, size=1.3, vmin=0, vmax=vmax_quantile, show=False,
                  crop_coord=crop_box(adata, img_key if lib is not None else None))
    if lib is not None and img_key is not None:
        kwargs.update(img_key=img_key, library_id=lib)
    else:
        kwargs.update(img_key=None, library_id=lib, spot_size=_spot_size_px(adata))
        if lib is None:
            slide.uns.pop("spatial", None)
            kwargs.pop("library_id")
    with mpl.rc_context({"axes.facecolor": "black", "figure.figsize": [4.5, 5]}):
        sc.pl.spatial(slide, **kwargs)
        fig = plt.gcf()
    label_colorbars(fig)
    title_above_panels(fig, f"{stat} cell abundance (cells per spot)")
    return fig


def title_above_panels(fig, text: str) -> None:
    """`fig.suptitle` just above the top row of panels and their titles (scanpy's grid leaves the figure's top
    empty; the figure is saved with a tight box, so what lies above the title is cut)."""
    top = max(ax.get_position().y1 for ax in fig.axes)
    fig.suptitle(text, y=top + 28 / 72 / fig.get_figheight(), va="bottom")


def top_cell_types(adata: ad.AnnData, n: int = 6, stat: str = "q05") -> list[str]:
    """The `n` cell types with the largest total abundance in the section."""
    return list(abundance(adata, stat).sum(axis=0).sort_values(ascending=False).index[:n])


def check_mapped(adata: ad.AnnData, sample: str, stats=("q05", "means")) -> None:
    """Fail early, naming the sample, when the section has not been through map_cells."""
    for stat in stats:
        key = f"{stat}_cell_abundance_w_sf"
        if key not in adata.obsm:
            raise C2LError(f"obsm['{key}'] is missing: run map_cells on this section first", sample, key)


def check_cell_types(adata: ad.AnnData, cell_types: list[str], sample: str, stat: str = "q05") -> None:
    """Fail early when the overlay names a cell type the model does not have."""
    known = list(abundance(adata, stat).columns)
    unknown = [c for c in cell_types if c not in known]
    if unknown:
        raise C2LError(f"unknown cell type(s) {unknown}; known: {known}", sample, "overlay_cell_types")


def plot_overlay(adata: ad.AnnData, cell_types: list[str], stat: str = "q05"):
    """cell2location.plt.plot_spatial: several cell types in one map, one colour each (at most 7)."""
    from .light_imports import cell2location_function

    plot_spatial = cell2location_function("plt.plot_spatial", "plot_spatial")  # without torch: see light_imports

    table = abundance(adata, stat)
    cell_types = cell_types[:7]
    slide = _slide_with(adata, table[cell_types])
    lib, img_key, sf = library(adata)
    if lib is None or not sf or img_key is None:
        # plot_spatial scales coordinates by the image scale factor: give it an identity one (no image to match)
        lib = lib or "section"
        slide.uns["spatial"] = {lib: {"images": {}, "scalefactors": {"tissue_hires_scalef": 1.0,
                                                                      "spot_diameter_fullres": _spot_size_px(adata)}}}
        img_key = "hires"
    show_img = bool((slide.uns["spatial"][lib].get("images") or {}).get(img_key) is not None)
    # the crop, in the coordinates plot_spatial draws in (full resolution x the image's scale factor)
    left, right, top, bottom = crop_box(adata, img_key if show_img else None)
    scale = float(slide.uns["spatial"][lib]["scalefactors"].get(f"tissue_{img_key}_scalef", 1.0))
    import matplotlib as mpl

    # the tutorial draws this at 15 x 15 inches: smaller, the colour-bar labels run into each other
    with mpl.rc_context({"figure.figsize": (15, 15), "font.size": 14}):
        fig = plot_spatial(
            adata=slide,
            color=cell_types,
            labels=cell_types,
            show_img=show_img,
            img_key=img_key,
            style="fast",
            max_color_quantile=0.992,
            # the tutorial's 6 for a Visium section (~4,000 spots), smaller as locations get denser (HD bins)
            circle_diameter=float(np.clip(6 * np.sqrt(4000 / max(1, adata.n_obs)), 0.4, 6)),
            colorbar_position="right",
            crop_x=(left * scale, right * scale),
            crop_y=(top * scale, bottom * scale),
        )
    label_colorbars(fig)
    return fig


def plot_dominant_type(adata: ad.AnnData, stat: str = "means"):
    """Each location coloured by its most abundant cell type, its share of the location as the opacity: the
    proportions figure for sections of many small locations (Visium HD), one rasterised scatter."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    table = abundance(adata, stat)
    props = table.div(table.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0).to_numpy()
    top = props.argmax(axis=1)
    share = props[np.arange(len(props)), top]
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    palette = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    if table.shape[1] <= 10:
        palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    colours = np.array([palette[i % len(palette)] for i in range(table.shape[1])])  # distinct up to 60 types
    rgba = colours[top].copy()
    rgba[:, 3] = np.clip(0.25 + 0.75 * share, 0, 1)
    span = np.ptp(xy, axis=0).max() or 1.0
    side = 12.0
    marker_pt = max(0.5, 0.9 * side * 72 / np.sqrt(len(xy)))  # about one location's width, in points
    fig, ax = plt.subplots(figsize=(side + 3, side * max(0.3, np.ptp(xy[:, 1]) / span)))
    ax.set_facecolor("black")
    ax.scatter(xy[:, 0], xy[:, 1], c=rgba, s=marker_pt ** 2, marker="s", linewidths=0, rasterized=True)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    counts = np.bincount(top, minlength=table.shape[1])
    ax.legend(handles=[Patch(color=colours[j], label=f"{n} ({counts[j]:,})") for j, n in enumerate(table.columns)],
              loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="dominant cell type (locations)")
    ax.set_title(f"dominant cell type per location ({stat} abundance; opacity: its share), {len(xy):,} locations")
    return fig


def _zoom_window(xy: np.ndarray, values: np.ndarray, n_spots: int = 150) -> tuple[float, float, float]:
    """(x centre, y centre, half-width) of a square holding about `n_spots` spots around the spot whose
    neighbourhood is the most mixed (highest mean entropy of the proportions): the region worth a closer look."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    k = min(len(xy), n_spots)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(values > 0, values * np.log(values), 0.0), axis=1)
    _, nn = tree.query(xy, k=min(len(xy), 20))
    local = entropy[nn].mean(axis=1) if nn.ndim > 1 else entropy
    centre = xy[int(np.argmax(local))]
    d, _ = tree.query(centre, k=k)
    half = float(np.max(d)) / np.sqrt(2) if np.ndim(d) else 1.0
    return float(centre[0]), float(centre[1]), max(half, 1e-9)


def plot_proportion_pies(adata: ad.AnnData, stat: str = "means", top_k: int = 4, min_fraction: float = 0.02,
                         zoom_spots: int = 150):
    """Per spot a pie of the cell-type proportions (abundances normalised per spot), sized to the spot spacing,
    over the tissue image when there is one: each spot's `top_k` types (those >= min_fraction) and the rest in
    grey; left the whole section, right a zoomed panel (about `zoom_spots` spots) of its most mixed region,
    outlined on the left. For more than MAX_PIES locations, the dominant cell type per location instead
    (plot_dominant_type)."""
    if adata.n_obs > MAX_PIES:
        return plot_dominant_type(adata, stat)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle, Wedge

    table = abundance(adata, stat)
    props = table.div(table.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    lib, img_key, sf = library(adata)
    scale = float(sf.get(f"tissue_{img_key}_scalef", 1.0)) if img_key else 1.0
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2] * scale
    from scipy.spatial import cKDTree

    spacing = np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]) if len(xy) > 1 else 1.0
    # pies as large as the spot, or nearly touching their nearest neighbour on sparse sections
    radius = max(_spot_size_px(adata) * scale / 2, 0.45 * spacing)
    palette = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)] \
        if props.shape[1] > 10 else [plt.get_cmap("tab10")(i) for i in range(10)]
    colours = [palette[i % len(palette)] for i in range(props.shape[1])]
    other = (0.8, 0.8, 0.8, 1.0)
    values = props.to_numpy()
    wedges, facecolors = [], []
    for (x, y), row in zip(xy, values):
        keep = [j for j in np.argsort(row)[::-1][:top_k] if row[j] >= min_fraction]
        start = 90.0
        for j in keep:
            wedges.append(Wedge((x, y), radius, start, start + 360 * row[j]))
            facecolors.append(colours[j])
            start += 360 * row[j]
        if start < 450.0 - 1e-6:  # the rest of the spot: the other types together
            wedges.append(Wedge((x, y), radius, start, 450.0))
            facecolors.append(other)
    cx, cy, half = _zoom_window(xy, values, zoom_spots)
    side = float(np.clip(np.sqrt(len(xy)) / 4.0, 7, 16))
    fig, (ax, zx) = plt.subplots(1, 2, figsize=(2 * side + 3.5, side), gridspec_kw={"width_ratios": [1, 1]})
    for axis in (ax, zx):
        if img_key:
            axis.imshow(adata.uns["spatial"][lib]["images"][img_key], cmap="gray")
        axis.add_collection(PatchCollection(wedges, facecolors=facecolors, edgecolor="white", linewidth=0.2))
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
    left, right, top, bottom = (v * scale for v in crop_box(adata, img_key))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    # the zoom inside the crop too (shifted inwards, never past the image)
    cx = float(np.clip(cx, left + half, right - half)) if right - left > 2 * half else (left + right) / 2
    cy = float(np.clip(cy, top + half, bottom - half)) if bottom - top > 2 * half else (top + bottom) / 2
    ax.add_patch(Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False, edgecolor="black", linewidth=1.2))
    zx.set_xlim(cx - half, cx + half)
    zx.set_ylim(cy + half, cy - half)
    for spine in zx.spines.values():
        spine.set_edgecolor("black")
        spine.set_linewidth(1.2)
    ax.set_title(f"cell-type proportions per spot ({stat} abundance, normalised; top {top_k} per spot)")
    zx.set_title("zoom: the most mixed region (outlined left)")
    handles = [Patch(color=c, label=n) for c, n in zip(colours, props.columns)] + [Patch(color=other, label="other")]
    zx.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="cell type")
    fig.tight_layout()
    return fig


def run(section: Path, sample: str, overlay_cell_types: list[str], n_overlay: int, outdir: Path, prefix: str) -> None:
    """The step: the three figures of one mapped section as <prefix>.q05_abundance.png, .overlay.png,
    .proportions.png in `outdir` (all or none)."""
    from .runtime import save_figures, staged_outputs

    adata = ad.read_h5ad(section)
    check_mapped(adata, sample)
    overlay = overlay_cell_types or top_cell_types(adata, n_overlay)
    check_cell_types(adata, overlay, sample)
    with staged_outputs(outdir) as out:
        save_figures([plot_abundance_maps(adata)], out.path(f"{prefix}.q05_abundance.png"))
        save_figures([plot_overlay(adata, overlay)], out.path(f"{prefix}.overlay.png"))
        save_figures([plot_proportion_pies(adata)], out.path(f"{prefix}.proportions.png"))
