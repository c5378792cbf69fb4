"""Every module through real Nextflow: outputs of each task of the `test` profile, real and `-stub`.

The five modules run inside main.nf (`-profile test,local`, tiny epochs); each test reads one task's work
folder (found from the trace hash), so it checks exactly what the module declared and produced, then the
published copy. The same run feeds tests/test_nf_pipeline.py (made once per session, see nf_helpers.shared).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from nf_helpers import CELL_TYPES, STATS, STEPS, needs_testdata, real_run, stub_run

pytestmark = needs_testdata

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    return stub_run(tmp_path_factory)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width, height


def _versions(task_dir, step):
    """The task's versions.yml: its process as the key and a version for each package the step uses."""
    from c2lnf.versions import STEP_PACKAGES

    text = (task_dir / "versions.yml").read_text()
    assert text.startswith(f'"CELL2LOCATION:{step}":'), text[:200]
    listed = dict(re.findall(r'^\s+([\w.-]+): "([^"]+)"$', text, re.M))
    assert set(STEP_PACKAGES[step]) | {"c2lnf"} <= set(listed), (step, listed)
    assert all(re.match(r"\d", v) for k, v in listed.items() if k != "cuda-runtime"), listed


def _summary(path, epochs):
    summary = json.loads(path.read_text())
    assert summary["epochs"] == epochs and summary["device"].startswith("cpu"), summary
    assert np.isfinite(summary["final_elbo"]) and summary["train_seconds"] > 0, summary


@pytest.mark.parametrize("step", STEPS)
def test_stub_runs_each_module(stub, step):
    """-stub: each module's stub block ran (a missing declared output would have failed the task)."""
    rows = stub.tasks(step)
    assert [r["status"] for r in rows] == ["COMPLETED"], rows
    task = stub.task_dir(step)
    assert "touch" in (task / ".command.sh").read_text()                # the stub: block ran, not the script
    _versions(task, step)


# --- real outputs --------------------------------------------------------------------------------------------


def test_read_visium(real):
    import anndata as ad

    task = real.task_dir("READ_VISIUM", "lymph_node")
    adata = ad.read_h5ad(task / "lymph_node.h5ad")
    assert adata.shape == (1000, 2000)
    assert adata.obsm["spatial"].shape == (1000, 2)
    assert np.isfinite(np.asarray(adata.obsm["spatial"], dtype=float)).all()
    assert set(adata.obs["condition"]) == {"test"}                 # an extra samplesheet column, via meta.metadata
    assert set(adata.obs["sample"]) == {"lymph_node"}
    assert adata.X.sum() > 0 and float(adata.X.max()) == int(adata.X.max())  # raw integer counts
    qc = pd.read_csv(task / "lymph_node.qc.csv")
    assert len(qc) == 1 and qc.loc[0, "sample"] == "lymph_node"
    assert qc.loc[0, "n_spots"] == 1000 and qc.loc[0, "n_genes"] == 2000
    _versions(task, "READ_VISIUM")
    published = real.outdir / "read_visium"
    assert sorted(p.name for p in published.iterdir()) == ["lymph_node.h5ad", "lymph_node.qc.csv", "qc_summary.csv"]


def test_filter_reference(real):
    import anndata as ad

    task = real.task_dir("FILTER_REFERENCE")
    filtered = ad.read_h5ad(task / "reference_filtered.h5ad", backed="r")
    assert filtered.n_obs == 330
    assert 8500 <= filtered.n_vars <= 9300, filtered.n_vars          # README: about 8,900 of 10,237 pass
    assert sorted(filtered.obs["cell_type"].unique()) == CELL_TYPES
    genes = pd.read_csv(task / "reference_genes.csv", index_col=0)
    assert len(genes) == 10237
    assert min(_png_size(task / "reference_filter.png")) >= 100
    _versions(task, "FILTER_REFERENCE")
    assert (real.outdir / "filter_reference" / "reference_filtered.h5ad").is_file()


def test_train_reference(real):
    import anndata as ad

    task = real.task_dir("TRAIN_REFERENCE")
    sig = pd.read_csv(task / "signatures.csv", index_col=0)
    assert list(sig.columns) == CELL_TYPES
    n_genes = ad.read_h5ad(real.task_dir("FILTER_REFERENCE") / "reference_filtered.h5ad", backed="r").n_vars
    assert len(sig) == n_genes and sig.index.is_unique
    assert np.isfinite(sig.values).all() and (sig.values >= 0).all() and sig.values.sum() > 0
    history = pd.read_csv(task / "reference_history.csv")
    assert len(history) == 3                                          # --ref_max_epochs 3
    assert (task / "reference_model" / "model.pt").stat().st_size > 0
    for png in ("reference_history.png", "reference_qc.png"):
        assert min(_png_size(task / png)) >= 100
    _summary(task / "reference_training.json", epochs=3)
    posterior = ad.read_h5ad(task / "reference_posterior.h5ad", backed="r")
    assert posterior.n_obs == 330
    _versions(task, "TRAIN_REFERENCE")


def test_map_cells(real):
    import anndata as ad

    task = real.task_dir("MAP_CELLS", "joint")
    out = task / "joint"    # written under the model's folder, as published (map_cells/joint/)
    tables = {s: pd.read_csv(out / f"lymph_node.{s}_cell_abundance_w_sf.csv", index_col=0) for s in STATS}
    for stat, table in tables.items():
        assert table.shape == (1000, 11), (stat, table.shape)
        assert list(table.columns) == CELL_TYPES
        assert np.isfinite(table.values).all() and (table.values >= 0).all(), stat
    assert (tables["q05"].values <= tables["q95"].values + 1e-6).all()
    assert (tables["means"].sum(axis=1) > 0).all()
    mapped = ad.read_h5ad(out / "lymph_node.cell2location.h5ad")
    assert mapped.shape == (1000, 2000)
    for stat in STATS:
        obsm = mapped.obsm[f"{stat}_cell_abundance_w_sf"]
        assert obsm.shape == (1000, 11)
        np.testing.assert_allclose(np.asarray(obsm, dtype=float), tables[stat].loc[mapped.obs_names].values, rtol=1e-5)
    assert (out / "joint_model" / "model.pt").stat().st_size > 0
    assert len(pd.read_csv(out / "joint_history.csv")) == 30           # --map_max_epochs 30
    _summary(out / "joint_training.json", epochs=30)
    for png in ("joint_history.png", "joint_qc.png"):
        assert min(_png_size(out / png)) >= 100
    _versions(task, "MAP_CELLS")


def test_plot_spatial(real):
    task = real.task_dir("PLOT_SPATIAL", "lymph_node")
    for name in ("q05_abundance", "overlay", "proportions"):
        png = task / "lymph_node" / f"lymph_node.{name}.png"   # under the section's folder, as published
        assert png.stat().st_size > 10_000, png
        assert min(_png_size(png)) >= 200, png
    _versions(task, "PLOT_SPATIAL")
    published = real.outdir / "plot_spatial" / "lymph_node"
    assert sorted(p.name for p in published.iterdir()) == [
        "lymph_node.overlay.png", "lymph_node.proportions.png", "lymph_node.q05_abundance.png"]
