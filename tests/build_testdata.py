"""Rebuild the lymph node test set (``lymph_node/``) from its public upstream files.

The set in ``../shared/testdata/lymph_node/`` was derived from three files of dmcable/spacexr (GPL-3) and the
standard Visium V1 barcode layout (a copy of which ships with satijalab/seurat's tests, MIT). Those files are not
copied into this repository; this module finds local copies (checked by sha256) or downloads them, then re-lays
them out into a Space Ranger-style ``visium/`` folder and a ``reference.h5ad``:

- ``expr.rds``: sparse genes x barcodes counts (spacexr's downsample of 10x V1_Human_Lymph_Node);
- ``coords.rds``: pixel coordinates (x, y) per barcode;
- ``ref_downsampled.rds``: spacexr ``Reference`` (counts, cell_types, nUMI); the donor/reaction id is the suffix
  after the last ``.1.`` of each cell name;
- ``tissue_positions_list.csv``: the V1 layout (4992 barcodes, array row/col).

Pixel orientation and scale factors are re-derived here by fitting the spot lattice, not copied.

Not part of the pipeline's package (bin/c2lnf): run it as `python tests/build_testdata.py --out DIR` (make demo
does when ../shared/testdata is absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bin"))
from c2lnf.errors import C2LError  # noqa: E402

if TYPE_CHECKING:  # numpy/pandas/scipy are imported where used, so that `c2l --help` stays fast
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

LOG = logging.getLogger("c2l")

SPACEXR_COMMIT = "744153c633da7ff70d0988308a160633fcf44af7"
SEURAT_COMMIT = "17d6f4fc6f57a9092871b85c62f9524b173b09df"
_SPACEXR_RAW = f"https://raw.githubusercontent.com/dmcable/spacexr/{SPACEXR_COMMIT}/inst/extdata"
_SEURAT_RAW = f"https://raw.githubusercontent.com/satijalab/seurat/{SEURAT_COMMIT}/tests/testdata/visium"

#: where the V1 layout file lies inside the shared test data folder
V1_FIXTURE_RELPATH = "spaceranger_fixtures/mouse_brain_100genes/spatial/tissue_positions_list.csv"

LIBRARY_ID = "V1_Human_Lymph_Node_subset"
GENOME = "GRCh38"
HIRES_SIZE = 2000  # px, placeholder image side
LOWRES_SIZE = 600
PLACEHOLDER_GREY = 235
SPOT_DIAMETER_UM = 55.0  # Visium spot diameter
SPOT_PITCH_UM = 100.0  # centre-to-centre distance of spots two array columns apart
FIDUCIAL_TO_SPOT = 1.6154  # fiducial_diameter_fullres / spot_diameter_fullres in Space Ranger's V1 scalefactors
MAX_LATTICE_RESIDUAL_PX = 5.0  # a fit worse than this means the coords do not belong to the V1 layout


@dataclass(frozen=True)
class UpstreamFile:
    """One upstream input: where it lies under an upstream dir (first path also the download layout)."""

    name: str
    relpaths: tuple[str, ...]
    url: str
    sha256: str

    @property
    def relpath(self) -> str:
        return self.relpaths[0]


#: The four public inputs. ``relpaths[0]`` is the layout of ``../shared/testdata/upstream/spacexr/`` (and of
#: downloads); the others are accepted too (a spacexr checkout's ``inst/extdata``, the V1 fixture folder).
UPSTREAM: dict[str, UpstreamFile] = {
    f.name: f
    for f in (
        UpstreamFile(
            "expr.rds",
            ("SpatialRNA/VisiumLymphVignette/expr.rds", "inst/extdata/SpatialRNA/VisiumLymphVignette/expr.rds"),
            f"{_SPACEXR_RAW}/SpatialRNA/VisiumLymphVignette/expr.rds",
            "512c35cdc5c10c40b6f053139951e4953561d987b7c9e0adf2efd21be5729f7e",
        ),
        UpstreamFile(
            "coords.rds",
            ("SpatialRNA/VisiumLymphVignette/coords.rds", "inst/extdata/SpatialRNA/VisiumLymphVignette/coords.rds"),
            f"{_SPACEXR_RAW}/SpatialRNA/VisiumLymphVignette/coords.rds",
            "1d91c345d104797e063512aaba621fd8171d37f200d61c493f12f950851b4dc1",
        ),
        UpstreamFile(
            "ref_downsampled.rds",
            (
                "Reference/Visium_Lymph_Ref/ref_downsampled.rds",
                "inst/extdata/Reference/Visium_Lymph_Ref/ref_downsampled.rds",
            ),
            f"{_SPACEXR_RAW}/Reference/Visium_Lymph_Ref/ref_downsampled.rds",
            "551e31799c07f54faefdf66c41f35b2c733c7412c22e6563670435e2fb821978",
        ),
        UpstreamFile(
            "tissue_positions_list.csv",
            ("visium_v1/tissue_positions_list.csv", "spatial/tissue_positions_list.csv", V1_FIXTURE_RELPATH),
            f"{_SEURAT_RAW}/spatial/tissue_positions_list.csv",
            "1a27983a745840e6f9493fd4ebe98bb92ba66679bf1612381b7fd01f38863742",
        ),
    )
}


class ChecksumError(C2LError):
    """An upstream file's sha256 differs from the pinned one."""


# --------------------------------------------------------------------------------------------------- locations


def testdata_root() -> Path:
    """``$C2L_TESTDATA`` or ``../shared/testdata`` next to the repository root."""
    env = os.environ.get("C2L_TESTDATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


def default_upstream_dirs() -> list[Path]:
    """The shared upstream copy, if this machine has one."""
    d = testdata_root() / "upstream" / "spacexr"
    return [d] if d.is_dir() else []


# --------------------------------------------------------------------------------------------------- fetching


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _candidates(f: UpstreamFile, dest: Path, local_dirs: list[Path]) -> list[Path]:
    out: list[Path] = [dest / f.relpath]
    for d in local_dirs:
        out.extend(Path(d) / rel for rel in f.relpaths)
    if f.name == "tissue_positions_list.csv":
        # the V1 layout lives in the shared test data next to upstream/spacexr, not under it
        for d in local_dirs:
            out.extend(anc / V1_FIXTURE_RELPATH for anc in list(Path(d).resolve().parents)[:2])
        out.append(testdata_root() / V1_FIXTURE_RELPATH)
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def download(url: str, target: Path, sha256: str | None, name: str | None = None, timeout: float = 120.0) -> Path:
    """Download ``url`` to ``target`` through a temporary name; verify sha256 before the rename (``None``: a file
    not pinned, from a commit-pinned URL; its sha256 is logged instead).

    A failed or mismatching download leaves nothing behind.
    """
    import urllib.error  # here, not at the top: urllib.request pulls in http, ssl and email for every `c2l` call
    import urllib.request

    name = name or target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        got = h.hexdigest()
        if sha256 is None:
            logging.getLogger("c2l").info("%s: sha256 %s (not pinned)", name, got)
        elif got != sha256:
            raise ChecksumError(
                f"checksum mismatch for {name} downloaded from {url}: expected sha256 {sha256}, got {got}; "
                "the file was not kept"
            )
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError) as e:  # URLError is an OSError; named for clarity
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise C2LError(
            f"could not download {name} from {url}: {reason}; "
            "without network access, point --upstream-dir at local copies of the upstream files"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def fetch_upstream(dest: Path, local_dirs: list[Path], allow_download: bool = True) -> dict[str, Path]:
    """Path of each upstream file (keyed by ``UPSTREAM`` name): a local copy with the right sha256, else a download.

    Local copies are looked for in ``dest`` (earlier downloads) and each of ``local_dirs`` with the same relative
    layout, plus the V1 layout file in the shared test data. Downloads go to ``dest/<relpath>``.
    """
    dest = Path(dest)
    found: dict[str, Path] = {}
    for f in UPSTREAM.values():
        tried = []
        for cand in _candidates(f, dest, local_dirs):
            if not cand.is_file():
                continue
            got = sha256_of(cand)
            if got == f.sha256:
                found[f.name] = cand
                break
            LOG.warning("ignoring %s: sha256 %s, expected %s", cand, got, f.sha256)
            tried.append(f"{cand} (sha256 {got})")
        if f.name in found:
            continue
        if not allow_download:
            where = "; ".join(tried) if tried else "no local copy found"
            raise C2LError(
                f"{f.name} (sha256 {f.sha256}) is not available locally ({where}) and downloads are disabled; "
                f"pass --upstream-dir or allow downloads from {f.url}"
            )
        LOG.info("downloading %s from %s", f.name, f.url)
        found[f.name] = download(f.url, dest / f.relpath, f.sha256, name=f.name)
    return found


# --------------------------------------------------------------------------------------------------- reading


def _read_rds(path: Path):
    import rdata

    with warnings.catch_warnings():
        # Matrix / spacexr S4 classes have no rdata constructor: their slots come back as a namespace
        warnings.filterwarnings("ignore", message="Missing constructor")
        return rdata.conversion.convert(rdata.parser.parse_file(path))


def _r_sparse(obj, what: str) -> tuple[sp.spmatrix, np.ndarray, np.ndarray]:
    """A Matrix dgCMatrix/dgTMatrix read by rdata -> (scipy matrix, row names, column names)."""
    import numpy as np
    import scipy.sparse as sp

    cls = str(np.asarray(getattr(obj, "class", [""]))[0]) if hasattr(obj, "class") else ""
    shape = tuple(int(v) for v in obj.Dim)
    x = np.asarray(obj.x)
    if not np.all(x == np.round(x)) or (x.size and x.min() < 0):
        raise C2LError(f"{what}: counts are not non-negative integers")
    data = x.astype(np.int32)
    if hasattr(obj, "p"):
        m = sp.csc_matrix((data, np.asarray(obj.i), np.asarray(obj.p)), shape=shape)
    elif hasattr(obj, "j"):
        m = sp.coo_matrix((data, (np.asarray(obj.i), np.asarray(obj.j))), shape=shape).tocsc()
    else:
        raise C2LError(f"{what}: unsupported R matrix class {cls!r}")
    m.sum_duplicates()
    m.sort_indices()
    rows, cols = (np.asarray(v).astype(str) for v in obj.Dimnames)
    return m, rows, cols


def read_v1_layout(path: Path) -> pd.DataFrame:
    """Space Ranger 1 positions list -> DataFrame indexed by barcode with array_row, array_col (file order)."""
    import pandas as pd

    df = pd.read_csv(path, header=None, usecols=[0, 2, 3], names=["barcode", "array_row", "array_col"], index_col=0)
    if df.index.has_duplicates:
        raise C2LError(f"{path}: duplicated barcodes in the V1 layout")
    return df


# --------------------------------------------------------------------------------------------------- lattice


@dataclass
class LatticeFit:
    orientation: str  # "row=x,col=y" or "row=y,col=x"
    coef_row: np.ndarray  # pixel_row ~ coef[0]*array_row + coef[1]*array_col + coef[2]
    coef_col: np.ndarray
    max_residual: float

    def predict(self, array_rc: np.ndarray) -> np.ndarray:
        import numpy as np

        X = np.c_[array_rc, np.ones(len(array_rc))]
        return np.c_[X @ self.coef_row, X @ self.coef_col]

    @property
    def px_per_pitch(self) -> float:
        """Pixels between spot centres two array columns apart (100 µm)."""
        import numpy as np

        return float(np.hypot(2 * self.coef_row[1], 2 * self.coef_col[1]))


def fit_lattice(array_rc: np.ndarray, xy: np.ndarray) -> LatticeFit:
    """Affine fit of pixel (row, col) on array (row, col) for both x/y orientations; keep the tighter one."""
    import numpy as np

    X = np.c_[array_rc.astype(float), np.ones(len(array_rc))]
    best: LatticeFit | None = None
    for orientation, (r, c) in (("row=x,col=y", (0, 1)), ("row=y,col=x", (1, 0))):
        targets = xy[:, [r, c]].astype(float)
        coefs = []
        resid = 0.0
        for k in range(2):
            coef, *_ = np.linalg.lstsq(X, targets[:, k], rcond=None)
            coefs.append(coef)
            resid = max(resid, float(np.abs(X @ coef - targets[:, k]).max()))
        fit = LatticeFit(orientation, coefs[0], coefs[1], resid)
        if best is None or fit.max_residual < best.max_residual:
            best = fit
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------- writing


def _write_png(path: Path, size: int) -> None:
    from PIL import Image

    Image.new("RGB", (size, size), (PLACEHOLDER_GREY,) * 3).save(path)


def _write_10x_h5(path: Path, counts: sp.csc_matrix, genes: np.ndarray, barcodes: np.ndarray) -> None:
    """10x HDF5 v3 layout (features x barcodes, CSC), gene symbols as ids and names."""
    import h5py
    import numpy as np

    def fixed(values) -> np.ndarray:
        return np.array([str(v).encode() for v in values])

    n_genes = len(genes)
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([LIBRARY_ID.encode()])
        f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        f.attrs["software_version"] = "derived-from-public-data (not spaceranger)"
        f.attrs["version"] = np.int64(2)
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=fixed(barcodes))
        m.create_dataset("data", data=counts.data.astype(np.int32), compression="gzip", compression_opts=4)
        m.create_dataset("indices", data=counts.indices.astype(np.int64), compression="gzip", compression_opts=4)
        m.create_dataset("indptr", data=counts.indptr.astype(np.int64), compression="gzip", compression_opts=4)
        m.create_dataset("shape", data=np.array(counts.shape, dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=fixed(["genome"]))
        feats.create_dataset("feature_type", data=fixed(["Gene Expression"] * n_genes))
        feats.create_dataset("genome", data=fixed([GENOME] * n_genes))
        feats.create_dataset("id", data=fixed(genes))
        feats.create_dataset("name", data=fixed(genes))


def _build_visium(files: dict[str, Path], visium: Path) -> dict:
    import numpy as np
    import pandas as pd

    counts, genes, barcodes = _r_sparse(_read_rds(files["expr.rds"]), "expr.rds")
    if counts.shape != (len(genes), len(barcodes)):
        raise C2LError(f"expr.rds: matrix shape {counts.shape} does not match its names")
    coords = _read_rds(files["coords.rds"])
    coords.index = coords.index.astype(str)
    layout = read_v1_layout(files["tissue_positions_list.csv"])

    missing = coords.index.difference(layout.index)
    if len(missing):
        raise C2LError(f"{len(missing)} barcodes of coords.rds are not in the V1 layout (e.g. {missing[0]})")
    if set(coords.index) != set(barcodes):
        raise C2LError("coords.rds and expr.rds hold different barcodes")

    xy = coords.loc[:, ["x", "y"]].to_numpy(dtype=np.int64)
    array_rc = layout.loc[coords.index, ["array_row", "array_col"]].to_numpy()
    fit = fit_lattice(array_rc, xy)
    if fit.max_residual > MAX_LATTICE_RESIDUAL_PX:
        raise C2LError(f"pixel coordinates do not fit the V1 lattice (max residual {fit.max_residual:.2f}px)")

    # every V1 spot: in-tissue ones keep spacexr's pixels, the others sit on the fitted lattice
    pixels = np.rint(fit.predict(layout[["array_row", "array_col"]].to_numpy())).astype(np.int64)
    in_tissue = layout.index.isin(coords.index)
    pos_in = layout.index.get_indexer(coords.index)
    pixels[pos_in] = xy if fit.orientation == "row=x,col=y" else xy[:, ::-1]
    positions = pd.DataFrame(
        {
            "in_tissue": in_tissue.astype(np.int64),
            "array_row": layout["array_row"].to_numpy(np.int64),
            "array_col": layout["array_col"].to_numpy(np.int64),
            "pxl_row_in_fullres": pixels[:, 0],
            "pxl_col_in_fullres": pixels[:, 1],
        },
        index=layout.index,
    )

    spot = fit.px_per_pitch * SPOT_DIAMETER_UM / SPOT_PITCH_UM
    extent = int(pixels.max())  # the placeholder "full-res image" spans the whole lattice
    scalefactors = {
        "spot_diameter_fullres": spot,
        "fiducial_diameter_fullres": spot * FIDUCIAL_TO_SPOT,
        "tissue_hires_scalef": HIRES_SIZE / extent,
        "tissue_lowres_scalef": LOWRES_SIZE / extent,
    }

    spatial = visium / "spatial"
    spatial.mkdir(parents=True)
    _write_10x_h5(visium / "filtered_feature_bc_matrix.h5", counts, genes, barcodes)
    positions.to_csv(spatial / "tissue_positions_list.csv", header=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=1))
    _write_png(spatial / "tissue_hires_image.png", HIRES_SIZE)
    _write_png(spatial / "tissue_lowres_image.png", LOWRES_SIZE)
    (visium / "DERIVED.txt").write_text(
        "Derived from spacexr inst/extdata/SpatialRNA/VisiumLymphVignette (10x V1_Human_Lymph_Node, downsampled "
        f"by spacexr authors: {len(barcodes)} spots x {len(genes)} genes). array_row/col from the standard Visium "
        f"V1 barcode layout; pixel coords from coords.rds with orientation '{fit.orientation}' (chosen by lattice "
        f"fit, max residual {fit.max_residual:.2f}px). scalefactors computed from the lattice (not from 10x). "
        "Tissue images are plain PLACEHOLDERS (not H&E). gene ids = gene symbols.\n"
        f"Rebuilt by c2lnf.testdata from dmcable/spacexr@{SPACEXR_COMMIT} (GPL-3) and the V1 layout of "
        f"satijalab/seurat@{SEURAT_COMMIT} tests/testdata/visium (MIT).\n"
    )
    return {"orientation": fit.orientation, "max_residual": fit.max_residual, **scalefactors}


def _build_reference(path: Path, out: Path) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    ref = _read_rds(path)
    counts, genes, cells = _r_sparse(ref.counts, "ref_downsampled.rds counts")
    cell_types = ref.cell_types
    numi = ref.nUMI
    numi_names = np.asarray(numi.coords[numi.dims[0]].values).astype(str) if hasattr(numi, "coords") else cells
    if len(cell_types) != len(cells) or not np.array_equal(numi_names, cells):
        raise C2LError("ref_downsampled.rds: cell_types / nUMI do not line up with the count matrix columns")
    if not all(".1." in c for c in cells):
        raise C2LError("ref_downsampled.rds: cell names lack the '.1.<sample>' suffix")
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.asarray(cell_types), categories=list(cell_types.categories)),
            "sample": pd.Categorical([c.rsplit(".1.", 1)[1] for c in cells]),
            "nUMI_full_transcriptome": np.asarray(numi).astype(np.int64),
        },
        index=pd.Index(cells),
    )
    X = sp.csr_matrix(counts.T)  # cells x genes
    X.sort_indices()
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.write_h5ad(out)


def build_lymph_node(files: dict[str, Path], out_dir: Path) -> Path:
    """Write ``out_dir/lymph_node/{visium/..., reference.h5ad}`` from the upstream files; returns that folder.

    Built in a temporary folder inside ``out_dir`` and renamed into place at the end, so an interrupted build
    never leaves a half-written set (an existing set is replaced only once the new one is complete).
    """
    missing = [k for k in UPSTREAM if k not in files]
    if missing:
        raise C2LError(f"missing upstream files: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "lymph_node"
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".lymph_node.tmp-"))
    try:
        info = _build_visium(files, tmp / "visium")
        _build_reference(files["ref_downsampled.rds"], tmp / "reference.h5ad")
        LOG.info("lattice: %s, max residual %.2fpx", info["orientation"], info["max_residual"])
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final`, replacing an earlier `final` only once `tmp` is complete (the old
    one is moved aside first and removed after)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- CLI


@click.command("build-testdata")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write lymph_node/ into (downloads are kept in OUT/upstream/).")
@click.option("--upstream-dir", "upstream_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              default=lambda: [str(p) for p in default_upstream_dirs()],
              show_default="../shared/testdata/upstream/spacexr if present",
              help="Folder with local copies of the upstream files (spacexr inst/extdata layout); repeatable.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download upstream files that are not found locally (checked by sha256).")
def build_testdata(out: Path, upstream_dirs: tuple[Path, ...], download: bool) -> None:
    """Recreate the lymph node test set (visium/ + reference.h5ad) from public upstream files."""
    t0 = time.perf_counter()
    try:
        files = fetch_upstream(out / "upstream", [Path(d) for d in upstream_dirs], allow_download=download)
        result = build_lymph_node(files, out)
    except C2LError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{result} ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    build_testdata()
