"""The training plan's stopping rule on synthetic -ELBO curves, and the analytic posterior export against the
sampled one (the same model, both exports)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from c2lnf.training import Monitor, Plan, stop_kind

PLAN = Plan(max_epochs=30000, lr=0.03, lr_min=0.002, tol=1e-4, window=100, check_every=100, min_epochs=500)


def run(plan: Plan, curve) -> tuple[Monitor, str]:
    monitor = Monitor(plan)
    action = "continue"
    for value in curve:
        action = monitor.update(value)
        if action not in ("continue", "lower_lr"):
            break
    return monitor, action


def curve(n: int, level=2e5, drop=1e5, tau=300.0, noise=0.0, seed=0) -> np.ndarray:
    """An exponential approach to `level` from `level + drop` with time constant `tau`, plus Gaussian noise."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return level + drop * np.exp(-t / tau) + rng.normal(0, noise, n)


def test_flat_curve_steps_the_rate_down_then_stops():
    monitor, action = run(PLAN, np.full(30000, 2e5))
    assert action == "stop"
    assert [round(e["lr"], 6) for e in monitor.events if e["event"] == "lower_lr"] == [0.01, 0.003333, 0.002]
    # each level needs two windows before its first check and `patience` checks below tol
    assert monitor.stopped_epoch == 4 * 300
    assert monitor.stop_reason.startswith("converged")
    assert monitor.summary()["stopped_epoch"] == 1200 and monitor.lr == 0.002
    assert monitor.summary()["stop_kind"] == "converged" == stop_kind(monitor.summary())


def test_noisy_plateau_stops_and_a_falling_curve_does_not():
    # converges within ~3000 epochs, noise 0.1% of the level: must stop, after the curve has flattened
    noisy, action = run(PLAN, curve(30000, tau=600, noise=200))
    assert action == "stop"
    assert 3000 < noisy.stopped_epoch < 12000
    # still falling by ~0.2% per 100 epochs at the end: never converged, runs to the ceiling
    falling = 2e5 + 1e5 * (1 - np.arange(30000) / 30000)
    monitor, action = run(PLAN, falling)
    assert action == "max_epochs" and monitor.stopped_epoch == 30000
    assert not [e for e in monitor.events if e["event"] == "lower_lr"]


def test_a_decimal_factor_lands_on_lr_min():
    # 0.03 * 0.0666667 is 0.002000001: that is lr_min, not one more level above it
    plan = Plan(max_epochs=30000, lr=0.03, lr_min=0.002, lr_factor=0.0666667, tol=1e-4, window=100,
                check_every=100, min_epochs=500)
    monitor, action = run(plan, np.full(30000, 2e5))
    assert action == "stop" and monitor.stopped_epoch == 2 * 300
    assert [e["lr"] for e in monitor.events if e["event"] == "lower_lr"] == [0.002]


def test_fixed_level_epochs_give_every_curve_the_same_rate_path():
    """level_epochs: the rate falls every N epochs whatever the curve does (flat, noisy, still falling), and
    the plateau test only stops training at lr_min."""
    plan = Plan(max_epochs=30000, lr=0.03, lr_min=0.002, tol=1e-4, window=100, check_every=100, min_epochs=500,
                level_epochs=1000)
    paths = []
    for values in (np.full(30000, 2e5), curve(30000, tau=600, noise=200), curve(30000, tau=600, noise=200, seed=1),
                   2e5 + 1e5 * (1 - np.arange(30000) / 30000)):
        monitor, action = run(plan, values)
        paths.append([(e["epoch"], round(e["lr"], 6)) for e in monitor.events if e["event"] == "lower_lr"])
        if action == "stop":
            assert monitor.stopped_epoch >= 3000 + 2 * 100 and monitor.lr == 0.002
            assert monitor.stop_reason.startswith("converged")
    assert all(p == [(1000, 0.01), (2000, 0.003333), (3000, 0.002)] for p in paths)
    assert run(plan, np.full(30000, 2e5))[0].stopped_epoch == 3000 + 3 * 100  # two windows, then 2 checks below
    falling, action = run(plan, 2e5 + 1e5 * (1 - np.arange(30000) / 30000))
    assert action == "max_epochs"  # never flat: the ceiling, as without level_epochs
    assert "every 1000 epochs" in plan.describe()
    with pytest.raises(ValueError):
        Plan(max_epochs=10, lr=0.03, lr_min=0.002, level_epochs=-1)


def test_min_epochs_holds_the_stop():
    plan = Plan(max_epochs=5000, lr=0.01, lr_min=0.01, tol=1e-4, window=50, check_every=50, min_epochs=2000)
    monitor, action = run(plan, np.full(5000, 1e5))
    assert action == "stop" and monitor.stopped_epoch == 2000


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_elbo_is_divergence(bad):
    values = list(curve(400)) + [bad] + list(curve(100))
    monitor, action = run(PLAN, values)
    assert action == "diverged" and monitor.stopped_epoch == 401
    assert "-ELBO is" in monitor.stop_reason and monitor.summary()["stop_kind"] == "diverged"


def test_rising_elbo_is_divergence():
    values = np.concatenate([curve(1000, tau=100), np.linspace(2e5, 3e5, 1000)])
    monitor, action = run(PLAN, values)
    assert action == "diverged" and 1000 < monitor.stopped_epoch <= 1300
    assert "rose" in monitor.stop_reason and monitor.summary()["stop_kind"] == "diverged"


def test_stop_kind_is_recorded_and_read_from_older_json():
    monitor, action = run(replace(PLAN, max_epochs=300).fixed(), curve(300))
    assert action == "max_epochs" and monitor.summary()["stop_kind"] == "max_epochs"
    # the kind, not the sentence, decides; JSONs written before the kind existed are read from the sentence
    assert stop_kind({"stop_kind": "converged", "stop_reason": "anything"}) == "converged"
    assert stop_kind({"stop_reason": "converged: the 100-epoch mean"}) == "converged"
    assert stop_kind({"stop_reason": "reached max_epochs 30000"}) == "max_epochs"
    assert stop_kind({"stop_reason": "the 100-epoch mean -ELBO rose"}) == "diverged"
    assert stop_kind({}) is None


def test_fixed_plan_is_the_tutorial():
    fixed = PLAN.fixed()
    monitor, action = run(fixed, np.full(30000, 2e5))
    assert action == "max_epochs" and monitor.stopped_epoch == 30000 and monitor.lr == 0.03
    # the rule only notes where it would have stopped (first plateau after min_epochs), nothing else changes
    assert [e["event"] for e in monitor.events] == ["converged", "max_epochs"]
    assert monitor.converged_epoch == 500 and monitor.summary()["converged_epoch"] == 500
    rising, action = run(fixed, np.linspace(2e5, 3e5, 3000))
    assert action == "continue" and rising.stopped_epoch is None  # no divergence stop with fixed epochs either


def test_plan_checks():
    with pytest.raises(ValueError):
        Plan(max_epochs=10, lr=0.001, lr_min=0.002)
    with pytest.raises(ValueError):
        Plan(max_epochs=0, lr=0.01, lr_min=0.002)


# ---------------------------------------------------------------- analytic vs sampled posterior export


def test_analytic_export_matches_the_sampled_one(ln_halves, signatures_csv):
    """Same trained model, both exports (left half of the lymph node test data, 300 epochs).

    Means: per cell type Pearson r >= 0.999. q05/q95/stds: the analytic values are exact, the sampled ones carry
    Monte Carlo noise (a 5 % quantile of 1000 draws); so the analytic export must agree with a 1000-sample export at
    least as well as a second 1000-sample export (another seed) does, and at r >= 0.998 (q05; 0.995 for q95, 0.98
    for stds).
    """
    import anndata as ad
    import pandas as pd
    import pyro

    from c2lnf.map_cells import abundance_table, map_cells, read_signatures
    from c2lnf.runtime import seed_everything
    from c2lnf.training import export_posterior

    seed_everything(0)
    section = ad.read_h5ad(ln_halves["ln_left"])
    plan = Plan(max_epochs=300, lr=0.03, lr_min=0.002).fixed()
    trained, combined = map_cells({"ln": section}, read_signatures(signatures_csv), 30.0, {"ln": 20.0}, plan, "cpu",
                                  fast=True, analytic=True, num_samples=1000)
    assert trained.export.startswith("analytic")
    sampled = []
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        table, how = export_posterior(trained.model, combined.copy(), False, 1000, combined.n_obs, "cpu")
        assert how == "sampled (1000 posterior samples)"
        sampled.append(table)

    def per_type_r(x, y, stat):
        a, b = abundance_table(x, stat), abundance_table(y, stat)
        assert list(a.columns) == list(b.columns) and a.shape == b.shape
        return pd.Series({c: np.corrcoef(a[c], b[c])[0, 1] for c in a.columns})

    means = per_type_r(combined, sampled[0], "means")
    assert (means >= 0.999).all(), means.round(5).to_dict()
    for stat in ("q05", "q95", "stds"):
        exact_vs_sampled = per_type_r(combined, sampled[0], stat)
        sampled_vs_sampled = per_type_r(sampled[1], sampled[0], stat)
        floor = {"q05": 0.998, "q95": 0.995, "stds": 0.98}[stat]  # the upper tail and spread are noisier to sample
        assert (exact_vs_sampled >= floor).all(), (stat, exact_vs_sampled.round(5).to_dict())
        assert exact_vs_sampled.median() >= sampled_vs_sampled.median(), (stat, exact_vs_sampled.median(),
                                                                            sampled_vs_sampled.median())
    # every site's mean, also the global ones (m_g) and the deterministic one (u_sf_mRNA_factors): within five
    # standard errors of the 1000-sample mean
    means_a, means_s = combined.uns["mod"]["post_sample_means"], sampled[0].uns["mod"]["post_sample_means"]
    stds_a = combined.uns["mod"]["post_sample_stds"]
    assert set(means_a) == set(means_s)
    for site in ("m_g", "detection_y_s", "w_sf"):
        a, s, sd = (np.asarray(x[site], dtype=float) for x in (means_a, means_s, stds_a))
        assert a.shape == s.shape
        assert (np.abs(a - s) <= 5 * sd / np.sqrt(1000) + 1e-6).mean() > 0.999, site
    a, s = (np.asarray(x["u_sf_mRNA_factors"], dtype=float).ravel() for x in (means_a, means_s))
    assert np.corrcoef(a, s)[0, 1] > 0.999


# ---------------------------------------------------------------- data kept on the training device


def test_data_on_device_decision(monkeypatch):
    """`auto` keeps minibatched data on a GPU only where a dense copy fits; full batches and the CPU are left alone."""
    import types

    import torch

    from c2lnf import runtime, training

    adata = types.SimpleNamespace(n_obs=73260, n_vars=10237)  # the tutorial's reference: 3.0 GB dense
    assert training.device_data("auto", "gpu", adata, one_batch=True)[0] is False
    assert training.device_data("off", "gpu", adata, one_batch=False)[0] is False
    assert training.device_data("auto", "cpu", adata, one_batch=False) == (
        False, "minibatches from host memory (CPU training)")
    on, line = training.device_data("on", "cpu", adata, one_batch=False)
    assert on and "3.00 GB dense" in line
    monkeypatch.setattr(runtime, "available_memory_gb", lambda: 100.0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80e9, 80e9))
    on, line = training.device_data("auto", "gpu", adata, one_batch=False)
    assert on and line.startswith("whole data on the GPU (3.00 GB dense")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10e9, 80e9))  # 3 GB > a quarter of 10 GB free
    on, line = training.device_data("auto", "gpu", adata, one_batch=False)
    assert not on and "over 25% of the GPU's free 10.0 GB" in line
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80e9, 80e9))
    monkeypatch.setattr(runtime, "available_memory_gb", lambda: 8.0)  # the host builds the copy first
    assert training.device_data("auto", "gpu", adata, one_batch=False)[0] is False


def test_reference_with_its_data_on_the_device_learns_the_same(filtered_reference, tmp_path):
    """`--data-on-device on` (the device-backed loader, here on the CPU) against scvi-tools' host loader: same
    minibatch size and number of steps, other minibatch draws; the signatures agree and the JSON says which ran."""
    import json

    import pandas as pd

    from conftest import invoke

    runs = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        invoke("train-reference", "--reference", filtered_reference / "reference_filtered.h5ad", "--labels-key",
               "cell_type", "--batch-key", "sample", "--batch-size", "100", "--max-epochs", "60", "--no-early-stop",
               "--lr", "0.002", "--device", "cpu", "--seed", "0", "--data-on-device", mode, "--outdir", out)
        runs[mode] = (pd.read_csv(out / "signatures.csv", index_col=0),
                      json.loads((out / "reference_training.json").read_text()))
    (sig_off, js_off), (sig_on, js_on) = runs["off"], runs["on"]
    assert js_off["data_loading"] == "minibatches from host memory (--data-on-device off)"
    assert js_on["data_loading"].startswith("whole data in memory (CPU)")
    assert js_on["epochs"] == js_off["epochs"] == 60
    assert list(sig_on.columns) == list(sig_off.columns) and sig_on.shape == sig_off.shape
    r = pd.Series({c: np.corrcoef(np.log1p(sig_on[c]), np.log1p(sig_off[c]))[0, 1] for c in sig_on.columns})
    print("per-type r of log1p signatures, device-backed vs host loader:", r.round(4).to_dict())
    assert r.min() >= 0.99, r.round(4).to_dict()
    assert abs(js_on["final_elbo"] - js_off["final_elbo"]) <= 0.02 * abs(js_off["final_elbo"])


# ---------------------------------------------------------------- one optimiser for all parameters


def _svi_run(optim, steps: int, lr_change_at: int | None = None, fresh: bool = True):
    """A small Pyro model (three parameters of different shapes and constraints) fitted by SVI with `optim`,
    from a cleared parameter store (`fresh`) or from the one there; returns the parameters."""
    from types import SimpleNamespace

    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO

    from c2lnf.training import set_learning_rate

    data = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1

    def model():
        loc = pyro.param("loc", torch.zeros(3))
        scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
        w = pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        with pyro.plate("obs", 50):
            pyro.sample("y", dist.Normal(w, 1.0).to_event(1), obs=data)

    def guide():
        pyro.sample("w", dist.Delta(pyro.param("m", torch.zeros(3))).to_event(1))

    if fresh:
        pyro.clear_param_store()
    svi = SVI(model, guide, optim, Trace_ELBO())
    for step in range(steps):
        if step == lr_change_at:
            set_learning_rate(SimpleNamespace(optim=optim), 0.01)
        svi.step()
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_one_adam_steps_like_pyros_adam_bit_for_bit():
    import pyro.optim
    import torch

    from c2lnf.training import one_adam

    ref = _svi_run(pyro.optim.Adam({"lr": 0.05}), 60, lr_change_at=30)
    one = _svi_run(one_adam(0.05), 60, lr_change_at=30)
    assert ref.keys() == one.keys() == {"loc", "scale", "m"}
    for k in ref:
        assert torch.equal(ref[k], one[k]), k
    moved = _svi_run(one_adam(0.05), 60)  # without the rate change the path differs: the change took effect
    assert not torch.equal(moved["m"], one["m"])


def test_one_adam_steps_only_the_parameters_it_is_given():
    import torch

    from c2lnf.training import one_adam

    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    optim = one_adam(0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    optim([a, b])
    b.grad = torch.full((3,), 5.0)
    before = b.detach().clone()
    optim([a])  # b is not part of this step: Pyro would not touch it, nor its gradient
    assert torch.equal(b.detach(), before) and torch.equal(b.grad, torch.full((3,), 5.0))
    assert optim.optimizer.state[a]["step"] == 2 and optim.optimizer.state[b]["step"] == 1
    c = torch.zeros(1, requires_grad=True)  # a parameter first seen later joins the same optimiser
    c.grad = torch.ones(1)
    optim([a, c])
    assert c.item() != 0 and len(optim.optimizer.param_groups) == 2


def test_one_adam_state_carries_a_run_on():
    import torch

    from c2lnf.training import one_adam

    whole = _svi_run(one_adam(0.05), 40)
    first = one_adam(0.05)
    _svi_run(first, 20)
    state = first.get_state()
    assert set(state) == {"loc", "scale", "m"} and all(int(s["step"]) == 20 for s in state.values())
    resumed = one_adam(0.05)
    resumed.set_state(state)  # consumed when the resumed optimiser first sees each parameter
    on = _svi_run(resumed, 20, fresh=False)
    assert not resumed._state_waiting_to_be_consumed
    for k in whole:
        assert torch.equal(whole[k], on[k]), k
    _svi_run(one_adam(0.05), 20)  # the same first 20 steps, then on without the state: Adam's moments start
    assert not torch.equal(_svi_run(one_adam(0.05), 20, fresh=False)["m"], whole["m"])  # afresh, another path


def test_reference_rule_waits_for_a_flat_curve():
    """The reference's plan (window 10, tol 1e-3): on a curve that still falls by ~0.1 % per 10 epochs the
    10-epoch windows call a plateau while the last two tenths of the epochs (15 - 20 epochs each) still differ
    by more than the report's PASS (1e-3). With REF_FLAT_TOL the rule waits until they do not, so that the run
    is flat by the report's measure."""
    from c2lnf import report
    from c2lnf.training import REF_FLAT_TOL, tail_change

    assert REF_FLAT_TOL == report.THRESHOLDS["elbo_flatness"]["pass"]
    t = np.arange(1, 251)
    curve = 1e6 * (1 + 0.05 * np.exp(-t / 60.0))  # the old rule stops at 150, the new one at 190
    base = Plan(max_epochs=250, lr=0.002, lr_min=0.002, tol=1e-3, window=10, check_every=10, min_epochs=50)
    old, action = run(base, curve)
    assert action == "stop" and tail_change(curve[: old.stopped_epoch]) > REF_FLAT_TOL
    new, action = run(replace(base, flat_tol=REF_FLAT_TOL), curve)
    assert action == "stop" and new.stopped_epoch > old.stopped_epoch
    assert tail_change(curve[: new.stopped_epoch]) <= REF_FLAT_TOL
    assert any(e["event"] == "not_flat" for e in new.events)
    assert (old.stopped_epoch, new.stopped_epoch) == (150, 190)
