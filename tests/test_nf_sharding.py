"""Sharding through real Nextflow: a joint model over more locations than --max_locations_per_model is fitted as
shards (one MAP_CELLS task each), merged by MERGE_SHARDS into the unsharded layout, and drawn per section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nf_helpers import LYMPH_NODE, REPO, STATS, assert_ok, needs_testdata, run_nf, shared, signatures_csv, stub_run, two_sections
from test_nf_pipeline import SHORT
from c2lnf.cli import DEFAULTS

pytestmark = needs_testdata


def test_stub_shards_and_merges(tmp_path_factory):
    """-stub (READ_VISIUM's stub reports 1000 spots): 3 shard tasks, one merge, the unsharded layout published."""
    run = shared("stub_sharded", lambda d: assert_ok(run_nf(d, "-stub", "--max_locations_per_model", "400")),
                 tmp_path_factory)
    assert sorted(r["tag"] for r in run.tasks("MAP_CELLS")) == [f"joint shard-{i}-of-3" for i in (1, 2, 3)]
    assert [r["tag"] for r in run.tasks("MERGE_SHARDS")] == ["joint"]
    assert "model 'joint': 1000 locations, at most 400 per model (--max_locations_per_model): 3 shards" in run.log
    # shards of 333 locations, below the smallest measured to agree with an unsharded model: one warning
    assert "model 'joint': shards of ~333 locations (--max_locations_per_model)" in run.log
    assert "raise --max_locations_per_model if memory allows" in run.log
    out = run.outdir / "map_cells" / "joint"
    for stat in STATS:
        assert (out / f"lymph_node.{stat}_cell_abundance_w_sf.csv").exists()
    assert (out / "lymph_node.cell2location.h5ad").exists() and (out / "joint_training.json").exists()
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == sorted(f"joint.shard-{i}-of-3_{kind}" for i in (1, 2, 3)
                            for kind in ("history.csv", "history.png", "model", "qc.png", "training.json"))
    # the merge task got every shard's tables and summaries
    cmd = (run.task_dir("MERGE_SHARDS") / ".command.sh").read_text()
    staged = sorted(p.name for p in (run.task_dir("MERGE_SHARDS") / "shards").iterdir())
    assert len(staged) == 3 * (4 + 2), staged
    assert (run.outdir / "plot_spatial" / "lymph_node").is_dir()
    assert "touch" in cmd


def test_per_sample_mode_shards_a_section_that_alone_is_too_large(tmp_path_factory):
    run = assert_ok(run_nf(tmp_path_factory.mktemp("stub_per_sample"), "-stub", "--mapping_mode", "per_sample",
                           "--max_locations_per_model", "600"))
    assert sorted(r["tag"] for r in run.tasks("MAP_CELLS")) == ["lymph_node shard-1-of-2", "lymph_node shard-2-of-2"]
    assert [r["tag"] for r in run.tasks("MERGE_SHARDS")] == ["lymph_node"]
    out = run.outdir / "map_cells" / "lymph_node"
    assert (out / "lymph_node.cell2location.h5ad").exists() and (out / "shards").is_dir()


def test_budget_from_the_memory_model_matches_the_python_rule(tmp_path_factory):
    """--gpu_memory_gb sized for ~300 of the stub's 1000 locations: the workflow's shard count (Groovy) is the one
    bin/c2lnf/memory.py gives for the same signatures."""
    from c2lnf import memory

    sig = signatures_csv(tmp_path_factory)
    table = pd.read_csv(sig, index_col=0)
    coef = memory.coefficients()
    per_location = coef["gb_per_location_gene"] * table.shape[0] + coef["gb_per_location_type"] * table.shape[1]
    budget = round(coef["base_gb"] + 300.5 * per_location, 6)
    expected = memory.n_shards(1000, memory.max_locations(budget, table.shape[0], table.shape[1]))
    assert expected == 4
    run = assert_ok(run_nf(tmp_path_factory.mktemp("stub_budget"), "-stub", "--signatures", sig,
                           "--input", REPO / "assets" / "samplesheet_test.csv", "--input_base_dir", LYMPH_NODE.parent,
                           "--gpu_memory_gb", str(budget), profile="local"))
    assert len(run.tasks("MAP_CELLS")) == expected
    assert f"memory model within --gpu_memory_gb {budget}" in run.log
    assert "shards of ~250 locations" in run.log and "raise --gpu_memory_gb if memory allows" in run.log


def test_no_shards_within_the_budget(tmp_path_factory):
    """The default budget (the memory model, 80 GB) keeps the test data in one model."""
    run = stub_run(tmp_path_factory)
    assert [r["tag"] for r in run.tasks("MAP_CELLS")] == ["joint"]
    assert not run.tasks("MERGE_SHARDS")
    assert "shards of ~" not in run.log


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    sheet = two_sections(tmp_path_factory)
    sig = signatures_csv(tmp_path_factory)
    return shared("two_sharded", lambda d: assert_ok(run_nf(
        d, "--input", sheet, "--signatures", sig, *SHORT, "--max_locations_per_model", "400", profile="local")),
        tmp_path_factory)


def test_sharded_joint_model_real(sharded):
    import anndata as ad

    maps = sharded.tasks("MAP_CELLS")
    assert sorted(r["tag"] for r in maps) == [f"joint shard-{i}-of-3" for i in (1, 2, 3)]
    out = sharded.outdir / "map_cells" / "joint"
    summary = json.loads((out / "joint_training.json").read_text())
    assert summary["n_shards"] == 3 and summary["n_locations"] == 1000
    assert all(300 <= n <= 340 for n in summary["locations_per_shard"]), summary["locations_per_shard"]
    for sample in ("ln_left", "ln_right"):
        mapped = ad.read_h5ad(out / f"{sample}.cell2location.h5ad")
        section = ad.read_h5ad(sharded.task_dir("MERGE_SHARDS") / "sections" / f"{sample}.h5ad")
        assert list(mapped.obs_names) == list(section.obs_names)
        # stratified: every shard holds a third of every section
        counts = mapped.obs["c2l_shard"].value_counts().sort_index()
        assert list(counts.index) == [1, 2, 3] and counts.max() - counts.min() <= 1, counts
        for stat in STATS:
            table = pd.read_csv(out / f"{sample}.{stat}_cell_abundance_w_sf.csv", index_col=0)
            assert table.shape == (mapped.n_obs, 11) and list(table.index) == list(mapped.obs_names)
            assert np.isfinite(table.values).all() and (table.values >= 0).all()
        assert set(mapped.obs["region"]) == {sample.split("_")[1]}  # metadata still travels with the section
        assert (sharded.outdir / "plot_spatial" / sample / f"{sample}.overlay.png").stat().st_size > 1000
    for i in (1, 2, 3):
        shard = json.loads((out / "shards" / f"joint.shard-{i}-of-3_training.json").read_text())
        assert shard["shard"]["spots"]["ln_left"] > 0 and shard["shard"]["spots"]["ln_right"] > 0
        assert shard["memory_estimate_gb"] > 0 and shard["model"]["n_locations"] == sum(shard["shard"]["spots"].values())
        # weighted as a part of the 1000-location run, on the shards' common rate path
        assert shard["model"]["locations_in_run"] == 1000 and shard["plan"]["level_epochs"] == DEFAULTS["map_level_epochs"]
        assert shard["model"]["location_weight"] == pytest.approx(1000 / shard["model"]["n_locations"], rel=1e-5)


# ---------------------------------------------------------------- Visium HD through the pipeline


def test_visium_hd_row_end_to_end(tmp_path_factory):
    """A samplesheet row pointing at a Visium HD output (no bin_size: 16 um, 3 cells per bin by default) runs
    READ_VISIUM -> MAP_CELLS -> PLOT_SPATIAL for real (tiny epochs)."""
    import anndata as ad

    from test_visium_hd import SYMBOLS, write_hd_fixture

    def make(folder):
        outs = write_hd_fixture(folder / "hd_run", side={16: 14, 8: 28})
        sheet = folder / "samplesheet.csv"
        sheet.write_text(f"sample,spaceranger_dir\nhd1,{outs}\n")
        ids = [f"ENSG{i:011d}" for i, s in enumerate(SYMBOLS) if not s.startswith("MT-")]
        rng = np.random.default_rng(0)
        sig = pd.DataFrame(rng.gamma(2.0, 1.0, size=(len(ids), 3)), index=ids, columns=["A", "B", "C"])
        sig.to_csv(folder / "signatures.csv")
        return assert_ok(run_nf(folder, "--input", sheet, "--signatures", folder / "signatures.csv", *SHORT,
                                "--map_level_epochs", "7", profile="local"))

    run = shared("visium_hd", make, tmp_path_factory)
    assert "--bin-size 16" in (run.task_dir("READ_VISIUM") / ".command.sh").read_text()
    assert "--n-cells-per-location 3" in (run.task_dir("MAP_CELLS") / ".command.sh").read_text()
    assert "--level-epochs 7" in (run.task_dir("MAP_CELLS") / ".command.sh").read_text()
    summary = json.loads((run.outdir / "map_cells" / "joint" / "joint_training.json").read_text())
    assert [(e["epoch"], round(e["lr"], 6)) for e in summary["lr_events"]] == [(7, 0.01)]  # --map_level_epochs 7
    mapped = ad.read_h5ad(run.outdir / "map_cells" / "joint" / "hd1.cell2location.h5ad")
    assert mapped.n_obs == 12 * 12 and mapped.uns["spatial"]["hd_lib"]["metadata"]["bin_size_um"] == 16
    assert (run.outdir / "plot_spatial" / "hd1").is_dir()
