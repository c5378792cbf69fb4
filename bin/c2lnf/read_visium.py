"""Step `read_visium`: one Visium section (Space Ranger output or an h5ad) -> a checked AnnData.

Follows the tutorial: sample id on every spot, genes keyed by Ensembl id with SYMBOL kept, mitochondrial
genes moved out of X into `obsm['MT']`, and per-section QC numbers.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from .counts import check_raw_counts, row_totals, select_counts
from .errors import C2LError
from .genes import looks_ensembl

LOG = logging.getLogger("c2l.read_visium")

MT_RE = re.compile(r"^(MT|mt|Mt)-")
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
MATRIX_NAMES = [
    ("filtered_feature_bc_matrix.h5", False),
    ("filtered_feature_bc_matrix", False),
    ("raw_feature_bc_matrix.h5", True),
    ("raw_feature_bc_matrix", True),
    ("raw_probe_bc_matrix.h5", True),
]


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def find_matrix(sr_dir: Path, sample: str) -> tuple[Path, bool]:
    """Locate the count matrix in a Space Ranger folder (or its `outs/`); returns (path, is_raw)."""
    for base in (sr_dir, sr_dir / "outs"):
        for name, is_raw in MATRIX_NAMES:
            p = base / name
            if p.exists():
                return p, is_raw
    wanted = ", ".join(n for n, _ in MATRIX_NAMES[:2])
    raise C2LError(f"no count matrix in {sr_dir} (looked for {wanted}, also under outs/)", sample, "spaceranger_dir")


def read_10x_h5(path: Path, sample: str) -> tuple[ad.AnnData, str | None]:
    """Read a 10x feature-barcode HDF5 (v3 layout); probe-level matrices are summed per gene.

    Returns the AnnData (spots x features, var columns `gene_ids`, `SYMBOL`) and the library id if recorded.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise C2LError(f"{path.name} has no 'matrix' group: not a Space Ranger ≥1.0 HDF5 file", sample, "spaceranger_dir")
            m = f["matrix"]
            shape = tuple(int(x) for x in m["shape"][:])
            X = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape).T.tocsr()
            barcodes = _decode(m["barcodes"][:])
            feats = m["features"]
            ids = _decode(feats["id"][:])
            names = _decode(feats["name"][:])
            ftype = _decode(feats["feature_type"][:]) if "feature_type" in feats else ["Gene Expression"] * len(ids)
            probe_gene_ids = _decode(feats["gene_id"][:]) if "gene_id" in feats else None
            probe_gene_names = _decode(feats["gene_name"][:]) if "gene_name" in feats else None
            lib = f.attrs.get("library_ids")
    except C2LError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise C2LError(f"cannot read {path.name}: {exc} (corrupt or not a 10x HDF5 file)", sample, "spaceranger_dir") from exc

    library_id = None
    if lib is not None and len(np.atleast_1d(lib)) > 0:
        library_id = _decode(np.atleast_1d(lib))[0]
    var = pd.DataFrame({"gene_ids": ids, "SYMBOL": names, "feature_types": ftype})
    adata = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=barcodes), var=var.set_index(pd.Index(ids)))
    adata = adata[:, adata.var["feature_types"].to_numpy() == "Gene Expression"].copy()
    if probe_gene_ids is not None:
        adata = _sum_probes(adata, probe_gene_ids, probe_gene_names, ftype)
    return adata, library_id


def _sum_probes(adata: ad.AnnData, gene_ids: list[str], gene_names: list[str] | None, ftype: list[str]) -> ad.AnnData:
    """Aggregate a probe-level matrix (Space Ranger ≥2 `raw_probe_bc_matrix.h5`) to genes."""
    keep = np.array(ftype) == "Gene Expression"
    gid = pd.Series(np.array(gene_ids)[keep])
    gname = pd.Series(np.array(gene_names if gene_names is not None else gene_ids)[keep])
    codes, uniques = pd.factorize(gid)
    agg = sp.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(uniques)))
    X = (adata.X @ agg).tocsr()
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    var = pd.DataFrame({"gene_ids": uniques, "SYMBOL": gname.to_numpy()[first], "feature_types": "Gene Expression"})
    return ad.AnnData(X=X.astype(np.float32), obs=adata.obs.copy(), var=var.set_index(pd.Index(uniques)))


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def read_10x_mtx(folder: Path, sample: str) -> ad.AnnData:
    """Read a 10x matrix folder (matrix.mtx, features.tsv or genes.tsv, barcodes.tsv; gzipped or not)."""
    mtx = _first_existing(folder, ["matrix.mtx"])
    feats = _first_existing(folder, ["features.tsv", "genes.tsv"])
    bcs = _first_existing(folder, ["barcodes.tsv"])
    if mtx is None or feats is None or bcs is None:
        raise C2LError(f"{folder} lacks matrix.mtx, features.tsv or barcodes.tsv", sample, "spaceranger_dir")
    try:
        with _open_text(mtx) as fh:
            X = sp.csr_matrix(scipy.io.mmread(fh).T)
        with _open_text(feats) as fh:
            f = pd.read_csv(fh, sep="\t", header=None)
        with _open_text(bcs) as fh:
            b = pd.read_csv(fh, sep="\t", header=None)
    except (OSError, ValueError) as exc:
        raise C2LError(f"cannot read the matrix folder {folder.name}: {exc}", sample, "spaceranger_dir") from exc
    ids = f[0].astype(str).tolist()
    names = f[1].astype(str).tolist() if f.shape[1] > 1 else ids
    ftype = f[2].astype(str).tolist() if f.shape[1] > 2 else ["Gene Expression"] * len(ids)
    if X.shape != (len(b), len(ids)):
        raise C2LError(f"matrix shape {X.shape} does not match {len(b)} barcodes x {len(ids)} features", sample, "spaceranger_dir")
    var = pd.DataFrame({"gene_ids": ids, "SYMBOL": names, "feature_types": ftype}, index=pd.Index(ids))
    adata = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=b[0].astype(str).tolist()), var=var)
    return adata[:, adata.var["feature_types"].to_numpy() == "Gene Expression"].copy()


HD_BIN_SIZES = (8, 16)
HD_DEFAULT_BIN = 16


def hd_bin_size(folder: Path, sample: str) -> int | None:
    """The bin size (um) of a Visium HD bin folder (square_NNNum/: spatial/tissue_positions.parquet, and
    spatial/scalefactors_json.json with bin_size_um), recognised by what it holds whatever its name; None for
    anything else (a standard Visium section has neither)."""
    spatial = folder / "spatial"
    scalefactors = {}
    if (spatial / "scalefactors_json.json").is_file():
        try:
            scalefactors = json.loads((spatial / "scalefactors_json.json").read_text())
        except (OSError, ValueError):
            scalefactors = {}
    size = scalefactors.get("bin_size_um") if isinstance(scalefactors, dict) else None
    if size is None and not (spatial / "tissue_positions.parquet").is_file():
        return None
    if size is None:
        named = re.fullmatch(r"square_0*(\d+)um", folder.name)
        if not named:
            raise C2LError(f"{folder} holds Visium HD bins (spatial/tissue_positions.parquet) but neither its "
                           "scalefactors_json.json (bin_size_um) nor its name (square_NNNum) gives the bin size",
                           sample, "spaceranger_dir")
        size = named.group(1)
    return int(float(size))


def find_hd_bins(sr_dir: Path, sample: str, bin_size: int | None) -> Path | None:
    """The binned folder of a Visium HD output (Space Ranger >= 3: [outs/]binned_outputs/square_NNNum/), or None
    for a standard Visium folder. `bin_size` (um, 8 or 16; default 16) picks the bin. The folder may be the run's,
    its outs/, binned_outputs/ itself or one bin folder (recognised by its contents, see `hd_bin_size`); a bin folder
    given directly is read at its own bin size (`bin_size`, when given, must agree)."""
    candidates = [sr_dir / "binned_outputs", sr_dir / "outs" / "binned_outputs"]
    if any(sr_dir.glob("square_*um/spatial")):   # binned_outputs/ itself
        candidates.append(sr_dir)
    for binned in candidates:
        if binned.is_dir():
            size = HD_DEFAULT_BIN if bin_size is None else int(bin_size)
            if size not in HD_BIN_SIZES:
                raise C2LError(f"{size} um bins: cell2location needs 8 or 16 um bins (2 um bins hold too few counts)",
                               sample, "bin_size")
            folder = binned / f"square_{size:03d}um"
            if not folder.is_dir():
                have = sorted(p.name for p in binned.glob("square_*um"))
                raise C2LError(f"no {folder.name} in {binned} (found: {', '.join(have) or 'none'})", sample, "bin_size")
            return folder
    own = hd_bin_size(sr_dir, sample)
    if own is not None:
        if own not in HD_BIN_SIZES:
            raise C2LError(f"{sr_dir} holds {own} um bins: cell2location needs 8 or 16 um bins (2 um bins hold too few "
                           "counts); give the square_008um or square_016um folder", sample, "spaceranger_dir")
        if bin_size is not None and int(bin_size) != own:
            raise C2LError(f"bin_size is {int(bin_size)}, but {sr_dir} holds {own} um bins (Visium HD bin folder); "
                           f"give its binned_outputs/ folder to choose the bin size", sample, "bin_size")
        return sr_dir
    if bin_size is not None:
        raise C2LError(f"bin_size is for Visium HD outputs, and {sr_dir} has no binned_outputs/ (nor outs/binned_outputs/)",
                       sample, "bin_size")
    return None


def read_positions(spatial: Path, sample: str) -> pd.DataFrame:
    """Spot positions from `tissue_positions_list.csv` (Space Ranger 1, no header), `tissue_positions.csv` (≥2) or
    `tissue_positions.parquet` (Visium HD bins)."""
    new, old, hd = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv", spatial / "tissue_positions.parquet"
    if hd.exists() and not new.exists():
        try:
            pos = pd.read_parquet(hd)
        except (OSError, ValueError, ImportError) as exc:
            raise C2LError(f"cannot read {hd.name}: {exc}", sample, "spaceranger_dir") from exc
        missing = [c for c in POSITION_COLUMNS if c not in pos.columns]
        if missing:
            raise C2LError(f"{hd.name} lacks column(s) {missing}", sample, "spaceranger_dir")
    elif new.exists():
        pos = pd.read_csv(new)
        missing = [c for c in POSITION_COLUMNS if c not in pos.columns]
        if missing:
            raise C2LError(f"{new.name} lacks column(s) {missing}", sample, "spaceranger_dir")
    elif old.exists():
        pos = pd.read_csv(old, header=None)
        if pos.shape[1] != 6:
            raise C2LError(f"{old.name} has {pos.shape[1]} columns, expected 6", sample, "spaceranger_dir")
        pos.columns = POSITION_COLUMNS
    else:
        raise C2LError(
            f"no spot positions: {spatial} has none of tissue_positions.csv, tissue_positions_list.csv, "
            "tissue_positions.parquet",
            sample,
            "spaceranger_dir",
        )
    return pos.set_index(pos["barcode"].astype(str))


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """PNG pixels as uint8 (matplotlib reads 8-bit PNGs as float32 in [0, 1]: four times the size)."""
    if image.dtype == np.uint8:
        return image
    scale = 255.0 if image.max() <= 1.0 else 1.0
    return np.clip(np.round(image * scale), 0, 255).astype(np.uint8)


def read_images(spatial: Path, sample: str) -> tuple[dict, dict]:
    """Tissue images (hires optional, lowres optional) and the scale factors."""
    import matplotlib.image as mpimg

    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.exists():
        raise C2LError(f"{sf_path} is missing", sample, "spaceranger_dir")
    try:
        scalefactors = json.loads(sf_path.read_text())
    except json.JSONDecodeError as exc:
        raise C2LError(f"{sf_path.name} is not valid JSON: {exc}", sample, "spaceranger_dir") from exc
    images = {}
    for key in ("hires", "lowres"):
        p = spatial / f"tissue_{key}_image.png"
        if p.exists():
            images[key] = _as_uint8(mpimg.imread(p))
    if not images:
        LOG.warning("sample %s: no tissue image in %s; spatial maps are drawn without one", sample, spatial)
    return images, scalefactors


def key_genes(adata: ad.AnnData, sample: str | None = None) -> ad.AnnData:
    """Ensembl ids as var_names with SYMBOL kept, when the ids are Ensembl; symbols otherwise."""
    if "gene_ids" in adata.var:
        ids = adata.var["gene_ids"].astype(str)
        if "SYMBOL" not in adata.var:
            adata.var["SYMBOL"] = adata.var_names.astype(str)
        if looks_ensembl(ids, limit=None):
            adata.var_names = pd.Index(ids.to_numpy())
        else:
            adata.var_names = pd.Index(adata.var["SYMBOL"].astype(str).to_numpy())
    elif "SYMBOL" not in adata.var:
        adata.var["SYMBOL"] = adata.var_names.astype(str)
    duplicated = adata.var_names[adata.var_names.duplicated()]
    if len(duplicated):
        LOG.warning("sample %s: %d duplicated gene id(s) renamed with a -1, -2... suffix (e.g. %s): the renamed "
                    "copies match no reference gene", sample, len(duplicated), duplicated[0])
    adata.var_names_make_unique()
    adata.var.index.name = None
    return adata


def move_mt_genes(adata: ad.AnnData) -> ad.AnnData:
    """Move mitochondrial genes (MT- / mt-) out of X into obsm['MT'] (as the tutorial does)."""
    symbols = adata.var["SYMBOL"].astype(str)
    is_mt = symbols.map(lambda s: bool(MT_RE.match(s))).to_numpy()
    adata.var["MT_gene"] = is_mt
    mt = adata[:, is_mt].X
    adata.obsm["MT"] = np.asarray(mt.toarray() if sp.issparse(mt) else mt, dtype=np.float32)
    adata.uns["MT_genes"] = symbols[is_mt].tolist()
    return adata[:, ~is_mt].copy()


def read_spaceranger(sr_dir: Path, sample: str, bin_size: int | None = None) -> ad.AnnData:
    """Read a Space Ranger output folder into AnnData with `obsm['spatial']` and `uns['spatial']`; a Visium HD
    output is read at `bin_size` um bins (default 16)."""
    sr_dir = Path(sr_dir)
    if not sr_dir.is_dir():
        raise C2LError(f"{sr_dir} is not a folder", sample, "spaceranger_dir")
    hd = find_hd_bins(sr_dir, sample, bin_size)
    if hd is not None:
        LOG.info("sample %s: Visium HD, %s", sample, hd.name)
        sr_dir = hd
    matrix, is_raw = find_matrix(sr_dir, sample)
    if matrix.suffix == ".h5":
        adata, library_id = read_10x_h5(matrix, sample)
    else:
        adata, library_id = read_10x_mtx(matrix, sample), None
    spatial = matrix.parent / "spatial"
    if not spatial.is_dir():
        raise C2LError(f"no spatial/ folder beside {matrix.name}", sample, "spaceranger_dir")
    pos = read_positions(spatial, sample)
    check_unique_barcodes(adata.obs_names, sample, "spaceranger_dir", f"the matrix {matrix.name}")
    check_unique_barcodes(pos.index, sample, "spaceranger_dir", "the positions file")
    if is_raw:
        in_tissue = pos.index[pos["in_tissue"].astype(int) == 1]
        LOG.info("sample %s: raw matrix %s, keeping the %d in-tissue spots", sample, matrix.name, len(in_tissue))
        adata = adata[adata.obs_names.isin(in_tissue)].copy()
    missing = ~adata.obs_names.isin(pos.index)
    if missing.any():
        raise C2LError(
            f"{int(missing.sum())} barcode(s) of the matrix are not in the positions file (e.g. {adata.obs_names[missing][0]})",
            sample,
            "spaceranger_dir",
        )
    pos = pos.loc[adata.obs_names]
    for c in ("in_tissue", "array_row", "array_col"):
        adata.obs[c] = pos[c].astype(int).to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    images, scalefactors = read_images(spatial, sample)
    if library_id is None:
        LOG.info("sample %s: the matrix records no library id; using the sample id", sample)
        library_id = sample
    adata.uns["spatial"] = {
        library_id: {
            "images": images,
            "scalefactors": scalefactors,
            "metadata": {"source_matrix": matrix.name},
        }
    }
    if hd is not None:
        size = int(scalefactors.get("bin_size_um") or int(hd.name[len("square_"):-2]))
        adata.uns["spatial"][library_id]["metadata"].update({"visium_hd": True, "bin_size_um": size})
    adata.obs["library_id"] = library_id
    return adata


def check_unique_barcodes(barcodes: pd.Index, sample: str, field: str, what: str) -> None:
    """Every spot barcode once: a repeated barcode would silently take another spot's coordinates."""
    dup = pd.Index(barcodes)[pd.Index(barcodes).duplicated()]
    if len(dup):
        raise C2LError(f"{len(dup)} spot barcode(s) appear more than once in {what} (e.g. {dup[0]}): each spot "
                       "must be listed once (two files concatenated?)", sample, field)


def is_10x_h5(path: Path) -> bool:
    """A 10x feature-barcode HDF5 (a 'matrix' group with barcodes and features), which anndata cannot read as h5ad."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "matrix" in handle and "obs" not in handle and "barcodes" in handle["matrix"]
    except (OSError, ValueError):
        return False


def read_section_h5ad(path: Path, sample: str, layer: str | None = None) -> ad.AnnData:
    """Read a section given as h5ad: it must carry spot coordinates in `obsm['spatial']`; `layer`: the layer
    (or 'raw' for .raw) that holds the counts, when X does not."""
    if is_10x_h5(path):
        raise C2LError(f"{Path(path).name} is a 10x HDF5 count matrix, not an AnnData h5ad: give the Space Ranger folder "
                       "that holds it (with spatial/) in the column 'spaceranger_dir'", sample, "h5ad")
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise C2LError(f"cannot read {Path(path).name}: {exc}", sample, "h5ad") from exc
    check_unique_barcodes(adata.obs_names, sample, "h5ad", "obs_names")
    if layer:
        adata = select_counts(adata, layer, sample, "layer")
        adata.uns.setdefault("c2l_counts_source", ".raw" if layer == "raw" else f"layers['{layer}']")
    coords = adata.obsm.get("spatial")
    if coords is None or np.asarray(coords).ndim != 2 or np.asarray(coords).shape[1] < 2:
        keys = ", ".join(map(str, adata.obsm.keys()))
        have = f"; its obsm has {keys}: store the x, y coordinates as obsm['spatial']" if keys else ""
        raise C2LError(f"the h5ad has no spot coordinates (obsm['spatial'] with x, y columns){have}", sample, "h5ad")
    if not np.all(np.isfinite(np.asarray(coords, dtype=float))):
        raise C2LError("obsm['spatial'] holds NaN or infinite coordinates", sample, "h5ad")
    spatial = adata.uns.get("spatial") or {}
    library_id = next(iter(spatial), sample)
    if not spatial:
        adata.uns["spatial"] = {sample: {"images": {}, "scalefactors": {}, "metadata": {}}}
    if "library_id" not in adata.obs:
        adata.obs["library_id"] = library_id
    return adata


def section_qc(adata: ad.AnnData, sample: str) -> dict:
    """Per-section QC numbers: spots, genes, UMIs, genes per spot, MT fraction."""
    totals = row_totals(adata.X)
    mt = adata.obsm["MT"].sum(axis=1) if "MT" in adata.obsm else np.zeros(adata.n_obs)
    detected = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    all_umis = totals + mt
    return {
        "sample": sample,
        "n_spots": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_mt_genes": int(len(adata.uns.get("MT_genes", []))),
        "total_umis": float(all_umis.sum()),
        "median_umis_per_spot": float(np.median(all_umis)),
        "median_genes_per_spot": float(np.median(detected)),
        "mean_mt_fraction": float(np.mean(np.divide(mt, all_umis, out=np.zeros_like(mt, dtype=float), where=all_umis > 0))),
    }


def load_section(
    sample: str,
    spaceranger_dir: Path | None = None,
    h5ad: Path | None = None,
    obs: dict | None = None,
    drop_empty_spots: bool = False,
    bin_size: int | None = None,
    layer: str | None = None,
) -> tuple[ad.AnnData, dict]:
    """Read, check and annotate one section; returns the AnnData and its QC numbers. `obs`: descriptive
    metadata (the samplesheet's extra columns) written as constant obs columns."""
    if (spaceranger_dir is None) == (h5ad is None):
        raise C2LError("give exactly one of spaceranger_dir or h5ad", sample, "spaceranger_dir/h5ad")
    field = "spaceranger_dir" if spaceranger_dir is not None else "h5ad"
    if h5ad is not None and bin_size is not None:
        raise C2LError("bin_size is for Visium HD Space Ranger outputs (spaceranger_dir), not h5ad", sample, "bin_size")
    if layer and h5ad is None:
        raise C2LError("layer is for sections given as h5ad (a Space Ranger matrix holds raw counts)", sample, "layer")
    adata = (read_spaceranger(spaceranger_dir, sample, bin_size) if spaceranger_dir is not None
             else read_section_h5ad(h5ad, sample, layer))
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise C2LError(f"the section has {adata.n_obs} spots x {adata.n_vars} genes", sample, field)
    if h5ad is not None and not layer:
        check_raw_counts(adata.X, sample, field=f"{field} (counts)", adata=adata,
                         option="the samplesheet's column 'layer'")
    else:
        check_raw_counts(adata.X, sample, field=f"{field} (counts)" if not layer else f"layer ({layer})", chosen=layer)
    adata = key_genes(adata, sample)
    totals = row_totals(adata.X)
    empty = totals == 0
    if empty.any():
        if not drop_empty_spots:
            raise C2LError(
                f"{int(empty.sum())} spot(s) have no counts at all (e.g. {adata.obs_names[empty][0]}); "
                "remove them or pass --drop-empty-spots",
                sample,
                field,
            )
        LOG.warning("sample %s: dropping %d spots with no counts", sample, int(empty.sum()))
        adata = adata[~empty].copy()
    if "MT" not in adata.obsm:
        adata = move_mt_genes(adata)
    adata.obs["sample"] = pd.Categorical([sample] * adata.n_obs)
    meta = {k: v for k, v in (obs or {}).items() if v is not None}
    for key, value in meta.items():
        if key not in adata.obs:
            adata.obs[key] = pd.Categorical([str(value)] * adata.n_obs)
    adata.uns["c2l_sample"] = {"sample": sample, **{k: str(v) for k, v in meta.items()}}  # provenance only
    qc = section_qc(adata, sample)
    LOG.info(
        "sample %s: %d spots x %d genes, %d MT genes moved to obsm['MT'], median %.0f UMIs/spot",
        sample, qc["n_spots"], qc["n_genes"], qc["n_mt_genes"], qc["median_umis_per_spot"],
    )
    return adata, qc


def run(sample: str, spaceranger_dir: Path | None, h5ad: Path | None, obs: dict, drop_empty_spots: bool,
        outdir: Path, prefix: str, bin_size: int | None = None, layer: str | None = None) -> None:
    """The step: read one section; writes <prefix>.h5ad and <prefix>.qc.csv into `outdir` (both or none)."""
    from .runtime import staged_outputs, write_h5ad

    adata, qc = load_section(sample, spaceranger_dir, h5ad, obs, drop_empty_spots, bin_size, layer)
    with staged_outputs(outdir) as out:
        write_h5ad(adata, out.path(f"{prefix}.h5ad"))
        pd.DataFrame([qc]).to_csv(out.path(f"{prefix}.qc.csv"), index=False)
