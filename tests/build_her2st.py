"""Build the demo set (``her2st/``): HER2+ breast tumour section H1 + a breast-cancer single-cell reference.

Inputs (not copied into this repository; read from ``../shared/testdata/upstream/`` or ``--upstream-dir``, or
downloaded and checked by sha256):

- almaan/her2st (Andersson et al. 2021, Nat Commun 12:6012; the repository has no licence file: cite the paper,
  do not redistribute), legacy Spatial Transcriptomics, 100 um spots 200 um apart:
  ``data/ST-cnts/H1.tsv.gz`` (spots ``XxY`` x gene symbols, raw counts), ``data/ST-spotfiles/H1_selection.tsv``
  (array and adjusted array coordinates per spot), ``data/ST-pat/lbl/H1_labeled_coordinates.tsv`` (the
  pathologist's region per spot) and ``res/ST-deconv/props/major.zip`` (the study's stereoscope proportions);
- omnideconv/spacedeconv ``data/single_cell_data_2.RData`` (GPL-3; cells of patient CID4465 from Wu et al.
  2021, Nat Genet 53:1334, GEO GSE176078): an R ``SingleCellExperiment``, 1,564 cells x 29,733 genes.

Written to ``OUT/her2st/`` (built in a temporary folder and renamed into place):

- ``H1.h5ad``: 613 spots x 15,029 genes, raw integer counts in ``X``; ``obsm['spatial']`` = the adjusted array
  coordinates (``new_x``, ``new_y``) x 200, i.e. micrometres (y grows downwards, as on the H&E image, which is
  not included); ``uns['spatial']['H1']['scalefactors']['spot_diameter_fullres'] = 100`` (um); no image;
  ``obs['region']`` = the pathologist's label;
- ``reference.h5ad``: 1,564 cells x 29,733 genes, raw integer counts, ``obs`` ``celltype_major``,
  ``celltype_minor``, ``celltype_subset``, ``sample``;
- ``H1_regions.csv`` (spot, region) and ``H1_stereoscope_major.csv`` (spots x 8 types, the study's proportions),
  for ``benchmarks/her2st.py``;
- ``DERIVED.txt``: sources, licences, what was done.

Run: ``python tests/build_her2st.py --out DIR`` (``make demo`` does, into ``testdata_build/``). Another
pathologist-labelled section (A1 B1 C1 D1 E1 F1 G2): ``--section G2`` writes ``OUT/her2st_G2/`` with the same
files named after it; its files are not pinned by sha256 (H1's are): they come from the commit-pinned URLs or a
local copy and their sha256 is logged and written to ``DERIVED.txt``. Label rows with NA coordinates are
dropped (counted in the log); spots without a label get no region and are left out of benchmarks/her2st.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bin"))
from build_testdata import UpstreamFile, _r_sparse, download, replace_dir, sha256_of  # noqa: E402
from c2lnf.errors import C2LError  # noqa: E402

LOG = logging.getLogger("c2l")

HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
SPACEDECONV_COMMIT = "3c3317a"  # as named in ../shared/testdata/README.md; the sha256 below pins the file
_HER2ST_RAW = f"https://raw.githubusercontent.com/almaan/her2st/{HER2ST_COMMIT}"
_SPACEDECONV_RAW = "https://raw.githubusercontent.com/omnideconv/spacedeconv/main"

SECTION = "H1"  # the demo's section, the default
SPOT_PITCH_UM = 200.0  # legacy ST: centre-to-centre distance of neighbouring spots
SPOT_DIAMETER_UM = 100.0

#: the sha256 of the H1 files (the demo's); other sections' files are not pinned: they come from the commit-pinned
#: URLs (or a local copy) and their sha256 is logged and written to DERIVED.txt
PINNED = {
    "H1.tsv.gz": "90b391782535f38c9ab20fe8b38f44ebbfdad2201075a677a198cbef12c29b07",
    "H1_selection.tsv": "fc9cc5bad3a1e26e48f435696259df38b500042a9565486c15fd37ab7d8f9ed6",
    "H1_labeled_coordinates.tsv": "b65cbc99ed7a01281bc2eb87be87b902312e47ca91bc1f00ff351489b78434c3",
}

#: the study's sections (patients A-H; the pathologist labelled one section of each: A1 B1 C1 D1 E1 F1 G2 H1)
SECTION_NAME = re.compile(r"^[A-H][1-6]$")


def section_files(section: str) -> dict[str, UpstreamFile]:
    """The three per-section upstream files of `section` (counts, spot positions, the pathologist's labels)."""
    if not SECTION_NAME.match(section):
        raise C2LError(f"her2st section '{section}': expected a patient letter A-H and a number (A1, G2, H1...)",
                       section, "section")
    files = (
        (f"{section}.tsv.gz", f"data/ST-cnts/{section}.tsv.gz"),
        (f"{section}_selection.tsv", f"data/ST-spotfiles/{section}_selection.tsv"),
        (f"{section}_labeled_coordinates.tsv", f"data/ST-pat/lbl/{section}_labeled_coordinates.tsv"),
    )
    return {name: UpstreamFile(name, (f"her2st/{name}", rel), f"{_HER2ST_RAW}/{rel}", PINNED.get(name))
            for name, rel in files}


SHARED: dict[str, UpstreamFile] = {
    f.name: f
    for f in (
        UpstreamFile("stereoscope_props_major.zip",
                     ("her2st/stereoscope_props_major.zip", "res/ST-deconv/props/major.zip"),
                     f"{_HER2ST_RAW}/res/ST-deconv/props/major.zip",
                     "f7a6e7855a3879408bbba740bd2d89f06f532772a96f23bfcce6cb74c518eacf"),
        UpstreamFile("single_cell_data_2.RData",
                     ("spacedeconv/single_cell_data_2.RData", "data/single_cell_data_2.RData"),
                     f"{_SPACEDECONV_RAW}/data/single_cell_data_2.RData",
                     "5f719b65edd292429ff69aa1a648252508298069002337c785e9688f8af150fa"),
    )
}


def upstream(section: str = SECTION) -> dict[str, UpstreamFile]:
    """Every upstream input of a build of `section`."""
    return {**section_files(section), **SHARED}


#: the demo's inputs (H1)
UPSTREAM: dict[str, UpstreamFile] = upstream(SECTION)

REGIONS = ("connective tissue", "adipose tissue", "cancer in situ", "invasive cancer", "breast glands",
           "immune infiltrate", "undetermined")


def testdata_root() -> Path:
    """``$C2L_TESTDATA`` or ``shared/testdata`` beside the repository."""
    env = os.environ.get("C2L_TESTDATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


def default_upstream_dirs() -> list[Path]:
    d = testdata_root() / "upstream"
    return [d] if d.is_dir() else []


def fetch(dest: Path, local_dirs: list[Path], allow_download: bool = True, section: str = SECTION) -> dict[str, Path]:
    """Path of each input of `section`: a local copy with the right sha256 (any local copy for a file that is not
    pinned; under ``dest`` or a ``local_dirs`` entry, in either layout of ``UpstreamFile.relpaths``), else a
    download into ``dest``."""
    found: dict[str, Path] = {}
    for f in upstream(section).values():
        tried = []
        for base in [dest, *local_dirs]:
            for rel in f.relpaths:
                cand = Path(base) / rel
                if not cand.is_file():
                    continue
                got = sha256_of(cand)
                if f.sha256 is None:
                    LOG.info("%s: local copy %s, sha256 %s (not pinned)", f.name, cand, got)
                if f.sha256 is None or got == f.sha256:
                    found[f.name] = cand
                    break
                tried.append(f"{cand} (sha256 {got})")
            if f.name in found:
                break
        if f.name in found:
            continue
        if not allow_download:
            where = "; ".join(tried) if tried else "no local copy found"
            pin = f" (sha256 {f.sha256})" if f.sha256 else ""
            raise C2LError(f"{f.name}{pin} is not available locally ({where}) and downloads are "
                           f"disabled; pass --upstream-dir or allow downloads from {f.url}")
        LOG.info("downloading %s from %s", f.name, f.url)
        found[f.name] = download(f.url, dest / f.relpath, f.sha256, name=f.name)
    return found


def read_section(counts_tsv: Path, selection_tsv: Path, labels_tsv: Path, section: str = SECTION):
    """A section's counts, coordinates and regions -> AnnData (spots in the counts file's order). Label rows
    without coordinates (NA x or y: some of the study's label files have them) are dropped, with a count in the
    log; spots left without a label get no region (empty), also counted in the log."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    counts = pd.read_csv(counts_tsv, sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    if counts.index.has_duplicates or counts.columns.has_duplicates:
        raise C2LError(f"{counts_tsv.name}: duplicated spot or gene names")
    values = counts.to_numpy()
    if values.dtype.kind not in "iu" and not np.all(values == np.round(values)):
        raise C2LError(f"{counts_tsv.name}: counts are not integers")
    if (values < 0).any():
        raise C2LError(f"{counts_tsv.name}: negative counts")

    sel = pd.read_csv(selection_tsv, sep="\t")
    bad = sel[["x", "y"]].isna().any(axis=1)
    if bad.any():
        LOG.warning("%s: %d row(s) without array coordinates dropped", selection_tsv.name, int(bad.sum()))
        sel = sel[~bad]
    sel.index = sel["x"].astype(int).astype(str) + "x" + sel["y"].astype(int).astype(str)
    missing = counts.index.difference(sel.index)
    if len(missing):
        raise C2LError(f"{selection_tsv.name}: no coordinates for {len(missing)} spots, e.g. {missing[0]}")
    sel = sel.loc[counts.index]

    lbl = pd.read_csv(labels_tsv, sep="\t")
    for col in ("x", "y", "label"):
        if col not in lbl:
            raise C2LError(f"{labels_tsv.name}: no column '{col}' (columns: {', '.join(map(str, lbl.columns))})")
    no_xy = lbl[["x", "y"]].isna().any(axis=1)
    if no_xy.any():
        LOG.warning("%s: %d label row(s) with NA coordinates dropped (of %d)", labels_tsv.name, int(no_xy.sum()),
                    len(lbl))
        lbl = lbl[~no_xy]
    # the label file names spots by pixel; its x, y are the adjusted array coordinates (new_x, new_y)
    lbl.index = lbl["x"].round().astype(int).astype(str) + "x" + lbl["y"].round().astype(int).astype(str)
    if lbl.index.has_duplicates:
        raise C2LError(f"{labels_tsv.name}: two labelled spots round to the same array position")
    unlabelled = counts.index.difference(lbl.index)
    if len(unlabelled) == len(counts.index):
        raise C2LError(f"{labels_tsv.name}: no spot of {counts_tsv.name} has a region")
    if len(unlabelled):
        LOG.warning("%s: %d of %d spots have no region (e.g. %s); they are left out of the region scores",
                    labels_tsv.name, len(unlabelled), len(counts.index), unlabelled[0])
    lbl = lbl.reindex(counts.index)
    have = lbl["label"].notna().to_numpy()
    off = np.abs(lbl[["x", "y"]].to_numpy(float)[have] - sel[["new_x", "new_y"]].to_numpy(float)[have]).max()
    if off > 0.05:
        raise C2LError(f"{labels_tsv.name} and {selection_tsv.name} disagree on spot positions (by {off:.2f})")
    unknown = sorted(set(lbl["label"].dropna()) - set(REGIONS))
    if unknown:
        raise C2LError(f"{labels_tsv.name}: unknown region labels {unknown}")

    xy = sel[["new_x", "new_y"]].to_numpy(float) * SPOT_PITCH_UM
    obs = pd.DataFrame({"region": pd.Categorical(lbl["label"].to_numpy(), categories=list(REGIONS)),
                        "array_x": sel["x"].to_numpy(int), "array_y": sel["y"].to_numpy(int)},
                       index=pd.Index(counts.index, name=None))
    adata = ad.AnnData(X=sp.csr_matrix(values.astype(np.int32)), obs=obs,
                       var=pd.DataFrame(index=pd.Index(counts.columns.astype(str))))
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {section: {
        "images": {},
        "scalefactors": {"spot_diameter_fullres": SPOT_DIAMETER_UM, "tissue_hires_scalef": 1.0,
                         "tissue_lowres_scalef": 1.0},
        "metadata": {"coordinates": "micrometres (adjusted ST array position x 200 um); no image",
                     "source": f"almaan/her2st@{HER2ST_COMMIT} data/ST-cnts/{section}.tsv.gz"},
    }}
    return adata


def read_reference(rdata_path: Path):
    """spacedeconv's SingleCellExperiment -> AnnData (cells x genes, raw counts, cell-type labels)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    try:
        import rdata
    except ImportError as e:  # in requirements.lock; only this builder needs it
        raise C2LError("reading the .RData reference needs the 'rdata' package (pip install rdata)") from e
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing constructor")
        objs = rdata.conversion.convert(rdata.parser.parse_file(rdata_path))
    if len(objs) != 1:
        raise C2LError(f"{rdata_path.name}: expected one object, found {sorted(objs)}")
    sce = next(iter(objs.values()))
    try:
        mat = sce.assays.data.listData["counts"]
        genes = np.asarray(sce.rowRanges.partitioning.NAMES).astype(str)
        col = sce.colData
        cells = np.asarray(col.rownames).astype(str)
        meta = {k: np.asarray(v) for k, v in col.listData.items()}
    except (AttributeError, KeyError) as e:
        raise C2LError(f"{rdata_path.name}: not the expected SingleCellExperiment layout ({e})") from e
    mat.Dimnames = [genes, cells]  # the dgCMatrix carries no dimnames of its own
    counts, genes, cells = _r_sparse(mat, f"{rdata_path.name} counts")
    if counts.shape != (len(genes), len(cells)):
        raise C2LError(f"{rdata_path.name}: counts {counts.shape} vs {len(genes)} genes x {len(cells)} cells")
    if len(set(genes)) != len(genes):
        raise C2LError(f"{rdata_path.name}: duplicated gene names")
    for key in ("celltype_major", "celltype_minor", "celltype_subset"):
        if key not in meta or len(meta[key]) != len(cells):
            raise C2LError(f"{rdata_path.name}: colData lacks {key}")
    obs = pd.DataFrame({
        "celltype_major": pd.Categorical(meta["celltype_major"].astype(str)),
        "celltype_minor": pd.Categorical(meta["celltype_minor"].astype(str)),
        "celltype_subset": pd.Categorical(meta["celltype_subset"].astype(str)),
        "sample": pd.Categorical(meta["orig.ident"].astype(str)),
        "subtype": pd.Categorical(meta["subtype"].astype(str)),
        "nCount_RNA": meta["nCount_RNA"].astype(np.int64),
    }, index=pd.Index(cells))
    X = sp.csr_matrix(counts.T)
    X.sort_indices()
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))


def read_stereoscope(zip_path: Path, spots, section: str = SECTION) -> "pd.DataFrame":
    import pandas as pd

    member = f"major/{section}-proportion.tsv"
    with zipfile.ZipFile(zip_path) as z:
        if member not in z.namelist():
            raise C2LError(f"{zip_path.name}: no {member}")
        with z.open(member) as fh:
            props = pd.read_csv(fh, sep="\t", index_col=0)
    props.index = props.index.astype(str)
    missing = pd.Index(spots).difference(props.index)
    if len(missing):
        raise C2LError(f"{zip_path.name}: {member} lacks {len(missing)} spots, e.g. {missing[0]}")
    return props.loc[list(spots)]


def folder_name(section: str = SECTION) -> str:
    """``her2st`` for the demo's section (H1), ``her2st_<section>`` for another."""
    return "her2st" if section == SECTION else f"her2st_{section}"


def build_her2st(files: dict[str, Path], out_dir: Path, section: str = SECTION) -> Path:
    """Write ``out_dir/her2st/`` (``her2st_<section>/`` for a section other than H1; see the module docstring);
    returns that folder. All or nothing."""
    import numpy as np

    missing = [k for k in upstream(section) if k not in files]
    if missing:
        raise C2LError(f"missing upstream files: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / folder_name(section)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".her2st.tmp-"))
    try:
        name = section
        section = read_section(files[f"{name}.tsv.gz"], files[f"{name}_selection.tsv"],
                               files[f"{name}_labeled_coordinates.tsv"], name)
        ref = read_reference(files["single_cell_data_2.RData"])
        stereo = read_stereoscope(files["stereoscope_props_major.zip"], section.obs_names, name)
        section.write_h5ad(tmp / f"{name}.h5ad")
        ref.write_h5ad(tmp / "reference.h5ad")
        section.obs[["region"]].rename_axis("spot").to_csv(tmp / f"{name}_regions.csv")
        stereo.rename_axis("spot").to_csv(tmp / f"{name}_stereoscope_major.csv")
        shared = len(section.var_names.intersection(ref.var_names))
        info = {
            "section": {"name": name, "spots": section.n_obs, "genes": section.n_vars,
                        "spots_without_region": int(section.obs["region"].isna().sum()),
                        "median_umis": float(np.median(np.asarray(section.X.sum(axis=1)).ravel()))},
            "sha256": {k: sha256_of(Path(v)) for k, v in sorted(files.items()) if k.startswith(name)},
            "reference": {"cells": ref.n_obs, "genes": ref.n_vars,
                          "celltype_major": ref.obs["celltype_major"].value_counts().to_dict()},
            "shared_genes": shared,
            "regions": section.obs["region"].value_counts().to_dict(),
        }
        (tmp / "DERIVED.txt").write_text(
            "Demo set built by tests/build_her2st.py (cell2location-nf). Not for redistribution.\n\n"
            f"{name}.h5ad, {name}_regions.csv, {name}_stereoscope_major.csv: almaan/her2st@{HER2ST_COMMIT} (Andersson et al. "
            "2021, Nat Commun 12:6012; Zenodo 3957257; the repository carries no licence: cite the paper). Counts "
            f"unchanged (spots x gene symbols); obsm['spatial'] = (new_x, new_y) of {name}_selection.tsv x 200 um; "
            f"obs['region'] from {name}_labeled_coordinates.tsv matched on the rounded array position; stereoscope "
            f"proportions = res/ST-deconv/props/major.zip major/{name}-proportion.tsv.\n"
            "reference.h5ad: omnideconv/spacedeconv data/single_cell_data_2.RData (GPL-3), cells of patient "
            "CID4465 (TNBC) from Wu et al. 2021 (Nat Genet 53:1334, GEO GSE176078); counts and colData unchanged.\n\n"
            + json.dumps(info, indent=1, default=int) + "\n"
        )
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@click.command("build-her2st")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write her2st/ into (downloads are kept in OUT/upstream/).")
@click.option("--upstream-dir", "upstream_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              default=lambda: [str(p) for p in default_upstream_dirs()],
              show_default="../shared/testdata/upstream if present",
              help="Folder with local copies (her2st/, spacedeconv/ as in the shared test data, or the upstream "
                   "repositories' layouts); repeatable.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download inputs that are not found locally (checked by sha256 where pinned: H1's files).")
@click.option("--section", default=SECTION, show_default=True,
              help="her2st section (a pathologist-labelled one: A1 B1 C1 D1 E1 F1 G2 H1); written to "
                   "OUT/her2st/ for H1, OUT/her2st_<SECTION>/ for another.")
def main(out: Path, upstream_dirs: tuple[Path, ...], download: bool, section: str) -> None:
    """Build the demo set (her2st/: section H1, or another with --section, + breast-cancer reference) from its
    public sources."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        files = fetch(out / "upstream", [Path(d) for d in upstream_dirs], allow_download=download, section=section)
        result = build_her2st(files, out, section)
    except C2LError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{result} ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
