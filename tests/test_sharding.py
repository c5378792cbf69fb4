"""Memory model and sharding: the split (stratified, reproducible, complete), the estimate, and a tiny joint model
over two lymph node halves fitted as 2 shards and merged back into the unsharded layout."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import TINY_MAPPING, assert_failed_cleanly, assert_png, invoke, no_staging
from c2lnf import memory
from c2lnf.cli import DEFAULTS
from c2lnf.map_cells import STATS, shard_tag

COEF = {"base_gb": 1.5, "gb_per_location_gene": 2e-8, "gb_per_location_type": 1e-6}


# ---------------------------------------------------------------- the split (no training)


@pytest.mark.parametrize("n_spots,count", [(10, 2), (997, 7), (5, 5), (3, 4), (4992, 3)])
def test_shards_are_stratified_complete_and_balanced(n_spots, count):
    shard = memory.shard_of_spots("sec", n_spots, count, seed=0)
    assert shard.shape == (n_spots,)
    sizes = np.bincount(shard, minlength=count)
    assert sizes.sum() == n_spots and set(np.unique(shard)) <= set(range(count))
    assert sizes.max() - sizes.min() <= 1  # floor or ceil of n_spots / count: every shard holds this section


def test_split_is_reproducible_and_differs_by_section_and_seed():
    a = memory.shard_of_spots("sec_a", 500, 4, seed=0)
    assert np.array_equal(a, memory.shard_of_spots("sec_a", 500, 4, seed=0))
    assert not np.array_equal(a, memory.shard_of_spots("sec_b", 500, 4, seed=0))
    assert not np.array_equal(a, memory.shard_of_spots("sec_a", 500, 4, seed=1))
    # a random split, not blocks of neighbouring (consecutive) spots
    assert len(np.unique(a[:20])) > 1


def test_shard_tag_sorts_in_order():
    tags = [shard_tag(i, 12) for i in range(1, 13)]
    assert tags[0] == "shard-01-of-12" and tags == sorted(tags)
    assert shard_tag(3, 4) == "shard-3-of-4"


# ---------------------------------------------------------------- the memory model


def test_estimate_grows_with_every_dimension():
    base = memory.estimate_gb(1000, 2000, 20, COEF)
    assert memory.estimate_gb(1100, 2000, 20, COEF) > base
    assert memory.estimate_gb(1000, 2100, 20, COEF) > base
    assert memory.estimate_gb(1000, 2000, 40, COEF) > base
    assert memory.estimate_gb(0, 0, 0, COEF) == pytest.approx(COEF["base_gb"])


@pytest.mark.parametrize("budget,genes", [(4.0, 18000), (80.0, 18000), (640.0, 18000), (1.9, 500)])
def test_max_locations_is_the_largest_model_within_the_budget(budget, genes):
    n = memory.max_locations(budget, genes, 50, COEF)
    assert memory.estimate_gb(n, genes, 50, COEF) <= budget < memory.estimate_gb(n + 1, genes, 50, COEF)
    assert memory.n_shards(3 * n, n) == 3 and memory.n_shards(3 * n + 1, n) == 4 and memory.n_shards(5, n) == 1


def test_budget_below_the_base_still_gives_one_location_per_model():
    assert memory.max_locations(0.5, 18000, 50, COEF) == 1


def test_shipped_coefficients_are_a_fit_with_positive_slope():
    coef = memory.coefficients()
    assert coef is not None, "assets/memory_model.json is missing"
    assert coef["base_gb"] > 0 and coef["gb_per_location_gene"] > 0 and coef["gb_per_location_type"] >= 0
    assert coef["source"].startswith("benchmarks/results/memory_model_")


# ---------------------------------------------------------------- map-cells --shard + merge-shards (tiny)


@pytest.fixture(scope="session")
def sharded_mapping(ln_halves, signatures_csv, tmp_path_factory):
    """The joint model of conftest.joint_mapping fitted as 2 shards, then merged; returns (shard dir, merged dir)."""
    shards = tmp_path_factory.mktemp("shards")
    sections = ["--section", f"ln_left={ln_halves['ln_left']}", "--section", f"ln_right={ln_halves['ln_right']}"]
    for i in (1, 2):
        invoke("map-cells", *sections, "--signatures", signatures_csv, "--detection-alpha", "20",
               "--detection-alpha", "ln_right=200", "--prefix", f"joint.{shard_tag(i, 2)}", "--shard", f"{i}/2",
               *TINY_MAPPING, "--seed", "0", "--outdir", shards)
    merged = tmp_path_factory.mktemp("merged")
    invoke("merge-shards", *sections, "--shards", "2", "--shard-dir", shards, "--prefix", "joint", "--outdir", merged)
    return shards, merged


def test_each_shard_holds_half_of_every_section(sharded_mapping, ln_halves):
    shards, _ = sharded_mapping
    seen = {name: [] for name in ln_halves}
    for i in (1, 2):
        summary = json.loads((shards / f"joint.{shard_tag(i, 2)}_training.json").read_text())
        assert summary["shard"]["index"] == i and summary["shard"]["count"] == 2
        assert summary["memory_estimate_gb"] > 0
        for name, path in ln_halves.items():
            n = ad.read_h5ad(path, backed="r").n_obs
            table = pd.read_csv(shards / f"{name}.{shard_tag(i, 2)}.q05_cell_abundance_w_sf.csv", index_col=0)
            assert abs(len(table) - n / 2) <= 0.5  # stratified: half of each section in each shard
            assert summary["shard"]["spots"][name] == len(table)
            seen[name].extend(table.index)
    assert not list(shards.glob("*.cell2location.h5ad"))  # shards write tables only; merge-shards writes sections


def test_merged_outputs_are_laid_out_like_an_unsharded_run(sharded_mapping, joint_mapping, ln_halves):
    _, merged = sharded_mapping
    no_staging(merged)
    unsharded_sections = sorted(p.name for p in joint_mapping.glob("ln_*"))
    assert sorted(p.name for p in merged.glob("ln_*")) == unsharded_sections
    for name, path in ln_halves.items():
        section = ad.read_h5ad(path)
        out = ad.read_h5ad(merged / f"{name}.cell2location.h5ad")
        ref = ad.read_h5ad(joint_mapping / f"{name}.cell2location.h5ad")
        assert list(out.obs_names) == list(section.obs_names) == list(ref.obs_names)  # the section's own order
        assert out.n_vars == ref.n_vars and set(out.obsm) >= set(ref.obsm)
        for stat in STATS:
            a = out.obsm[f"{stat}_cell_abundance_w_sf"]
            assert list(a.columns) == list(ref.obsm[f"{stat}_cell_abundance_w_sf"].columns)
            assert np.isfinite(a.to_numpy()).all() and (a.to_numpy() >= 0).all()
            csv = pd.read_csv(merged / f"{name}.{stat}_cell_abundance_w_sf.csv", index_col=0)
            assert list(csv.index) == list(section.obs_names) and np.allclose(csv.to_numpy(), a.to_numpy())
        counts = out.obs["c2l_shard"].value_counts()
        assert sorted(counts.index) == [1, 2] and abs(counts[1] - counts[2]) <= 1
        assert out.uns["cell2location"]["n_shards"] == 2
        assert out.uns["cell2location"]["detection_alpha"] == (200 if name == "ln_right" else 20)


def test_merged_summary_and_history_describe_every_shard(sharded_mapping, ln_halves):
    _, merged = sharded_mapping
    summary = json.loads((merged / "joint_training.json").read_text())
    assert summary["sharded"] and summary["n_shards"] == 2 and len(summary["shards"]) == 2
    n_total = sum(ad.read_h5ad(p, backed="r").n_obs for p in ln_halves.values())
    assert summary["n_locations"] == n_total == sum(summary["locations_per_shard"])
    history = pd.read_csv(merged / "joint_history.csv")
    assert set(history["shard"]) == {shard_tag(1, 2), shard_tag(2, 2)}
    assert_png(merged / "joint_history.png")


def test_shard_history_plot_marks_rate_steps_and_each_stop(tmp_path, monkeypatch):
    from c2lnf import merge_shards, runtime

    drawn = []
    monkeypatch.setattr(runtime, "save_figures", lambda figures, path: drawn.extend(figures) or path)
    events = [{"epoch": 2000, "lr": 0.01}, {"epoch": 4000, "lr": 0.0033}]
    histories, summaries = {}, {}
    reasons = ["converged: the 100-epoch mean -ELBO improved by 2e-05 (< tol 0.0001, relative) at 2 checks",
               "reached max_epochs 4600"]
    for i, (n, reason) in enumerate(zip([4300, 4600], reasons), start=1):
        tag = shard_tag(i, 2)
        histories[tag] = pd.DataFrame({"epoch": np.arange(1, n + 1), "elbo_train": np.linspace(2e5, 1e5, n)})
        summaries[tag] = {"epochs": n, "stopped_epoch": n, "stop_reason": reason, "lr_events": events}
    merge_shards.plot_shard_histories(histories, summaries, tmp_path / "h.png", "model")
    ax = drawn[0].axes[0]
    steps = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
    assert steps == [2000, 4000]  # one line per step, shared by the shards
    stops = [line.get_xdata()[0] for line in ax.lines if line.get_marker() == "|"]
    assert stops == [4300, 4600]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "4300 ep., converged" in labels[0] and "4600 ep., max epochs" in labels[1]
    assert ax.get_xlim()[1] >= 4600


def test_merge_with_a_missing_shard_fails_cleanly(sharded_mapping, ln_halves, tmp_path):
    shards, _ = sharded_mapping
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in shards.iterdir():
        if shard_tag(2, 2) not in f.name and f.is_file():
            (partial / f.name).symlink_to(f)
    out = tmp_path / "out"
    result = invoke("merge-shards", "--section", f"ln_left={ln_halves['ln_left']}", "--section",
                    f"ln_right={ln_halves['ln_right']}", "--shards", "2", "--shard-dir", partial, "--prefix", "joint",
                    "--outdir", out, expect=None)
    assert_failed_cleanly(result, 1, f"joint.{shard_tag(2, 2)}_training.json is missing", outdir=out)


def test_merge_detects_a_shard_that_does_not_cover_the_section(sharded_mapping, ln_halves, tmp_path):
    shards, _ = sharded_mapping
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in shards.iterdir():
        if f.is_file():
            (broken / f.name).symlink_to(f)
    name = f"ln_left.{shard_tag(2, 2)}.means_cell_abundance_w_sf.csv"
    (broken / name).unlink()
    table = pd.read_csv(shards / name, index_col=0)
    table.iloc[1:].to_csv(broken / name)  # one spot lost
    for stat in STATS[1:]:  # only the first table decides membership; keep the others consistent
        other = f"ln_left.{shard_tag(2, 2)}.{stat}_cell_abundance_w_sf.csv"
        (broken / other).unlink()
        pd.read_csv(shards / other, index_col=0).iloc[1:].to_csv(broken / other)
    out = tmp_path / "out"
    result = invoke("merge-shards", "--section", f"ln_left={ln_halves['ln_left']}", "--shards", "2", "--shard-dir",
                    broken, "--prefix", "joint", "--outdir", out, expect=None)
    assert_failed_cleanly(result, 1, "sample 'ln_left', field 'shard': the shards do not cover the section exactly",
                          "1 spot(s) in no shard", outdir=out)


@pytest.mark.parametrize("value", ["3/2", "1/1", "0/4", "a/b", "2"])
def test_bad_shard_option_is_refused(value, ln_halves, signatures_csv, tmp_path):
    result = invoke("map-cells", "--section", f"ln_left={ln_halves['ln_left']}", "--signatures", signatures_csv,
                    "--shard", value, "--outdir", tmp_path / "out", expect=None)
    assert result.exit_code == 2 and "--shard" in result.output


def test_minibatch_mapping(ln_halves, signatures_csv, tmp_path):
    """--batch-size: the model trains in minibatches (Trace_ELBO: JIT needs one fixed shape) and says so."""
    out = tmp_path / "mini"
    invoke("map-cells", "--section", f"ln_left={ln_halves['ln_left']}", "--signatures", signatures_csv,
           "--batch-size", "200", *TINY_MAPPING, "--seed", "0", "--outdir", out, "--prefix", "mini")
    summary = json.loads((out / "mini_training.json").read_text())
    assert summary["model"]["batch_size"] == 200 and summary["epochs"] == 20
    table = pd.read_csv(out / "ln_left.q05_cell_abundance_w_sf.csv", index_col=0)
    assert len(table) == summary["model"]["n_locations"] > 200 and np.isfinite(table.to_numpy()).all()


def test_shard_weighs_its_locations_as_part_of_the_whole_run(sharded_mapping, ln_halves):
    """Each shard's per-location ELBO terms carry the weight total / n (Pyro's subsample scaling): its gene-level
    parameters meet their priors as in the unsharded model."""
    shards, _ = sharded_mapping
    n_total = sum(ad.read_h5ad(p, backed="r").n_obs for p in ln_halves.values())
    for i in (1, 2):
        summary = json.loads((shards / f"joint.{shard_tag(i, 2)}_training.json").read_text())
        n = summary["model"]["n_locations"]
        assert summary["shard"]["locations_in_run"] == summary["model"]["locations_in_run"] == n_total
        assert summary["model"]["location_weight"] == pytest.approx(n_total / n, rel=1e-5)
        assert 1.9 < summary["model"]["location_weight"] < 2.1
        # every shard takes the same rate path: the rate falls at fixed epochs, not at the -ELBO's plateaus
        assert summary["plan"]["level_epochs"] == DEFAULTS["map_level_epochs"] > 0


def test_unsharded_model_takes_the_shards_rate_path(joint_mapping):
    """The default path of an unsharded model is the shards' (the rate falls at fixed epochs), so that a sharded
    run reproduces the unsharded run that did not fit."""
    summary = json.loads((joint_mapping / "joint_training.json").read_text())
    assert summary["plan"]["level_epochs"] == DEFAULTS["map_level_epochs"] > 0
    assert summary["model"]["location_weight"] == 1.0 and summary["model"]["locations_in_run"] == summary["model"]["n_locations"]


def test_location_weight_scales_only_gene_level_terms(ln_halves, signatures_csv):
    """map_cells(total_locations=2n): every ELBO term outside the location plate (gene-level parameters and
    their hyperpriors) is weighted n / 2n = 0.5, in the model and in the guide; per-location terms (abundances,
    detection, the data) keep weight 1; both exports give the model's own n rows."""
    from pyro import poutine

    from c2lnf.map_cells import map_cells, read_signatures
    from c2lnf.training.posterior import _model_args
    from c2lnf.training.stopping import Plan

    section = ad.read_h5ad(ln_halves["ln_left"])
    sig = read_signatures(signatures_csv)
    plan = Plan(max_epochs=3, lr=0.002, lr_min=0.002).fixed()
    for analytic in (True, False):
        trained, combined = map_cells({"ln_left": section}, sig, 30, {"ln_left": 20}, plan, "cpu", True, analytic, 5,
                                      total_locations=2 * section.n_obs)
        model = trained.model
        assert combined.uns["c2l_params"]["location_weight"] == 2.0
        args, kwargs = _model_args(model, None)
        guide_trace = poutine.trace(model.module.guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model.module.model, trace=guide_trace)).get_trace(*args, **kwargs)
        for trace in (model_trace, guide_trace):
            scales = {n: float(s["scale"]) for n, s in trace.nodes.items() if s["type"] == "sample"}
            for local in ("w_sf", "detection_y_s", "n_s_cells_per_location"):
                assert scales[local] == 1.0
            for gene_level in ("m_g", "s_g_gene_add", "alpha_g_inverse", "detection_mean_y_e", "m_g_mean"):
                assert scales[gene_level] == pytest.approx(0.5)
        assert float(model_trace.nodes["data_target"]["scale"]) == 1.0
        for stat in STATS:
            table = combined.obsm[f"{stat}_cell_abundance_w_sf"]
            assert table.shape == (section.n_obs, sig.shape[1]) and np.isfinite(np.asarray(table)).all()
