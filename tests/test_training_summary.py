"""What a training step writes about its run (c2lnf.training.summary): the history table and plot, the training
summary and `<prefix>_training.json`, on a stand-in model (no training needed)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from c2lnf.training.stopping import Monitor, Plan, tail_change
from c2lnf.training.summary import history_frame, plot_history, training_summary, write_summary


class StandIn:
    """What the summary reads of a trained cell2location model: its -ELBO history and plot_history()."""

    def __init__(self, elbo):
        self.history_ = {"elbo_train": pd.DataFrame({"elbo_train": elbo})}

    def plot_history(self, skip, ax):
        h = self.history_["elbo_train"]["elbo_train"].to_numpy()
        ax.plot(np.arange(skip + 1, len(h) + 1), h[skip:])


def trained_monitor(curve) -> Monitor:
    monitor = Monitor(Plan(max_epochs=len(curve) + 100, lr=0.03, lr_min=0.01, window=10, check_every=10, tol=1e-3))
    for value in curve:
        if monitor.update(value) not in ("continue", "lower_lr"):
            break
    return monitor


CURVE = 1e5 * (1 + np.exp(-np.arange(400) / 40.0))


def test_summary_says_where_and_why_training_stopped():
    monitor = trained_monitor(CURVE)
    assert monitor.stop_kind == "converged"
    model = StandIn(CURVE[: monitor.epoch])
    history = history_frame(model)
    assert list(history.columns) == ["epoch", "elbo_train"] and history["epoch"].iloc[-1] == monitor.epoch
    attempts = [{**monitor.summary(), "data_loading": "full batch"}]
    s = training_summary(model, history, "cpu", 12.0, None, monitor, attempts, 0.5, "analytic")
    assert s["epochs"] == monitor.epoch and s["stopped_epoch"] == monitor.stopped_epoch
    assert s["stop_kind"] == "converged" and s["final_elbo"] == pytest.approx(CURVE[monitor.epoch - 1])
    assert s["seconds_per_epoch"] == pytest.approx(12.0 / monitor.epoch, rel=1e-3)
    assert s["restarts"] == 0 and s["data_loading"] == "full batch" and s["peak_gpu_memory_gb"] is None
    assert [e["event"] for e in s["lr_events"]] == ["lower_lr"]
    assert s["elbo_relative_change_last_10pct"] == pytest.approx(tail_change(CURVE[: monitor.epoch]))


def test_history_plot_marks_the_rate_steps_and_the_stop(tmp_path):
    monitor = trained_monitor(CURVE)
    path = plot_history(StandIn(CURVE[: monitor.epoch]), tmp_path / "history.png", 5, "mapping", monitor)
    assert path.is_file() and path.stat().st_size > 5000


def test_training_json_is_written_when_the_reconstruction_cannot_be_computed(tmp_path, caplog):
    """A QC number must never fail a finished training: without a posterior the reconstruction is null."""
    monitor = trained_monitor(CURVE)
    model = StandIn(CURVE[: monitor.epoch])  # no module, no samples: reconstruction_metrics raises
    trained = SimpleNamespace(model=model, monitor=monitor, attempts=[monitor.summary()], train_seconds=3.0,
                              export="analytic", export_seconds=0.1)
    with caplog.at_level(logging.WARNING, logger="c2l.training"):
        write_summary(trained, history_frame(model), "cpu", tmp_path / "x_training.json", {"model": {"n": 1}})
    out = json.loads((tmp_path / "x_training.json").read_text())
    assert out["reconstruction"] is None and out["model"] == {"n": 1} and out["stop_kind"] == "converged"
    assert "reconstruction metrics not computed" in caplog.text
