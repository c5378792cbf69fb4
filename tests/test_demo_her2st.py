"""The demo set (tests/build_her2st.py) and the check of a mapping against the pathologist's regions.

- the builder: shapes, coordinates (200 um lattice), regions, reference labels, all-or-nothing output;
- a real, small run on the demo data (833 genes, a short reference model, a short mapping) must put epithelial
  cells into the cancer regions and T cells into the immune infiltrate (AUROC against all other spots;
  thresholds from the measured values);
- when a full demo output is at hand (`C2L_DEMO_RESULTS=results`), its AUROC for the same pairs must stay near
  what docs/benchmarks.md reports (benchmarks/results/her2st_demo.json).

Skipped when the shared upstream files are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TESTDATA, invoke, require

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import build_her2st  # noqa: E402
from her2st import expected_pair_aurocs, to_common  # noqa: E402

UPSTREAM = TESTDATA / "upstream"
COMMITTED = REPO / "benchmarks" / "results" / "her2st_demo.json"

#: what the small run below measured (seed 0, 2 threads, 2026-11-27 on the shared 2-core machine); each threshold
#: is the measured value less 0.05 for machine-to-machine spread. The same run puts CAFs, PVL and endothelial
#: cells *away* from the connective tissue (AUROC 0.26-0.28) and its proportions hardly vary: 600 epochs on 833
#: genes find the tumour and the lymphocytes, not the stroma (the full demo: docs/benchmarks.md)
SMALL_RUN_MEASURED = {"cancer in situ / Epithelial": 0.861, "invasive cancer / Epithelial": 0.760,
                      "immune infiltrate / T-cells": 0.841}
MARGIN = 0.05


@pytest.fixture(scope="module")
def her2st(tmp_path_factory) -> Path:
    require(UPSTREAM / "her2st")
    require(UPSTREAM / "spacedeconv")
    out = tmp_path_factory.mktemp("her2st_build")
    files = build_her2st.fetch(out / "upstream", [UPSTREAM], allow_download=False)
    return build_her2st.build_her2st(files, out)


def test_build_her2st(her2st):
    import anndata as ad
    from scipy.spatial import cKDTree

    assert sorted(p.name for p in her2st.iterdir()) == [
        "DERIVED.txt", "H1.h5ad", "H1_regions.csv", "H1_stereoscope_major.csv", "reference.h5ad"]
    assert not [p for p in her2st.parent.iterdir() if p.name.startswith(".her2st")]  # no temp folder left
    sec = ad.read_h5ad(her2st / "H1.h5ad")
    assert sec.shape == (613, 15029)
    X = sec.X.toarray()
    assert X.dtype.kind in "iu" and X.min() >= 0 and np.median(X.sum(axis=1)) == 1299
    xy = np.asarray(sec.obsm["spatial"])
    d = cKDTree(xy).query(xy, k=2)[0][:, 1]
    assert 185 < np.median(d) < 205  # um between neighbouring ST spots (median of the adjusted positions: 193)
    assert sec.uns["spatial"]["H1"]["scalefactors"]["spot_diameter_fullres"] == 100
    counts = sec.obs["region"].value_counts()
    assert counts["invasive cancer"] == 90 and counts["immune infiltrate"] == 23 and counts["connective tissue"] == 169
    regions = pd.read_csv(her2st / "H1_regions.csv", index_col=0)["region"]
    assert list(regions.index) == list(sec.obs_names)
    stereo = pd.read_csv(her2st / "H1_stereoscope_major.csv", index_col=0)
    assert list(stereo.index) == list(sec.obs_names) and stereo.shape[1] == 8
    assert np.allclose(stereo.sum(axis=1), 1, atol=1e-3)

    ref = ad.read_h5ad(her2st / "reference.h5ad")
    assert ref.shape == (1564, 29733)
    assert ref.obs["celltype_major"].nunique() == 9 and ref.obs["celltype_minor"].nunique() > 9
    assert (ref.obs["celltype_major"] == "Normal Epithelial").sum() == 10
    R = ref.X[:50].toarray()
    assert np.all(R == np.round(R))
    assert len(sec.var_names.intersection(ref.var_names)) > 14000


def test_build_her2st_rejects_a_changed_file(tmp_path):
    require(UPSTREAM / "her2st")
    bad = tmp_path / "local" / "her2st"
    bad.mkdir(parents=True)
    (bad / "H1.tsv.gz").write_bytes(b"not the file")
    with pytest.raises(build_her2st.C2LError, match=r"H1\.tsv\.gz .*sha256 .*downloads are disabled"):
        build_her2st.fetch(tmp_path / "dl", [tmp_path / "local"], allow_download=False)


def test_another_section_from_local_copies_with_na_label_rows(tmp_path, caplog):
    """--section G2: its files are not pinned (any local copy is taken, its sha256 logged); label rows with NA
    coordinates are dropped with a count in the log; spots left without a label get no region. Here H1's files
    stand in for G2's, with two NA rows added to the label file and one real row removed."""
    import logging

    require(UPSTREAM / "her2st")
    local = tmp_path / "local" / "her2st"
    local.mkdir(parents=True)
    src = UPSTREAM / "her2st"
    shutil.copy(src / "H1.tsv.gz", local / "G2.tsv.gz")
    shutil.copy(src / "H1_selection.tsv", local / "G2_selection.tsv")
    lbl = pd.read_csv(src / "H1_labeled_coordinates.tsv", sep="\t")
    removed = lbl.iloc[0]
    na_rows = lbl.iloc[:2].copy()
    na_rows[["x", "y"]] = np.nan
    pd.concat([lbl.iloc[1:], na_rows]).to_csv(local / "G2_labeled_coordinates.tsv", sep="\t", index=False)
    with pytest.raises(build_her2st.C2LError, match="A-H"):
        build_her2st.section_files("../H1")
    with caplog.at_level(logging.INFO, logger="c2l"):
        files = build_her2st.fetch(tmp_path / "dl", [tmp_path / "local", UPSTREAM], allow_download=False,
                                   section="G2")
        assert files["G2.tsv.gz"] == local / "G2.tsv.gz"
        assert "not pinned" in caplog.text
        sec = build_her2st.read_section(files["G2.tsv.gz"], files["G2_selection.tsv"],
                                        files["G2_labeled_coordinates.tsv"], "G2")
    assert "2 label row(s) with NA coordinates dropped" in caplog.text
    assert "1 of 613 spots have no region" in caplog.text
    assert sec.n_obs == 613 and int(sec.obs["region"].isna().sum()) == 1
    key = f"{round(removed['x'])}x{round(removed['y'])}"
    assert pd.isna(sec.obs.loc[key, "region"])
    assert "G2" in sec.uns["spatial"]
    assert build_her2st.folder_name("G2") == "her2st_G2" and build_her2st.folder_name() == "her2st"


@pytest.fixture(scope="module")
def small_run(her2st, tmp_path_factory) -> Path:
    """filter-reference (833 genes shared with H1) -> train-reference (40 epochs) -> map-cells (600 epochs at lr
    0.03): a few minutes of CPU, a fraction of the demo's."""
    out = tmp_path_factory.mktemp("her2st_run")
    invoke("read-visium", "--sample", "H1", "--h5ad", her2st / "H1.h5ad", "--outdir", out / "read")
    invoke("filter-reference", "--reference", her2st / "reference.h5ad", "--labels-key", "celltype_major",
           "--cell-count-cutoff", "50", "--cell-percentage-cutoff2", "0.15", "--nonz-mean-cutoff", "1.6",
           "--outdir", out / "filter")
    invoke("train-reference", "--reference", out / "filter" / "reference_filtered.h5ad", "--labels-key",
           "celltype_major", "--max-epochs", "40", "--no-early-stop", "--device", "cpu", "--threads", "2",
           "--seed", "0", "--outdir", out / "ref")
    invoke("map-cells", "--section", f"H1={out / 'read' / 'H1.h5ad'}", "--signatures", out / "ref" / "signatures.csv",
           "--n-cells-per-location", "60", "--max-epochs", "600", "--no-early-stop", "--device", "cpu",
           "--threads", "2", "--seed", "0", "--prefix", "joint", "--outdir", out / "map")
    return out


def test_small_run_finds_the_compartments(her2st, small_run):
    means = pd.read_csv(small_run / "map" / "H1.means_cell_abundance_w_sf.csv", index_col=0)
    means.columns = [c.replace("meanscell_abundance_w_sf_", "") for c in means.columns]
    regions = pd.read_csv(her2st / "H1_regions.csv", index_col=0)["region"].loc[means.index]
    got = expected_pair_aurocs(to_common(means), regions)
    print("small run AUROC:", json.dumps(got))
    for pair, measured in SMALL_RUN_MEASURED.items():
        assert got[pair] >= measured - MARGIN, f"{pair}: AUROC {got[pair]:.3f}, measured {measured:.3f}"


def test_demo_benchmark_scores_a_small_run(her2st, small_run, tmp_path):
    """`make bench NAME=demo` (benchmarks/her2st.py through the suite's entry point) on the small run laid out as
    the pipeline publishes it: its JSON has every method's AUROCs for the expected pairs and the region means."""
    import subprocess

    results = tmp_path / "results"
    (results / "map_cells" / "joint").mkdir(parents=True)
    (results / "train_reference").mkdir()
    for stat in ("means", "q05"):
        shutil.copy(small_run / "map" / f"H1.{stat}_cell_abundance_w_sf.csv", results / "map_cells" / "joint")
    shutil.copy(small_run / "ref" / "signatures.csv", results / "train_reference")
    out = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "demo", "--results", str(results), "--data",
                           str(her2st), "--json", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for method in ("cell2location", "cell2location_prop", "stereoscope", "NNLS"):
        assert "immune infiltrate / T-cells" in res["aurocs"][method]
    assert res["aurocs"]["cell2location"]["immune infiltrate / T-cells"] >= SMALL_RUN_MEASURED[
        "immune infiltrate / T-cells"] - MARGIN
    assert set(res["region_means"]) == {"cell2location", "stereoscope", "NNLS"} and res["n_spots"] > 500
    assert "| region / cell type |" in proc.stdout


def test_demo_output_matches_the_benchmark():
    """The full demo's numbers (C2L_DEMO_RESULTS=<its --outdir>) against the committed benchmark JSON."""
    results = os.environ.get("C2L_DEMO_RESULTS")
    if not results:
        pytest.skip("set C2L_DEMO_RESULTS to a `make demo` output folder to check it")
    data = Path(os.environ.get("C2L_DEMO_DATA", REPO / "testdata_build" / "her2st"))
    from her2st import evaluate

    res = evaluate(Path(results), require(data))
    committed = json.loads(COMMITTED.read_text())["aurocs"]["cell2location"]
    for pair in ("invasive cancer / Epithelial", "cancer in situ / Epithelial", "connective tissue / CAFs",
                 "immune infiltrate / B-cells"):
        got = res["aurocs"]["cell2location"][pair]
        assert got >= committed[pair] - MARGIN, f"{pair}: AUROC {got:.3f}, committed {committed[pair]:.3f}"
