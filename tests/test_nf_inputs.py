"""Bad inputs at the pipeline level: a non-zero exit, one clear line naming the row/sample and the field,
and nothing published for the step that failed.

The validation cases fail inside main.nf before any task starts; they are launched a few at a time (one JVM
each, no Python) in one module fixture. The last case is a data error raised inside READ_VISIUM.
The table in tests/README.md lists these cases with their exit codes and messages.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from nf_helpers import LYMPH_NODE, STEPS, data_error_run, needs_testdata, run_nf

pytestmark = needs_testdata

VISIUM = "lymph_node/visium"          # relative to --input_base_dir (the test profile sets it to --testdata)
H5AD = "lymph_node/reference.h5ad"    # any existing file will do where the check is on the samplesheet only

# id: (samplesheet text or None for the test profile's own, extra args, profile, expected message)
CASES = {
    "missing_column": (
        f"sample,path\nln,{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}: missing column 'spaceranger_dir' or 'h5ad' (columns: sample, path)"),
    "duplicate_sample": (
        f"sample,spaceranger_dir\nln,{VISIUM}\nln,{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': field 'sample' is duplicated (also row 2)"),
    "path_missing": (
        "sample,spaceranger_dir\nln,lymph_node/no_such_dir\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'spaceranger_dir': path does not exist: "),
    "both_sources": (
        f"sample,spaceranger_dir,h5ad\nln,{VISIUM},{H5AD}\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': give exactly one of the fields 'spaceranger_dir' and 'h5ad'"),
    "no_source": (
        f"sample,spaceranger_dir,h5ad\nok,{VISIUM},\nln,,\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': give exactly one of the fields 'spaceranger_dir' and 'h5ad'"),
    "n_cells_not_numeric": (
        f"sample,spaceranger_dir,n_cells_per_location\nln,{VISIUM},thirty\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'n_cells_per_location' must be a positive number, got 'thirty'"),
    "n_cells_zero": (
        f"sample,spaceranger_dir,n_cells_per_location\nln,{VISIUM},0\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'n_cells_per_location' must be a positive number, got '0'"),
    "sample_pattern": (
        f"sample,spaceranger_dir\nln 1,{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln 1': field 'sample' may only contain letters, digits, '_', '.', '-'"),
    "detection_alpha_negative": (
        f"sample,spaceranger_dir,detection_alpha\nln,{VISIUM},-1\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'detection_alpha' must be a positive number, got '-1'"),
    # a rule across rows: one joint model, one n_cells_per_location (an empty cell takes --n_cells_per_location)
    "joint_n_cells_differ": (
        f"sample,spaceranger_dir,n_cells_per_location\nln,{VISIUM},\nln2,{VISIUM},8\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln2': field 'n_cells_per_location' must be the same in every row when "
        "the sections are mapped in one joint model (ln=30, ln2=8); use --mapping_mode per_sample"),
    "bin_size_not_8_or_16": (
        f"sample,spaceranger_dir,bin_size\nln,{VISIUM},2\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'bin_size' must be 8 or 16 (um; Visium HD bins), got '2'"),
    "bin_size_with_h5ad": (
        f"sample,h5ad,bin_size\nln,{H5AD},16\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'bin_size' needs the field 'spaceranger_dir'"),
    "mapping_mode": (
        None, ["--mapping_mode", "together"], "test,local",
        "--mapping_mode: must be one of joint, per_sample, got 'together'"),
    "reference_and_signatures": (
        None, ["--signatures", "{sig}"], "test,local",
        "--reference and --signatures: give one, not both"),
    "neither_reference_nor_signatures": (
        f"sample,spaceranger_dir\nln,{VISIUM}\n", ["--input_base_dir", "{testdata}"], "local",
        "--reference or --signatures: one is required"),
    # issue 14
    "same_folder_twice": (
        f"sample,spaceranger_dir\na,{VISIUM}\nb,{VISIUM}/\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'b': field 'spaceranger_dir' is the same section as row 2 (sample 'a'): "),
    "same_h5ad_twice": (
        f"sample,h5ad\na,{H5AD}\nb,lymph_node/../{H5AD}\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'b': field 'h5ad' is the same section as row 2 (sample 'a'): "),
    "bom_in_header": (   # Excel's "CSV UTF-8": the header still parses (the duplicate is found, not 'missing column')
        f"\ufeffsample,spaceranger_dir\nln,{VISIUM}\nln,{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': field 'sample' is duplicated (also row 2)"),
    "crlf_line_ends": (   # Windows line ends: parsed as usual (the duplicate is found)
        f"sample,spaceranger_dir\r\nln,{VISIUM}\r\nln,{VISIUM}\r\n", [], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': field 'sample' is duplicated (also row 2)"),
    "semicolons": (
        f"sample;spaceranger_dir\nln;{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}: the header is separated by semicolons, not commas; save it as comma-separated CSV"),
    "excel_workbook": (
        None, ["--input", "{folder}/samplesheet.xlsx"], "test,local",
        "Samplesheet {folder}/samplesheet.xlsx: a spreadsheet workbook, not a CSV file; save it as CSV (comma-separated)"),
    "tilde_path": (
        "sample,spaceranger_dir\nln,~/visium\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'spaceranger_dir': path does not exist: {testdata}/~/visium "
        "('~' is not expanded in a samplesheet: give the full path)"),
    "column_case": (
        f"Sample,spaceranger_dir\nln,{VISIUM}\n", [], "test,local",
        "Samplesheet {sheet}: column 'Sample' must be written 'sample' (column names are case-sensitive)"),
    "unnamed_column": (
        f"sample,spaceranger_dir,\nln,{VISIUM},x\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': column 3 has the value 'x' but no name in the header"),
    "layer_on_spaceranger_row": (
        f"sample,spaceranger_dir,layer\nln,{VISIUM},counts\n", [], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': field 'layer' needs the field 'h5ad'"),
    "outdir_is_a_file": (
        None, ["--outdir", "{folder}/afile.txt"], "test,local",
        "--outdir: {folder}/afile.txt is a file, not a folder"),
    "outdir_under_a_file": (
        None, ["--outdir", "{folder}/afile.txt/results"], "test,local",
        "--outdir: cannot create {folder}/afile.txt/results: {folder}/afile.txt is a file, not a folder"),
    "outdir_empty": (
        None, ["--outdir", ""], "test,local",
        "--outdir: needs a path, got none (--outdir without a value?)"),
    "reference_is_a_folder": (
        None, ["--reference", "{testdata}/lymph_node"], "test,local",
        "--reference: {testdata}/lymph_node is a folder, expected a file"),
    "reference_without_value": (
        None, ["--reference"], "test,local",
        "--reference: needs a path, got none (--reference without a value?)"),
    "input_base_dir_missing": (
        None, ["--input_base_dir", "{folder}/nowhere"], "test,local",
        "--input_base_dir: folder not found: {folder}/nowhere"),
    "signatures_missing": (
        f"sample,spaceranger_dir\nln,{VISIUM}\n", ["--input_base_dir", "{testdata}", "--signatures", "{folder}/none.csv"],
        "local", "--signatures: file not found: {folder}/none.csv"),
    "reference_without_labels_key": (
        f"sample,spaceranger_dir\nln,{VISIUM}\n",
        ["--input_base_dir", "{testdata}", "--reference", str(LYMPH_NODE / "reference.h5ad")], "local",
        "--labels_key: required with --reference"),
    # issue 31 (-stub: the old code ran these to the end without a word, and the stub run keeps that short)
    "kebab_case_param": (
        None, ["--n-cells-per-location", "8", "-stub"], "test,local",
        "--n-cells-per-location: pipeline parameters are written with underscores: --n_cells_per_location "
        "(on the command line and in a -params-file; --n-cells-per-location would be ignored)"),
    "kebab_case_in_params_file": (
        None, ["-params-file", "{folder}/params.yml", "-stub"], "test,local",
        "--n-cells-per-location: pipeline parameters are written with underscores: --n_cells_per_location"),
    "camel_case_param": (
        None, ["--nCellsPerLocation", "8", "-stub"], "test,local",
        "--nCellsPerLocation: pipeline parameters are written with underscores: --n_cells_per_location"),
    "quoted_field_keeps_its_comma": (   # one field "ln,1" (not 'ln' and '1'), then the schema's pattern applies
        f'sample,spaceranger_dir\n"ln,1",{VISIUM}\n', ["-stub"], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln,1': field 'sample' may only contain letters, digits, '_', '.', '-'"),
    "quote_never_closed": (
        f'sample,spaceranger_dir,donor\nln,{VISIUM},"donor 1\n', ["-stub"], "test,local",
        "Samplesheet {sheet}: a double quote opened on line 2 is never closed"),
    "more_fields_than_columns": (   # an unquoted comma in a value: was dropped without a word
        f"sample,spaceranger_dir,donor\nln,{VISIUM},donor 1, batch 2\n", ["-stub"], "test,local",
        "Samplesheet {sheet}, row 2, sample 'ln': 4 fields for 3 columns (the value 'batch 2' has no column; "
        "a value with a comma must be in double quotes)"),
    "sample_ids_differ_only_by_case": (
        f"sample,h5ad\nLN,{H5AD}\nln,{VISIUM}/filtered_feature_bc_matrix.h5\n", ["-stub"], "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': field 'sample' differs only by case from row 2 ('LN'): outputs are "
        "named after it and would overwrite each other on a case-insensitive file system (macOS, Windows)"),
    "hd_bin_folder_gets_hd_defaults": (   # square_008um given directly: 1 cell per 8 um bin, not --n_cells_per_location
        f"sample,spaceranger_dir\nhd,{{folder}}/hd/outs/binned_outputs/square_008um\nln,{VISIUM}\n", ["-stub"],
        "test,local",
        "Samplesheet {sheet}, row 3, sample 'ln': field 'n_cells_per_location' must be the same in every row when "
        "the sections are mapped in one joint model (hd=1, ln=30)"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("bad_inputs")
    sig = root / "signatures.csv"
    sig.write_text("gene,A,B\nG1,1,2\nG2,3,4\n")

    def launch(case):
        text, extra, profile, _ = CASES[case]
        folder = root / case
        folder.mkdir()
        (folder / "afile.txt").write_text("not a folder\n")
        (folder / "samplesheet.xlsx").write_bytes(b"PK\x03\x04 an Excel workbook is a zip file")
        (folder / "params.yml").write_text("n-cells-per-location: 8\n")
        args = []
        if text is not None and "{folder}/hd/" in text:
            from test_visium_hd import write_hd_fixture

            write_hd_fixture(folder / "hd")
        if text is not None:
            sheet = folder / "samplesheet.csv"
            sheet.write_text(text.replace("{folder}", str(folder)))
            args += ["--input", sheet]
        args += [a.format(sig=sig, testdata=LYMPH_NODE.parent, folder=folder) for a in extra]
        return case, run_nf(folder, *args, profile=profile, timeout=300)

    # only the cases this session runs (pytest -k selects a few without launching all of them)
    wanted = [case for case in CASES if any(getattr(item, "callspec", None) is not None
                                            and item.callspec.params.get("case") == case
                                            for item in request.session.items)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(launch, wanted))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(results, case):
    run = results[case]
    sheet = run.launch / "samplesheet.csv"
    expected = CASES[case][3].format(sheet=sheet, folder=run.launch, testdata=LYMPH_NODE.parent)
    assert run.returncode == 1, run.describe()
    lines = [line for line in run.output.splitlines() if expected in line]
    assert len(lines) == 1, f"expected one line containing {expected!r}\n{run.describe()}"
    assert "Exception" not in run.output and "\tat " not in run.output, run.describe()   # no stack trace
    published = {p.name for p in run.outdir.iterdir()} if run.outdir.exists() else set()
    assert not published & {s.lower() for s in STEPS}, published
    assert run.trace() == []                                                           # no task started


def test_data_error_inside_a_task(tmp_path_factory):
    run = data_error_run(tmp_path_factory)
    assert run.returncode == 1, run.describe()
    message = "sample 'broken', field 'spaceranger_dir': no count matrix in"
    assert any(message in line for line in run.output.splitlines()), run.describe()
    # the task's one line, without a Python traceback
    assert "Traceback" not in run.output, run.describe()
    assert "Process `CELL2LOCATION:READ_VISIUM (broken)` terminated with an error exit status (1)" in run.output
    rows = run.tasks("READ_VISIUM")
    assert [(r["status"], r["exit"]) for r in rows] == [("FAILED", "1")]
    assert not (run.outdir / "read_visium").exists()
    assert not (run.outdir / "map_cells").exists()


def test_task_warnings_reach_the_console_and_pipeline_info(tmp_path_factory):
    """A warning of a c2l step (here: duplicated gene ids renamed by READ_VISIUM) is shown by Nextflow (WARN:) and
    written to pipeline_info/warnings.txt, not only to the task's .command.err; the task's c2l.warnings.txt is
    not published with the step's outputs. The section keeps normalised values in X and its counts in
    layers['counts'], named by the samplesheet's `layer` column; a quoted metadata value with a comma reaches obs
    whole (issue 31)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    folder = tmp_path_factory.mktemp("warnings")
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(19)] + ["G3"]
    counts = rng.poisson(5.0, size=(40, 20)).astype(np.float32) + 1
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts)),
                       obs=pd.DataFrame(index=[f"AAAC{i:04d}-1" for i in range(40)]), var=pd.DataFrame(index=genes))
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.obsm["spatial"] = rng.uniform(0, 2000, size=(40, 2))
    adata.write_h5ad(folder / "w.h5ad")
    sig = pd.DataFrame(rng.uniform(0.1, 5, size=(19, 3)), index=genes[:19], columns=["A", "B", "C"])
    sig.index.name = "gene"
    sig.to_csv(folder / "sig.csv")
    # a quoted metadata value with a comma (issue 31: was cut to '"donor 1' without a word)
    (folder / "samplesheet.csv").write_text('sample,h5ad,layer,donor\nw,w.h5ad,counts,"donor 1, batch 2"\n')
    run = run_nf(folder, "--input", folder / "samplesheet.csv", "--signatures", folder / "sig.csv",
                 "--map_max_epochs", "3", "--map_min_epochs", "1", "--map_num_samples", "2", profile="local")
    assert run.returncode == 0, run.describe()
    line = ("READ_VISIUM w: sample w: 1 duplicated gene id(s) renamed with a -1, -2... suffix (e.g. G3): "
            "the renamed copies match no reference gene")
    assert [x for x in run.output.splitlines() if line in x and "WARN" in x], run.describe()
    assert (run.outdir / "pipeline_info" / "warnings.txt").read_text().splitlines() == [line]
    published = {p.name for p in run.outdir.rglob("*")}
    assert "c2l.warnings.txt" not in published and "w.h5ad" in published, sorted(published)
    read = ad.read_h5ad(run.outdir / "read_visium" / "w.h5ad")
    np.testing.assert_array_equal(read.X.toarray(), counts)   # the counts layer, not the log values of X
    assert set(read.obs["donor"].astype(str)) == {"donor 1, batch 2"}


def test_reference_layer_reaches_filter_reference(tmp_path_factory):
    """--reference_layer goes to FILTER_REFERENCE (here a layer the reference lacks: its one-line data error)."""
    run = run_nf(tmp_path_factory.mktemp("reference_layer"), "--reference_layer", "counts", profile="test,local")
    assert run.returncode == 1, run.describe()
    message = "Error: sample 'reference', field 'reference_layer': no layer 'counts' in the file (layers: none)"
    assert any(message in line for line in run.output.splitlines()), run.describe()
    assert "Traceback" not in run.output, run.describe()
    assert [(r["status"], r["exit"]) for r in run.tasks("FILTER_REFERENCE")] == [("FAILED", "1")]
    assert not (run.outdir / "filter_reference").exists()
