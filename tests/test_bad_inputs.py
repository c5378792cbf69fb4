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


def test_h5ad_with_coordinates_under_another_key(tmp_path):
    adata = plain_section()
    adata.obsm["X_spatial"] = adata.obsm.pop("spatial")
    path = write(adata, tmp_path / "xspatial.h5ad")
    result = invoke("read-visium", "--sample", "S2", "--h5ad", path, "--outdir", tmp_path / "out", expect=None)
    check(result, 1, "sample 'S2', field 'h5ad': the h5ad has no spot coordinates (obsm['spatial'] with x, y columns); "
          "its obsm has X_spatial: store the x, y coordinates as obsm['spatial']", outdir=tmp_path / "out",
          case="h5ad with its coordinates in obsm['X_spatial']", step="read-visium")


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


# ---------------------------------------------------------------- issue 14: inputs as users really have them


def warnings_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_duplicated_barcode_in_spaceranger_matrix(tmp_path):
    """Two matrix rows with one barcode would silently share one spot's coordinates."""
    sr = tmp_path / "dup"
    shutil.copytree(require(FIXTURES / "mouse_brain_mtx_50x50"), sr)
    barcodes = sr / "outs" / "raw_feature_bc_matrix" / "barcodes.tsv"
    lines = barcodes.read_text().splitlines()
    in_tissue = pd.read_csv(sr / "outs" / "spatial" / "tissue_positions_list.csv", header=None)
    kept = set(in_tissue.loc[in_tissue[1] == 1, 0])
    first, second = [i for i, b in enumerate(lines) if b in kept][:2]
    lines[second] = lines[first]
    barcodes.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "dup", "--spaceranger-dir", sr, "--outdir", out, expect=None)
    check(result, 1, "sample 'dup', field 'spaceranger_dir': 1 spot barcode(s) appear more than once in the matrix "
          f"raw_feature_bc_matrix (e.g. {lines[first]})", outdir=out,
          case="a spot barcode twice in the Space Ranger matrix", step="read-visium")


def test_duplicated_barcode_in_positions(tmp_path):
    sr = tmp_path / "dup"
    shutil.copytree(require(FIXTURES / "mouse_brain_mtx_50x50"), sr)
    positions = sr / "outs" / "spatial" / "tissue_positions_list.csv"
    lines = positions.read_text().splitlines()
    positions.write_text("\n".join(lines + [lines[0]]) + "\n")
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "dup", "--spaceranger-dir", sr, "--outdir", out, expect=None)
    check(result, 1, "sample 'dup', field 'spaceranger_dir': 1 spot barcode(s) appear more than once in the positions "
          f"file (e.g. {lines[0].split(',')[0]})", outdir=out, case="a spot barcode twice in the positions file",
          step="read-visium")


def test_duplicated_barcode_in_h5ad(tmp_path):
    adata = plain_section()
    names = list(adata.obs_names)
    names[5] = names[2]
    adata.obs_names = names
    path = write(adata, tmp_path / "dup.h5ad")
    out = tmp_path / "out"
    result = run_c2l("read-visium", "--sample", "S7", "--h5ad", path, "--outdir", out, expect=None)
    assert ".py:" not in result.stderr, result.stderr   # no library warning with its source line around the error
    check(result, 1, "sample 'S7', field 'h5ad': 1 spot barcode(s) appear more than once in obs_names (e.g. AAAC0002-1)",
          outdir=out, case="a spot barcode twice in an h5ad section", step="read-visium")


def normalised_with_counts(adata: ad.AnnData, where: str) -> ad.AnnData:
    """`adata` with log-normalised X and its counts kept as users keep them: layers['counts'] or .raw."""
    counts = adata.X.copy()
    if where == "raw":
        adata.raw = adata.copy()
    else:
        adata.layers[where] = counts
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    adata.X = sp.csr_matrix(np.log1p(dense / np.maximum(dense.sum(axis=1, keepdims=True), 1) * 1e4))
    return adata


@pytest.mark.parametrize("where, hint", [("counts", "layers['counts'] holds raw counts: set the samplesheet's "
                                                    "column 'layer' to counts"),
                                         ("raw", ".raw holds raw counts: set the samplesheet's column 'layer' to raw")])
def test_normalised_section_names_its_counts(tmp_path, where, hint):
    """The error names the layer (or .raw) that holds the counts, and that choice then reads the section."""
    original = plain_section()
    path = write(normalised_with_counts(original.copy(), where), tmp_path / "norm.h5ad")
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "S8", "--h5ad", path, "--outdir", out, expect=None)
    check(result, 1, "sample 'S8', field 'h5ad (counts)': non-integer values found", hint, outdir=out,
          case=f"normalised X, counts in {'.raw' if where == 'raw' else 'a layer'}: the error names it",
          step="read-visium")
    invoke("read-visium", "--sample", "S8", "--h5ad", path, "--layer", where, "--outdir", tmp_path / "ok")
    read = ad.read_h5ad(tmp_path / "ok" / "S8.h5ad")
    np.testing.assert_array_equal(read.X.toarray(), original.X.toarray())
    assert list(read.var_names) == list(original.var_names) and read.obsm["spatial"].shape == (30, 2)


@pytest.mark.parametrize("layer, section, message", [
    ("counts", "plain", "no layer 'counts' in the file (layers: none)"),
    ("raw", "plain", "the file has no .raw (layers: none)"),
    ("lognorm", "lognorm", "(the chosen layer 'lognorm' does not hold raw counts either)"),
])
def test_section_layer_errors(tmp_path, layer, section, message):
    adata = plain_section()
    if section == "lognorm":
        adata.layers["lognorm"] = sp.csr_matrix(np.log1p(adata.X.toarray()))
    path = write(adata, tmp_path / "s.h5ad")
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "S9", "--h5ad", path, "--layer", layer, "--outdir", out, expect=None)
    check(result, 1, "sample 'S9', field 'layer", message, outdir=out, case=f"samplesheet layer '{layer}': {message}",
          step="read-visium")


def test_layer_with_spaceranger_dir_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "S1", "--spaceranger-dir", require(FIXTURES / "human_sr1_100x100"),
                    "--layer", "counts", "--outdir", out, expect=None)
    check(result, 2, "--layer is for --h5ad sections (a Space Ranger matrix holds raw counts)", outdir=out,
          case="--layer with --spaceranger-dir", step="read-visium")


def test_duplicated_gene_ids_warn_in_the_warnings_file(tmp_path):
    adata = plain_section(genes=("G1", "G2", "G2", "G4", "G5"))
    path = write(adata, tmp_path / "dupgenes.h5ad")
    warnings = tmp_path / "c2l.warnings.txt"
    invoke("--warnings-file", warnings, "read-visium", "--sample", "S10", "--h5ad", path, "--outdir", tmp_path / "ok")
    assert warnings_of(warnings) == ["sample S10: 1 duplicated gene id(s) renamed with a -1, -2... suffix (e.g. G2): "
                                     "the renamed copies match no reference gene"]
    assert "G2-1" in ad.read_h5ad(tmp_path / "ok" / "S10.h5ad").var_names


# ---------------------------------------------------------------- issue 14: the reference


@pytest.mark.parametrize("case, column, message", [
    ("unique", "cell_id", "column 'cell_id' has a different value in every cell (330 cells): it cannot be a batch"),
    ("numeric", "nUMI_full_transcriptome", "column 'nUMI_full_transcriptome' has a different value in every cell"),
])
def test_batch_key_with_one_value_per_cell(small_reference, tmp_path, case, column, message):
    """Every cell its own batch: a meaningless model, so an error (a numeric measurement is the usual mistake)."""
    ref = small_reference.copy()
    ref.obs["cell_id"] = ref.obs_names.astype(str)
    ref.obs["nUMI_full_transcriptome"] = np.arange(ref.n_obs) + 1000.5   # as users have them: one value per cell
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--batch-key", column,
                    "--outdir", out, expect=None)
    check(result, 1, "sample 'reference', field 'batch_key':", message, outdir=out,
          case=f"batch_key with one value per cell ({case})", step="filter-reference, train-reference")


def test_covariate_with_one_value_per_cell(small_reference, tmp_path):
    ref = small_reference.copy()
    ref.obs["barcode"] = ref.obs_names.astype(str)
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--categorical-covariate-keys",
                    "sample,barcode", "--outdir", out, expect=None)
    check(result, 1, "field 'categorical_covariate_keys': column 'barcode' has a different value in every cell", outdir=out,
          case="a categorical covariate with one value per cell", step="filter-reference, train-reference")


def test_batch_key_with_many_values_warns(small_reference, tmp_path):
    """More batches than a tenth of the cells: accepted, with a warning that names the column."""
    ref = small_reference.copy()
    ref.obs["well"] = [f"w{i // 5}" for i in range(ref.n_obs)]   # 66 wells for 330 cells
    path = write(ref, tmp_path / "ref.h5ad")
    warnings = tmp_path / "w.txt"
    invoke("--warnings-file", warnings, "filter-reference", "--reference", path, "--labels-key", "cell_type",
           "--batch-key", "well", "--outdir", tmp_path / "ok")
    assert warnings_of(warnings) == ["reference: column 'well' (batch_key) has 66 distinct values for 330 cells: more "
                                     "batches than a tenth of the cells; is it really a batch?"]
    assert (tmp_path / "ok" / "reference_filtered.h5ad").is_file()


@pytest.mark.parametrize("value, message", [
    ("", "column 'cell_type' has 3 empty value(s) ('' or only spaces)"),
    ("  ", "column 'cell_type' has 3 empty value(s) ('' or only spaces)"),
    ("nan", "column 'cell_type' has 3 value(s) 'nan': a missing value written as text"),
])
def test_empty_or_textual_missing_labels(small_reference, tmp_path, value, message):
    """Labels that look like a type with no name are named as what they are."""
    ref = small_reference.copy()
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    labels[[0, 40, 80]] = value
    ref.obs["cell_type"] = labels
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", out, expect=None)
    check(result, 1, "sample 'reference', field 'labels_key':", message, "label those cells or drop them", outdir=out,
          case=f"labels {value!r}", step="filter-reference, train-reference")


@pytest.mark.parametrize("where, hint", [("counts", "layers['counts'] holds raw counts: set --reference_layer to counts"),
                                         ("raw", ".raw holds raw counts: set --reference_layer to raw")])
def test_normalised_reference_names_its_counts(small_reference, tmp_path, where, hint):
    ref = normalised_with_counts(small_reference.copy(), where)
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", out, expect=None)
    check(result, 1, "field 'reference (counts)': non-integer values found", hint, outdir=out,
          case=f"normalised reference X, counts in {'.raw' if where == 'raw' else 'a layer'}: the error names it",
          step="filter-reference")
    invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--layer", where,
           "--outdir", tmp_path / "ok")
    filtered = ad.read_h5ad(tmp_path / "ok" / "reference_filtered.h5ad")
    X = filtered.X.toarray() if sp.issparse(filtered.X) else np.asarray(filtered.X)
    assert filtered.n_vars > 10 and np.all(X == np.round(X)) and X.max() > 10   # counts, not log values


def test_reference_layer_missing(small_reference, tmp_path):
    path = write(normalised_with_counts(small_reference.copy(), "counts"), tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--layer", "raw_counts",
                    "--outdir", out, expect=None)
    check(result, 1, "sample 'reference', field 'reference_layer': no layer 'raw_counts' in the file (layers: counts)",
          outdir=out, case="--reference_layer naming a layer the reference lacks", step="filter-reference")


def test_few_cells_per_type_warn(small_reference, tmp_path):
    ref = small_reference
    vsmc = np.flatnonzero(ref.obs["cell_type"].astype(str) == "VSMC")
    keep = np.setdiff1d(np.arange(ref.n_obs), vsmc[6:])
    path = write(ref[keep].copy(), tmp_path / "ref.h5ad")
    warnings = tmp_path / "w.txt"
    invoke("--warnings-file", warnings, "filter-reference", "--reference", path, "--labels-key", "cell_type",
           "--outdir", tmp_path / "ok")
    assert warnings_of(warnings) == ["reference: 1 cell type(s) with fewer than 10 cells (VSMC (6)): their signatures "
                                     "rest on very few cells"]


def test_duplicated_reference_genes_warn(small_reference, tmp_path):
    ref = small_reference.copy()
    names = list(ref.var_names)
    names[1] = names[0]
    ref.var_names = names
    path = write(ref, tmp_path / "ref.h5ad")
    warnings = tmp_path / "w.txt"
    invoke("--warnings-file", warnings, "filter-reference", "--reference", path, "--labels-key", "cell_type",
           "--outdir", tmp_path / "ok")
    assert warnings_of(warnings) == [f"reference: 1 duplicated gene id(s) renamed with a -1, -2... suffix (e.g. "
                                     f"{names[0]}); they will not match the sections' genes"]


@pytest.fixture(scope="module")
def ensembl_spaceranger(tmp_path_factory) -> tuple[Path, dict]:
    """The lymph node Space Ranger folder (symbols as ids) rewritten as Space Ranger writes human data: Ensembl
    ids in features.tsv column 1, symbols in column 2 (a matrix folder; the ids are made up, one per symbol)."""
    import scipy.io

    from c2lnf.read_visium import read_10x_h5

    sr, _ = read_10x_h5(require(LYMPH_NODE / "visium" / "filtered_feature_bc_matrix.h5"), "ln")
    folder = tmp_path_factory.mktemp("ensembl_sr") / "ln_ensembl"
    matrix = folder / "filtered_feature_bc_matrix"
    matrix.mkdir(parents=True)
    shutil.copytree(LYMPH_NODE / "visium" / "spatial", folder / "spatial")
    to_ensembl = {g: f"ENSG{900000 + i:011d}" for i, g in enumerate(sr.var["SYMBOL"])}
    scipy.io.mmwrite(matrix / "matrix.mtx", sp.csr_matrix(sr.X).T.astype(np.int64))
    pd.DataFrame({"id": [to_ensembl[g] for g in sr.var["SYMBOL"]], "name": sr.var["SYMBOL"],
                  "type": "Gene Expression"}).to_csv(matrix / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(sr.obs_names).to_csv(matrix / "barcodes.tsv", sep="\t", header=False, index=False)
    return folder, to_ensembl


@pytest.fixture(scope="module")
def cellxgene_reference(ensembl_spaceranger, tmp_path_factory) -> Path:
    """The lymph node reference as CELLxGENE publishes one: Ensembl var_names, symbols in var['feature_name'],
    normalised X, raw counts in .raw (the same made-up Ensembl ids as `ensembl_spaceranger`)."""
    _, to_ensembl = ensembl_spaceranger
    ref = ad.read_h5ad(require(LYMPH_NODE / "reference.h5ad"))
    ref = ref[:, [g for g in ref.var_names if g in to_ensembl]].copy()
    symbols = ref.var_names.astype(str)
    ref.var = pd.DataFrame({"feature_name": pd.Categorical(symbols), "feature_biotype": "gene"},
                           index=pd.Index([to_ensembl[g] for g in symbols]))
    ref = normalised_with_counts(ref, "raw")
    path = tmp_path_factory.mktemp("cellxgene") / "cellxgene.h5ad"
    ref.write_h5ad(path)
    return path


def test_cellxgene_reference_matches_spaceranger_without_options(cellxgene_reference, ensembl_spaceranger, tmp_path):
    """--reference_layer raw is the only option: the genes are Ensembl ids like the section's, symbols kept."""
    from c2lnf.map_cells import shared_genes

    folder, to_ensembl = ensembl_spaceranger
    result = invoke("filter-reference", "--reference", cellxgene_reference, "--labels-key", "cell_type",
                    "--outdir", tmp_path / "x", expect=None)
    check(result, 1, ".raw holds raw counts: set --reference_layer to raw", outdir=tmp_path / "x",
          case="CELLxGENE reference without --reference_layer", step="filter-reference")
    invoke("filter-reference", "--reference", cellxgene_reference, "--labels-key", "cell_type", "--layer", "raw",
           "--outdir", tmp_path / "ref")
    invoke("read-visium", "--sample", "ln", "--spaceranger-dir", folder, "--outdir", tmp_path / "sec")
    filtered = ad.read_h5ad(tmp_path / "ref" / "reference_filtered.h5ad")
    section = ad.read_h5ad(tmp_path / "sec" / "ln.h5ad")
    assert filtered.n_vars > 300 and all(g.startswith("ENSG") for g in filtered.var_names)
    assert all(g.startswith("ENSG") for g in section.var_names)
    symbol_of = {v: k for k, v in to_ensembl.items()}
    assert [symbol_of[g] for g in filtered.var_names] == list(filtered.var["SYMBOL"])   # feature_name kept as SYMBOL
    sig = pd.DataFrame(1.0, index=filtered.var_names, columns=["A", "B"])
    assert len(shared_genes({"ln": section}, sig)) == filtered.n_vars


# ---------------------------------------------------------------- issue 14: map-cells


def test_section_too_small_to_map(tmp_path):
    adata = plain_section(n_spots=1, genes=[f"G{i}" for i in range(20)])
    path = write(adata, tmp_path / "tiny.h5ad")
    signatures_for(adata.var_names).to_csv(tmp_path / "sig.csv")
    result = map_cells(path, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'tiny', field 'spots': 1 spot(s): a section needs at least 10 spots to be mapped",
          outdir=tmp_path / "out", case="a section of one spot", step="map-cells")


def test_genes_match_only_ignoring_case(mtx_section, tmp_path):
    """A human reference (CD74) against a mouse section (Cd74): the hint says what is going on."""
    section = ad.read_h5ad(mtx_section)
    sig = signatures_for([s.upper() for s in section.var["SYMBOL"] if s != s.upper()])
    sig.to_csv(tmp_path / "sig.csv")
    n = len(set(sig.index))
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'mtx', field 'genes': no gene in common with the reference signatures",
          f"({n} match when upper and lower case are ignored, e.g.", "different species, e.g. human and mouse?",
          outdir=tmp_path / "out", case="genes that match only ignoring case (human vs mouse)", step="map-cells")


# ---------------------------------------------------------------- issue 31: labels and empty cell types


def with_labels(ref: ad.AnnData, cells, value) -> ad.AnnData:
    ref = ref.copy()
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    labels[cells] = value
    ref.obs["cell_type"] = pd.Categorical(labels)
    return ref


@pytest.mark.parametrize("step", ["filter-reference", "train-reference"])
def test_labels_that_differ_only_by_spaces_are_refused(small_reference, tmp_path, step):
    """Ten of the B cells labelled 'B ': two B cell types before; now one line naming both spellings."""
    b_cells = np.flatnonzero(small_reference.obs["cell_type"].astype(str) == "B")[:10]
    path = write(with_labels(small_reference, b_cells, "B "), tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    extra = ["--max-epochs", "1", "--num-samples", "2", "--device", "cpu"] if step == "train-reference" else []
    result = invoke(step, "--reference", path, "--labels-key", "cell_type", *extra, "--outdir", out, expect=None)
    check(result, 1, "sample 'reference', field 'labels_key': column 'cell_type' has value(s) that differ only by "
          "spaces: 'B' and 'B '; they would be separate cell types: make them the same label", outdir=out,
          case="labels that differ only by spaces (`B` and `B `)", step="filter-reference, train-reference")


def test_labels_with_surrounding_spaces_are_trimmed(small_reference, tmp_path):
    """Every B cell labelled ' B ': one type, named 'B' in every output."""
    ref = small_reference.copy()
    ref.obs["cell_type"] = pd.Categorical([f" {x} " for x in ref.obs["cell_type"].astype(str)])
    path = write(ref, tmp_path / "ref.h5ad")
    invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--outdir", tmp_path / "ok")
    filtered = ad.read_h5ad(tmp_path / "ok" / "reference_filtered.h5ad")
    assert set(filtered.obs["cell_type"]) == set(small_reference.obs["cell_type"].astype(str))


def test_labels_that_differ_only_by_case_warn(small_reference, tmp_path):
    b_cells = np.flatnonzero(small_reference.obs["cell_type"].astype(str) == "B")[:10]
    path = write(with_labels(small_reference, b_cells, "b"), tmp_path / "ref.h5ad")
    warnings = tmp_path / "w.txt"
    invoke("--warnings-file", warnings, "filter-reference", "--reference", path, "--labels-key", "cell_type",
           "--outdir", tmp_path / "ok")
    assert warnings_of(warnings) == ["reference: column 'cell_type' (labels_key) has value(s) that differ only by "
                                     "case: 'B' and 'b'; they are kept as separate cell types (make them the same "
                                     "label if they are one)"]


def test_batches_that_differ_only_by_spaces_are_refused(small_reference, tmp_path):
    ref = small_reference.copy()
    ref.obs["donor"] = np.where(np.arange(ref.n_obs) % 3 == 0, "d1 ", "d1")
    ref.obs.loc[ref.obs_names[:100], "donor"] = "d2"
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    result = invoke("filter-reference", "--reference", path, "--labels-key", "cell_type", "--batch-key", "donor",
                    "--outdir", out, expect=None)
    check(result, 1, "sample 'reference', field 'batch_key': column 'donor' has value(s) that differ only by spaces: "
          "'d1' and 'd1 '", outdir=out, case="batch values that differ only by spaces", step="filter-reference")


@pytest.mark.parametrize("step", ["filter-reference", "train-reference"])
def test_cell_type_without_counts_is_refused(small_reference, tmp_path, step):
    """A type whose cells are all zero trained a ~1e-4 signature and was placed in every spot; now refused."""
    ref = small_reference.copy()
    X = ref.X.toarray() if sp.issparse(ref.X) else np.array(ref.X)
    vsmc = (ref.obs["cell_type"].astype(str) == "VSMC").to_numpy()
    X[vsmc] = 0
    ref.X = sp.csr_matrix(X)
    path = write(ref, tmp_path / "ref.h5ad")
    out = tmp_path / "out"
    extra = ["--max-epochs", "1", "--num-samples", "2", "--device", "cpu"] if step == "train-reference" else []
    result = invoke(step, "--reference", path, "--labels-key", "cell_type", *extra, "--outdir", out, expect=None)
    check(result, 1, f"sample 'reference', field 'labels_key': cell type(s) without any count: VSMC ({int(vsmc.sum())} "
          "cells); their cells are empty: drop them or fix the counts", outdir=out,
          case="a cell type whose cells have no counts", step="filter-reference, train-reference")


@pytest.mark.parametrize("case", ["spaces", "twice", "zeros"])
def test_signature_names_that_collide_or_types_without_expression(mtx_section, tmp_path, case):
    section = ad.read_h5ad(mtx_section)
    sig = signatures_for(section.var_names)
    text = None
    if case == "spaces":
        sig = sig.rename(columns={"Oligo": "Astro "})
        expected = "cell types 'Astro' and 'Astro ' differ only by spaces; every column must be a different cell type"
    elif case == "twice":
        text = sig.rename(columns={"Oligo": "Astro"}).to_csv()
        expected = "cell type 'Astro' appears twice; every column must be a different cell type"
    else:
        sig["Oligo"] = 0.0
        expected = "cell type(s) without any expression: 'Oligo'; a signature of zeros cannot be mapped"
    if text is None:
        sig.to_csv(tmp_path / "sig.csv")
    else:
        (tmp_path / "sig.csv").write_text(text)
    result = map_cells(mtx_section, signatures=tmp_path / "sig.csv", outdir=tmp_path / "out")
    check(result, 1, "sample 'signatures', field 'signatures': " + expected, outdir=tmp_path / "out",
          case=f"--signatures CSV: cell types {case}", step="map-cells")


def test_a_10x_h5_given_as_h5ad_names_what_it_is(tmp_path):
    """The kind of an input inferred from its contents, not its column: a Space Ranger matrix in the h5ad column."""
    h5 = require(FIXTURES / "human_sr1_100x100" / "filtered_feature_bc_matrix.h5")
    out = tmp_path / "out"
    result = invoke("read-visium", "--sample", "S1", "--h5ad", h5, "--outdir", out, expect=None)
    check(result, 1, "sample 'S1', field 'h5ad': filtered_feature_bc_matrix.h5 is a 10x HDF5 count matrix, not an "
          "AnnData h5ad: give the Space Ranger folder that holds it (with spatial/) in the column 'spaceranger_dir'",
          outdir=out, case="a 10x HDF5 matrix in the `h5ad` column", step="read-visium")
