"""Bad inputs through the CLI: exit 1 (data) or 2 (usage), one clear line naming sample and field, no outputs.

docs/bad_inputs.md lists these cases with the messages asserted here. Set C2L_RECORD_ERRORS=<file> to have the
tests append every error line they see (JSON lines) when the table needs refreshing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import FIXTURES, LYMPH_NODE, assert_failed_cleanly, invoke, require, run_c2l


def check(result, code: int, *fragments: str, outdir: Path, case: str, step: str) -> str:
    line = assert_failed_cleanly(result, code, *fragments, outdir=outdir)
    record = os.environ.get("C2L_RECORD_ERRORS")
    if record:
        with open(record, "a") as fh:
            fh.write(json.dumps({"case": case, "step": step, "exit": code, "message": line}) + "\n")
    return line


# ---------------------------------------------------------------- inputs built for the failures


def plain_section(n_spots=30, genes=("G1", "G2", "G3", "G4", "G5"), seed=0, **uns) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.poisson(4.0, size=(n_spots, len(genes))).astype(np.float32)
    X[:, 0] += 1
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=[f"AAAC{i:04d}-1" for i in range(n_spots)]),
                       var=pd.DataFrame(index=list(genes)))
    adata.obsm["spatial"] = rng.uniform(0, 2000, size=(n_spots, 2))
    adata.uns.update(uns)
    return adata


@pytest.fixture(scope="module")
def small_reference() -> ad.AnnData:
    """The lymph node reference cut to 300 genes (fast to write in many broken variants)."""
    ref = ad.read_h5ad(require(LYMPH_NODE / "reference.h5ad"))
    return ref[:, :300].copy()


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def mtx_section(tmp_path_factory) -> Path:
    """The 22-spot mouse brain section read by read-visium (Ensembl ids as var_names, SYMBOL kept)."""
    out = tmp_path_factory.mktemp("mtx_section")
    invoke("read-visium", "--sample", "mtx", "--spaceranger-dir", require(FIXTURES / "mouse_brain_mtx_50x50"),
           "--outdir", out)
    return out / "mtx.h5ad"


def signatures_for(genes, types=("Astro", "Neuron", "Oligo"), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.uniform(0.1, 5, size=(len(genes), len(types))), index=list(genes), columns=list(types))
    table.index.name = "gene"
    return table


# ---------------------------------------------------------------- read-visium


def test_spaceranger_dir_without_matrix(tmp_path):
    sr = tmp_path / "S1"
    shutil.copytree(require(FIXTURES / "human_sr1_100x100" / "spatial"), sr / "spatial")
    out = tmp_path / "out"
    proc = run_c2l("read-visium", "--sample", "S1", "--spaceranger-dir", sr, "--outdir", out, expect=None)
    check(proc, 1, "sample 'S1', field 'spaceranger_dir': no count matrix in", "filtered_feature_bc_matrix.h5",
          outdir=out, case="Space Ranger folder without a count matrix", step="read-visium")


def test_corrupt_h5(tmp_path):
    sr = tmp_path / "S1"
    shutil.copytree(require(FIXTURES / "human_sr1_100x100" / "spatial"), sr / "spatial")
    (sr / "filtered_feature_bc_matrix.h5").write_text("this is not an HDF5 file\n")
    out = tmp_path / "out"
    proc = run_c2l("read-visium", "--sample", "S1", "--spaceranger-dir", sr, "--outdir", out, expect=None)
    check(proc, 1, "sample 'S1', field 'spaceranger_dir': cannot read filtered_feature_bc_matrix.h5",
          "corrupt or not a 10x HDF5 file", outdir=out, case="corrupt h5 (a text file named filtered_feature_bc_matrix.h5)",
          step="read-visium")


def test_spaceranger_dir_without_spatial_folder(tmp_path):
    sr = tmp_path / "S1"
    sr.mkdir()
    shutil.copy(require(FIXTURES / "human_sr1_100x100" / "filtered_feature_bc_matrix.h5"), sr)
    result = invoke("read-visium", "--sample", "S1", "--spaceranger-dir", sr, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S1', field 'spaceranger_dir': no spatial/ folder beside filtered_feature_bc_matrix.h5",
          outdir=tmp_path / "out", case="Space Ranger folder without spatial/", step="read-visium")


def test_h5ad_without_spatial_coordinates(tmp_path):
    adata = plain_section()
    del adata.obsm["spatial"]
    path = write(adata, tmp_path / "nospatial.h5ad")
    result = invoke("read-visium", "--sample", "S2", "--h5ad", path, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S2', field 'h5ad': the h5ad has no spot coordinates (obsm['spatial']",
          outdir=tmp_path / "out", case="h5ad without spatial coordinates", step="read-visium")


def test_normalised_spatial_counts(tmp_path):
    adata = plain_section()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    path = write(adata, tmp_path / "log.h5ad")
    result = invoke("read-visium", "--sample", "S3", "--h5ad", path, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S3', field 'h5ad (counts)': non-integer values found",
          "cell2location needs raw integer counts", outdir=tmp_path / "out",
          case="normalised (non-integer) counts in the spatial data", step="read-visium")


def test_nan_in_spatial_counts(tmp_path):
    adata = plain_section()
    dense = adata.X.toarray()
    dense[3, 2] = np.nan
    adata.X = dense
    path = write(adata, tmp_path / "nan.h5ad")
    result = invoke("read-visium", "--sample", "S4", "--h5ad", path, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S4', field 'h5ad (counts)': 1 count value(s) are NaN or infinite",
          outdir=tmp_path / "out", case="NaN in the spatial counts", step="read-visium")


def test_all_zero_spots_fail_or_are_dropped(tmp_path):
    adata = plain_section()
    dense = adata.X.toarray()
    dense[[4, 7]] = 0
    adata.X = sp.csr_matrix(dense)
    path = write(adata, tmp_path / "empty.h5ad")
    result = invoke("read-visium", "--sample", "S5", "--h5ad", path, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S5', field 'h5ad': 2 spot(s) have no counts at all (e.g. AAAC0004-1)",
          "--drop-empty-spots", outdir=tmp_path / "out", case="spots without any count", step="read-visium")
    invoke("read-visium", "--sample", "S5", "--h5ad", path, "--drop-empty-spots", "--outdir", tmp_path / "ok")
    kept = ad.read_h5ad(tmp_path / "ok" / "S5.h5ad")
    assert kept.n_obs == 28 and "AAAC0004-1" not in kept.obs_names and "AAAC0007-1" not in kept.obs_names
    assert pd.read_csv(tmp_path / "ok" / "S5.qc.csv").loc[0, "n_spots"] == 28


def test_read_visium_needs_exactly_one_input(tmp_path):
    result = invoke("read-visium", "--sample", "S6", "--outdir", tmp_path / "out", expect=None)
    check(result, 2, "give exactly one of --spaceranger-dir or --h5ad", outdir=tmp_path / "out",
          case="neither (or both) of --spaceranger-dir / --h5ad", step="read-visium")


# ---------------------------------------------------------------- filter-reference / train-reference


def test_reference_without_labels_column(small_reference, tmp_path):
    path = write(small_reference, tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "celltype", "--outdir", tmp_path / "out",
                    expect=None)
    check(result, 1, "sample 'reference', field 'labels_key': column 'celltype' is not in the reference obs",
          "cell_type", outdir=tmp_path / "out", case="labels_key column missing from the reference",
          step="filter-reference, train-reference")
    result = invoke("train-reference", "--reference", path, "--labels-key", "celltype", "--max-epochs", "1",
                    "--outdir", tmp_path / "out2", expect=None)
    check(result, 1, "field 'labels_key': column 'celltype' is not in the reference obs", outdir=tmp_path / "out2",
          case="labels_key column missing from the reference (before training)", step="train-reference")


def test_reference_without_batch_column(small_reference, tmp_path):
    path = write(small_reference, tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--batch-key", "donor",
                    "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'reference', field 'batch_key': column 'donor' is not in the reference obs",
          outdir=tmp_path / "out", case="batch_key column missing from the reference",
          step="filter-reference, train-reference")


def test_reference_labels_with_missing_values(small_reference, tmp_path):
    ref = small_reference.copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(object)
    ref.obs.iloc[:4, ref.obs.columns.get_loc("cell_type")] = np.nan
    path = write(ref, tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", tmp_path / "out",
                    expect=None)
    check(result, 1, "field 'labels_key': column 'cell_type' has 4 missing value(s)", outdir=tmp_path / "out",
          case="labels with missing values", step="filter-reference, train-reference")


def test_normalised_reference_counts(small_reference, tmp_path):
    ref = small_reference.copy()
    X = ref.X.toarray() if sp.issparse(ref.X) else np.asarray(ref.X)
    ref.X = sp.csr_matrix(X / np.maximum(X.sum(axis=1, keepdims=True), 1) * 1e4)
    path = write(ref, tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", tmp_path / "out",
                    expect=None)
    check(result, 1, "sample 'reference', field 'reference (counts)': non-integer values found",
          "the data look normalised or log-transformed", outdir=tmp_path / "out",
          case="normalised (non-integer) counts in the reference", step="filter-reference, train-reference")


def test_nan_in_reference(small_reference, tmp_path):
    ref = small_reference.copy()
    X = (ref.X.toarray() if sp.issparse(ref.X) else np.array(ref.X)).astype(np.float32)
    X[0, 0] = np.nan
    ref.X = X
    path = write(ref, tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", tmp_path / "out",
                    expect=None)
    check(result, 1, "sample 'reference', field 'reference (counts)': 1 count value(s) are NaN or infinite",
          outdir=tmp_path / "out", case="NaN in the reference counts", step="filter-reference, train-reference")


def test_cell_type_with_too_few_cells(small_reference, tmp_path):
    ref = small_reference
    vsmc = np.flatnonzero(ref.obs["cell_type"].astype(str) == "VSMC")
    keep = np.setdiff1d(np.arange(ref.n_obs), vsmc[3:])
    path = write(ref[keep].copy(), tmp_path / "ref.h5ad")
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--min-cells-per-type", "5",
                    "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'reference', field 'labels_key': cell type(s) with fewer than 5 cells: VSMC (3)",
          outdir=tmp_path / "out", case="a cell type with fewer cells than --min-cells-per-type",
          step="filter-reference")


def test_min_cells_per_type_must_be_positive(tmp_path):
    ref = require(LYMPH_NODE / "reference.h5ad")
    result = invoke("filter-reference", "--reference", ref, "--labels-key", "cell_type", "--min-cells-per-type", "0",
                    "--outdir", tmp_path / "out", expect=None)
    check(result, 2, "Invalid value for '--min-cells-per-type': must be > 0, got 0", outdir=tmp_path / "out",
          case="--min-cells-per-type 0", step="filter-reference")


# ---------------------------------------------------------------- map-cells


def map_cells(*sections, signatures, outdir, extra=()):
    """map-cells on the given h5ad files, each as the section named after its file."""
    pairs = [x for p in sections for x in ("--section", f"{Path(p).stem}={p}")]
    return invoke("map-cells", *pairs, "--signatures", signatures, "--max-epochs", "1", "--num-samples", "2",
                  "--device", "cpu", *extra, "--outdir", outdir, expect=None)


def test_no_shared_genes_symbols_vs_ensembl(mtx_section, tmp_path):
    section = ad.read_h5ad(mtx_section)
    sig = signatures_for(section.var["SYMBOL"])  # the section is keyed by Ensembl ids
    sig.to_csv(tmp_path / "sig.csv")
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'mtx', field 'genes': no gene in common with the reference signatures",
          "the section uses Ensembl ids and the other side gene symbols", "--reference_gene_id_column",
          outdir=tmp_path / "out", case="no shared genes: Ensembl ids vs symbols", step="map-cells")


def test_transposed_signatures(mtx_section, tmp_path):
    section = ad.read_h5ad(mtx_section)
    signatures_for(section.var_names).T.to_csv(tmp_path / "sig.csv")
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'mtx', field 'genes': no gene in common",
          "the signatures look transposed: genes must be rows, cell types columns", outdir=tmp_path / "out",
          case="transposed signatures (cell types x genes)", step="map-cells")


@pytest.mark.parametrize("case", ["one_column", "non_numeric", "negative", "nan"])
def test_malformed_signatures(mtx_section, tmp_path, case):
    section = ad.read_h5ad(mtx_section)
    sig = signatures_for(section.var_names)
    if case == "one_column":
        sig = sig[["Astro"]]
        expected = ("got shape (50, 1)", "expected genes (rows) x cell types (columns) with at least 2 of each")
    elif case == "non_numeric":
        sig["Neuron"] = "high"
        expected = ("non-numeric column(s) ['Neuron']",)
    elif case == "negative":
        sig.iloc[2, 1] = -0.5
        expected = ("negative expression values",)
    else:
        sig.iloc[2, 1] = np.nan
        expected = ("1 NaN or infinite value(s)",)
    sig.to_csv(tmp_path / "sig.csv")
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'signatures', field 'signatures'", *expected, outdir=tmp_path / "out",
          case=f"--signatures CSV: {case.replace('_', ' ')}", step="map-cells")


def test_spots_without_counts_over_shared_genes(mtx_section, tmp_path):
    section = ad.read_h5ad(mtx_section)
    X = section.X.toarray()
    # two genes that leave at least one spot without counts
    order = np.argsort((X > 0).sum(axis=0))
    genes = section.var_names[order[:2]]
    assert (X[:, order[:2]].sum(axis=1) == 0).any()
    signatures_for(genes).to_csv(tmp_path / "sig.csv")
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'mtx', field 'genes':", "spot(s) have no counts over the 2 genes shared with the reference",
          outdir=tmp_path / "out", case="spots without counts over the shared genes", step="map-cells")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_n_cells_per_location_must_be_positive(mtx_section, tmp_path, value):
    sig = tmp_path / "sig.csv"
    signatures_for(["G1", "G2"]).to_csv(sig)
    out = tmp_path / "out"
    proc = run_c2l("map-cells", "--section", f"mtx={mtx_section}", "--signatures", sig, "--n-cells-per-location",
                   value, "--outdir", out, expect=None)
    check(proc, 2, f"Invalid value for '--n-cells-per-location': must be > 0, got {float(value)}", outdir=out,
          case=f"--n-cells-per-location {value}", step="map-cells")


@pytest.mark.parametrize("value, message", [
    ("mtx=-5", "'mtx=-5': must be > 0"),
    ("mtx=lots", "'mtx=lots': 'lots' is not a number"),
    ("other=200", "'other=200': no --section named other"),
])
def test_detection_alpha_per_section(mtx_section, tmp_path, value, message):
    signatures_for(["G1", "G2"]).to_csv(tmp_path / "sig.csv")
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out",
                       extra=("--detection-alpha", value))
    check(result, 2, f"Invalid value for --detection-alpha: {message}", outdir=tmp_path / "out",
          case=f"--detection-alpha {value}", step="map-cells")


def test_same_sample_twice(mtx_section, tmp_path):
    signatures_for(["G1", "G2"]).to_csv(tmp_path / "sig.csv")
    result = invoke("map-cells", "--section", f"mtx={mtx_section}", "--section", f"mtx={mtx_section}",
                    "--signatures", tmp_path / "sig.csv", "--outdir", tmp_path / "out", expect=None)
    check(result, 2, "Invalid value for '--section': 'mtx' given twice", outdir=tmp_path / "out",
          case="the same sample given twice", step="map-cells")


# ---------------------------------------------------------------- plot-spatial


def test_plot_unmapped_section(mtx_section, tmp_path):
    result = invoke("plot-spatial", mtx_section, "--sample", "mtx", "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'mtx', field 'q05_cell_abundance_w_sf': obsm['q05_cell_abundance_w_sf'] is missing",
          "run map_cells on this section first", outdir=tmp_path / "out", case="plotting a section that was not mapped",
          step="plot-spatial")
