"""The training plan's stopping rule (c2lnf.training.stopping) on synthetic -ELBO curves."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from c2lnf.training.stopping import Monitor, Plan, stop_kind, tail_change

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


def test_reference_rule_waits_for_a_flat_curve():
    """The reference's plan (window 10, tol 1e-3): on a curve that still falls by ~0.1 % per 10 epochs the
    10-epoch windows call a plateau while the last two tenths of the epochs (15 - 20 epochs each) still differ
    by more than the report's PASS (1e-3). With REF_FLAT_TOL the rule waits until they do not, so that the run
    is flat by the report's measure."""
    from c2lnf import report
    from c2lnf.training.stopping import REF_FLAT_TOL

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
