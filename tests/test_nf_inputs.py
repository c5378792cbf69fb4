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
    "reference_without_labels_key": (
        f"sample,spaceranger_dir\nln,{VISIUM}\n",
        ["--input_base_dir", "{testdata}", "--reference", str(LYMPH_NODE / "reference.h5ad")], "local",
        "--labels_key: required with --reference"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    sig = root / "signatures.csv"
    sig.write_text("gene,A,B\nG1,1,2\nG2,3,4\n")

    def launch(case):
        text, extra, profile, _ = CASES[case]
        folder = root / case
        folder.mkdir()
        args = []
        if text is not None:
            sheet = folder / "samplesheet.csv"
            sheet.write_text(text)
            args += ["--input", sheet]
        args += [a.format(sig=sig, testdata=LYMPH_NODE.parent) for a in extra]
        return case, run_nf(folder, *args, profile=profile, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(launch, CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(results, case):
    run = results[case]
    sheet = run.launch / "samplesheet.csv"
    expected = CASES[case][3].format(sheet=sheet)
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
