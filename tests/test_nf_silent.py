"""Issue 31: inputs that gave a wrong result without a word, through real Nextflow.

- -resume after a file inside a Space Ranger folder changed reran nothing (a folder's cache key was its own path,
  size and time): the samplesheet reader now puts a fingerprint of the folder's files in the section's meta.
- labels that differ only by spaces, and a cell type without counts, became signatures: FILTER_REFERENCE stops.
- a Visium HD bin folder given directly was read as a 55 um Visium section with 30 cells per spot.
(Kebab-case parameters and CSV quoting: tests/test_nf_inputs.py; Ctrl-C: tests/test_nf_kill.py.)
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from nf_helpers import LYMPH_NODE, needs_testdata, run_nf

pytestmark = needs_testdata

SIGNATURES = "gene,A,B\nG1,1,2\nG2,3,4\n"   # enough for the stub runs (MAP_CELLS's stub reads the header)


def _status(run, step):
    return sorted(r["status"] for r in run.tasks(step))


def test_resume_reruns_a_section_whose_folder_changed_inside(tmp_path):
    folder = tmp_path / "visium"
    shutil.copytree(LYMPH_NODE / "visium", folder)
    (tmp_path / "sig.csv").write_text(SIGNATURES)
    (tmp_path / "samplesheet.csv").write_text("sample,spaceranger_dir\nln,visium\n")
    args = ["--input", tmp_path / "samplesheet.csv", "--signatures", tmp_path / "sig.csv", "-stub"]

    def run(name, *extra):
        done = run_nf(tmp_path, *args, *extra, outdir=name, profile="local", timeout=300)
        assert done.returncode == 0, done.describe()
        return done

    assert _status(run("first"), "READ_VISIUM") == ["COMPLETED"]
    assert _status(run("same", "-resume"), "READ_VISIUM") == ["CACHED"]      # nothing changed: nothing reruns

    # every spot's pixel position shifted, in place (the folder's own size and time do not change)
    positions = folder / "spatial" / "tissue_positions_list.csv"
    dir_stat = os.stat(folder)
    rows = [line.split(",") for line in positions.read_text().splitlines()]
    positions.write_text("".join(",".join(r[:4] + [str(int(r[4]) + 7), str(int(r[5]) + 7)]) + "\n" for r in rows))
    assert os.stat(folder).st_mtime_ns == dir_stat.st_mtime_ns
    shifted = run("shifted", "-resume")
    assert _status(shifted, "READ_VISIUM") == ["COMPLETED"], shifted.trace()
    assert _status(shifted, "MAP_CELLS") == ["COMPLETED"]

    # an edit that keeps the file's size and time (a copy with -p, a clock of coarse resolution) is seen too
    before = os.stat(positions)
    text = positions.read_text()
    positions.write_text(text.replace(",1,", ",0,", 1) if ",1," in text else text[::-1])
    os.utime(positions, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(positions).st_size == before.st_size
    assert _status(run("same_size_and_time", "-resume"), "READ_VISIUM") == ["COMPLETED"]


def _reference(tmp_path, how: str):
    import anndata as ad
    import scipy.sparse as sp

    ref = ad.read_h5ad(LYMPH_NODE / "reference.h5ad")
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    if how == "spaces":     # ten of the 30 B cells labelled 'B '
        labels[np.flatnonzero(labels == "B")[:10]] = "B "
        ref.obs["cell_type"] = labels
    else:                   # the 30 VSMC cells without a count
        X = ref.X.toarray() if sp.issparse(ref.X) else np.array(ref.X)
        X[labels == "VSMC"] = 0
        ref.X = sp.csr_matrix(X)
    path = tmp_path / f"reference_{how}.h5ad"
    ref.write_h5ad(path)
    return path


@pytest.mark.parametrize("how, message", [
    ("spaces", "Error: sample 'reference', field 'labels_key': column 'cell_type' has value(s) that differ only by "
               "spaces: 'B' and 'B '; they would be separate cell types: make them the same label"),
    ("no_counts", "Error: sample 'reference', field 'labels_key': cell type(s) without any count: VSMC (30 cells); "
                  "their cells are empty: drop them or fix the counts"),
])
def test_reference_labels_that_would_make_a_wrong_signature_stop_the_run(tmp_path, how, message):
    run = run_nf(tmp_path, "--reference", _reference(tmp_path, how), profile="test,local", timeout=600)
    assert run.returncode == 1, run.describe()
    assert [line for line in run.output.splitlines() if message in line], run.describe()
    assert "Traceback" not in run.output, run.describe()
    assert [(r["status"], r["exit"]) for r in run.tasks("FILTER_REFERENCE")] == [("FAILED", "1")]
    assert run.tasks("TRAIN_REFERENCE") == [] and not (run.outdir / "train_reference").exists()


def test_a_visium_hd_bin_folder_given_directly_is_read_as_visium_hd(tmp_path):
    """spaceranger_dir = outs/binned_outputs/square_008um: HD bins of 8 um, 1 cell per bin (was: standard Visium,
    --n_cells_per_location 30)."""
    import anndata as ad
    import pandas as pd

    from test_visium_hd import SYMBOLS, write_hd_fixture

    write_hd_fixture(tmp_path / "hd")
    ids = [f"ENSG{i:011d}" for i in range(len(SYMBOLS))]
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.uniform(0.1, 5, size=(len(ids), 3)), index=pd.Index(ids, name="gene"),
                 columns=["A", "B", "C"]).to_csv(tmp_path / "sig.csv")
    (tmp_path / "samplesheet.csv").write_text("sample,spaceranger_dir\nhd,hd/outs/binned_outputs/square_008um\n")
    run = run_nf(tmp_path, "--input", tmp_path / "samplesheet.csv", "--signatures", tmp_path / "sig.csv",
                 "--map_max_epochs", "3", "--map_min_epochs", "1", "--map_num_samples", "2", profile="local",
                 timeout=600)
    assert _status(run, "READ_VISIUM") == ["COMPLETED"], run.describe()
    read = ad.read_h5ad(run.outdir / "read_visium" / "hd.h5ad")
    meta = next(iter(read.uns["spatial"].values()))["metadata"]
    assert meta["visium_hd"] and meta["bin_size_um"] == 8
    assert read.n_obs == 22 * 22
    rows = run.tasks("MAP_CELLS")
    assert rows, run.describe()
    prefix, rest = rows[0]["hash"].split("/")
    command = next((run.workdir / prefix).glob(f"{rest}*")) / ".command.sh"
    assert "--n-cells-per-location 1 " in command.read_text().replace("\\\n", " ") + " "
