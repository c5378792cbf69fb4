"""What both training steps share: periodic progress lines, training history, plots and posterior export."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

LOG = logging.getLogger("c2l.training")


def epoch_logger(max_epochs: int, every: int | None = None):
    """A Lightning callback that logs a line every `every` epochs (progress bars are off inside tasks)."""
    from lightning.pytorch.callbacks import Callback

    every = every or max(1, max_epochs // 20)

    class EpochLogger(Callback):
        def __init__(self):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch % every and epoch != max_epochs:
                return
            elapsed = time.perf_counter() - self.start
            elbo = trainer.callback_metrics.get("elbo_train")
            elbo_txt = f"{float(elbo):.4g}" if elbo is not None else "n/a"
            LOG.info(
                "epoch %d/%d  -ELBO %s  %.1f s elapsed, %.1f ms/epoch",
                epoch, max_epochs, elbo_txt, elapsed, 1000 * elapsed / epoch,
            )

    return EpochLogger()


def trainer_kwargs(max_epochs: int, accelerator: str, log_every: int | None = None) -> dict:
    """Keyword arguments for scvi's train(): device, no progress bar, no checkpoints, periodic logs."""
    kwargs = {
        "accelerator": accelerator,
        "enable_progress_bar": False,
        "callbacks": [epoch_logger(max_epochs, log_every)],
    }
    if accelerator == "gpu":
        kwargs["device"] = 1
    return kwargs


def posterior_kwargs(num_samples: int, batch_size: int, accelerator: str) -> dict:
    """sample_kwargs for export_posterior(): samples, minibatch size and the same device as training."""
    kwargs = {"num_samples": num_samples, "batch_size": batch_size, "accelerator": accelerator}
    if accelerator == "gpu":
        kwargs["device"] = 1
    return kwargs


def history_frame(model) -> pd.DataFrame:
    """The -ELBO per epoch as a table."""
    h = model.history_["elbo_train"]
    return pd.DataFrame({"epoch": np.arange(1, len(h) + 1), "elbo_train": h.to_numpy().ravel()})


def plot_history(model, path: Path, skip: int, title: str) -> Path:
    """The tutorial's history plot: -ELBO per epoch, the first `skip` epochs left out."""
    import matplotlib.pyplot as plt

    from .runtime import save_figures

    n = len(model.history_["elbo_train"])
    fig, ax = plt.subplots(figsize=(6, 4))
    model.plot_history(min(skip, max(0, n - 2)), ax=ax)
    ax.set_title(title)
    return save_figures([fig], path)


def plot_qc(model, path: Path, **kwargs) -> Path:
    """model.plot_QC() drawn headless and saved (several figures are stacked into one PNG)."""
    import matplotlib.pyplot as plt

    from .runtime import captured_figures, save_figures

    with captured_figures() as figures:
        model.plot_QC(**kwargs)
    if not figures and plt.get_fignums():
        figures = [plt.gcf()]
    return save_figures(figures, path)


def flatness(history: pd.DataFrame, tail: float = 0.1) -> float:
    """Relative change of the mean -ELBO between the last two `tail` fractions of training (small = flat)."""
    y = history["elbo_train"].to_numpy()
    k = max(1, int(len(y) * tail))
    if len(y) < 2 * k:
        return float("nan")
    last, before = y[-k:].mean(), y[-2 * k : -k].mean()
    return float(abs(before - last) / abs(last))


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

    return {
        "n_obs_used": int(len(ind)),
        "n_genes": int(x.shape[1]),
        "pearson_r": pearson(x, mu),
        "pearson_r_log1p": pearson(np.log1p(x), np.log1p(mu)),
    }


def training_summary(model, history: pd.DataFrame, device: str, seconds: float, qc: dict | None) -> dict:
    """What a user checks after training: epochs, final -ELBO, flatness, device, time, reconstruction."""
    return {
        "epochs": int(len(history)),
        "final_elbo": float(history["elbo_train"].iloc[-1]),
        "elbo_relative_change_last_10pct": flatness(history),
        "device": device,
        "train_seconds": round(float(seconds), 1),
        "seconds_per_epoch": round(float(seconds) / max(1, len(history)), 5),
        "reconstruction": qc,
    }
