"""What a training step writes about its run: the -ELBO history, the history and QC plots, the reconstruction
accuracy and `<prefix>_training.json`. Tests: tests/test_training_summary.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .stopping import Monitor, flatness

if TYPE_CHECKING:
    from . import Trained

LOG = logging.getLogger("c2l.training")


def history_frame(model) -> pd.DataFrame:
    """The -ELBO per epoch as a table."""
    h = model.history_["elbo_train"]
    return pd.DataFrame({"epoch": np.arange(1, len(h) + 1), "elbo_train": h.to_numpy().ravel()})


def plot_history(model, path: Path, skip: int, title: str, monitor: "Monitor | None" = None) -> Path:
    """The tutorial's history plot (-ELBO per epoch, the first `skip` epochs left out), with the epochs at
    which the learning rate was lowered and where and why training stopped."""
    import matplotlib.pyplot as plt

    from ..runtime import save_figures

    n = len(model.history_["elbo_train"])
    fig, ax = plt.subplots(figsize=(6, 4))
    model.plot_history(min(skip, max(0, n - 2)), ax=ax)
    events = monitor.events if monitor is not None else []
    for event in events:
        if event["event"] == "lower_lr":
            ax.axvline(event["epoch"], color="0.6", ls=":", lw=1)
            ax.annotate(f"lr {event['lr']:.3g}", (event["epoch"], 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="0.4")
    if monitor is not None and monitor.stopped_epoch is not None:
        ax.axvline(monitor.stopped_epoch, color="tab:red", lw=1.5)
        ax.set_xlim(0, monitor.stopped_epoch * 1.03)  # the stop line inside the frame
        kind = events[-1]["event"]
        label = {"stop": "converged", "max_epochs": "max epochs", "diverged": "diverged"}.get(kind, kind)
        ax.set_title(f"{title}\nstopped at epoch {monitor.stopped_epoch}: {label}", fontsize=10)
    else:
        ax.set_title(title)
    return save_figures([fig], path)


def plot_qc(model, path: Path, **kwargs) -> Path:
    """model.plot_QC() drawn headless and saved (several figures are stacked into one PNG)."""
    import matplotlib.pyplot as plt

    from ..runtime import captured_figures, save_figures

    with captured_figures() as figures:
        model.plot_QC(**kwargs)
    if not figures and plt.get_fignums():
        figures = [plt.gcf()]
    return save_figures(figures, path)


def reconstruction_metrics(model, n_obs: int = 1000, seed: int = 0) -> dict:
    """The numbers behind plot_QC's reconstruction panel: observed counts vs posterior expected counts.

    Pearson r over all (observation, gene) pairs of up to `n_obs` random observations, on counts and on
    log1p(counts). Needs export_posterior() to have run (model.samples).
    """
    import scipy.sparse as sp

    n = model.adata_manager.adata.n_obs
    ind = np.sort(np.random.default_rng(seed).choice(n, min(n_obs, n), replace=False))
    expected = model.module.model.compute_expected(model.samples["post_sample_means"], model.adata_manager, ind_x=ind)
    mu = np.asarray(expected["mu"], dtype=float)
    x = model.adata_manager.get_from_registry("X")[ind, :]
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=float)

    def pearson(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    # what a model that knew the expected counts exactly would reach: Poisson draws from them against them (an
    # upper bound: the models' negative binomial is noisier). Sparse single cells cap the r far below 1
    draws = np.random.default_rng(seed + 1).poisson(mu)
    return {
        "n_obs_used": int(len(ind)),
        "n_genes": int(x.shape[1]),
        "pearson_r": pearson(x, mu),
        "pearson_r_log1p": pearson(np.log1p(x), np.log1p(mu)),
        "pearson_r_log1p_poisson_ceiling": pearson(np.log1p(draws), np.log1p(mu)),
    }


def training_summary(model, history: pd.DataFrame, device: str, seconds: float, qc: dict | None,
                     monitor: "Monitor | None" = None, attempts: list | None = None,
                     export_seconds: float | None = None, export: str | None = None) -> dict:
    """What a user checks after training: epochs, where and why it stopped, final -ELBO, flatness, device,
    time, peak GPU memory, the export and the reconstruction accuracy."""
    summary = {
        "epochs": int(len(history)),
        "final_elbo": float(history["elbo_train"].iloc[-1]),
        "elbo_relative_change_last_10pct": flatness(history),
        "device": device,
        "train_seconds": round(float(seconds), 1),
        "seconds_per_epoch": round(float(seconds) / max(1, len(history)), 5),
        "export": export,
        "export_seconds": None if export_seconds is None else round(float(export_seconds), 2),
        "peak_gpu_memory_gb": peak_gpu_memory_gb(),
        "reconstruction": qc,
    }
    if monitor is not None:
        summary.update({k: v for k, v in monitor.summary().items() if k != "epochs"})
        summary["restarts"] = max(0, len(attempts or [None]) - 1)
        summary["attempts"] = attempts or []
        if attempts and attempts[-1].get("data_loading"):
            summary["data_loading"] = attempts[-1]["data_loading"]
    return summary


def peak_gpu_memory_gb() -> float | None:
    """Peak CUDA memory allocated by torch in this process (None without a GPU)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def write_summary(trained: Trained, history: pd.DataFrame, device: str, path: Path, extra: dict | None = None) -> None:
    """<prefix>_training.json: epochs, where and why training stopped, device, times, reconstruction accuracy
    (and `extra`: the step's own facts, e.g. the model's size and memory estimate)."""
    import json

    try:
        qc = reconstruction_metrics(trained.model)
    except Exception as exc:  # noqa: BLE001 - a QC number must never fail a finished training (e.g. upstream #74)
        LOG.warning("reconstruction metrics not computed: %s", exc)
        qc = None
    summary = training_summary(trained.model, history, device, trained.train_seconds, qc, trained.monitor,
                               trained.attempts, trained.export_seconds, trained.export)
    summary.update(extra or {})
    if qc:
        LOG.info("reconstruction accuracy: Pearson r %.3f (log1p %.3f) over %d observations",
                 qc["pearson_r"], qc["pearson_r_log1p"], qc["n_obs_used"])
    path.write_text(json.dumps(summary, indent=2) + "\n")
