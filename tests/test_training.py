"""A training step's set-up (c2lnf.training): the Setup the CLI's options describe, and the package's layout.

The parts have their own tests: tests/test_training_stopping.py (plan and stopping rule), test_training_loop.py
(training loop, optimiser, data on the device), test_training_posterior.py (export), test_training_summary.py
(history, plots, training JSON)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from c2lnf import training
from c2lnf.training import TUTORIAL_LR, TUTORIAL_NUM_SAMPLES, Setup, setup_from_options

OPTIONS = dict(max_epochs=30000, tutorial_settings=False, lr=0.03, lr_min=0.002, stop_tol=1e-4, stop_window=100,
               min_epochs=500, early_stop=True, export_mode="analytic", num_samples=1000, level_epochs=2000)


def test_the_pipeline_setup_follows_the_options():
    s = setup_from_options(**OPTIONS)
    assert isinstance(s, Setup) and s.fast and s.analytic and s.likelihood == "nonzero"
    p = s.plan
    assert (p.max_epochs, p.lr, p.lr_min, p.tol, p.window, p.check_every, p.min_epochs, p.level_epochs) == (
        30000, 0.03, 0.002, 1e-4, 100, 100, 500, 2000)
    assert p.adaptive and s.data_on_device == "auto"
    assert not setup_from_options(**{**OPTIONS, "early_stop": False}).plan.adaptive
    assert not setup_from_options(**{**OPTIONS, "export_mode": "sampled"}).analytic
    assert setup_from_options(**OPTIONS, likelihood="dense").likelihood == "dense"


def test_tutorial_settings_win_over_every_other_option():
    s = setup_from_options(**{**OPTIONS, "tutorial_settings": True}, likelihood="nonzero", data_on_device="on")
    assert not s.fast and not s.analytic and s.num_samples == TUTORIAL_NUM_SAMPLES
    assert (s.plan.lr, s.plan.lr_min, s.plan.adaptive, s.plan.max_epochs) == (TUTORIAL_LR, TUTORIAL_LR, False, 30000)
    assert s.likelihood == "dense" and s.data_on_device == "off"


def test_a_rate_below_its_minimum_trains_at_one_rate():
    s = setup_from_options(**{**OPTIONS, "lr": 0.001})
    assert s.plan.lr == s.plan.lr_min == 0.001


def test_start_fills_in_the_device(monkeypatch):
    from c2lnf import runtime

    seen = {}
    monkeypatch.setattr(runtime, "set_threads", lambda n: seen.setdefault("threads", n))
    monkeypatch.setattr(runtime, "seed_everything", lambda seed: seen.setdefault("seed", seed))
    monkeypatch.setattr(runtime, "resolve_device", lambda device, require: ("cpu", f"cpu ({device}, {require})"))
    s = training.start(setup_from_options(**OPTIONS), "auto", False, 2, 7)
    assert (s.accelerator, s.device) == ("cpu", "cpu (auto, False)") and seen == {"threads": 2, "seed": 7}


PARTS = {"stopping": set(), "loop": {"stopping"}, "posterior": set(), "summary": {"stopping"}}


@pytest.mark.parametrize("part", sorted(PARTS))
def test_each_part_imports_only_the_parts_below_it(part):
    """stopping and posterior stand alone, loop and summary use stopping; only summary names the package (its
    `Trained`, for type checking)."""
    tree = ast.parse((Path(training.__file__).parent / f"{part}.py").read_text())
    siblings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings.add(node.module or "__init__")
    assert siblings <= PARTS[part] | ({"__init__"} if part == "summary" else set()), siblings
