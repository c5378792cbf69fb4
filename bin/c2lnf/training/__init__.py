"""What both training steps share, by purpose:

- `stopping`: the learning-rate plan and the stopping rule (`Plan`, `Monitor`), the curve's flatness;
- `loop`: the training loop and its optimiser, the data on the device (`fit`);
- `posterior`: the posterior export (analytic or sampled);
- `summary`: history, plots, reconstruction accuracy and the training JSON.

This module holds a training step's set-up (`Setup` from the CLI's options, `start`) and `train_and_export`, and
gives the names the steps use from the others."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from .loop import fit
from .posterior import export_posterior
from .stopping import REF_FLAT_TOL, Monitor, Plan, flatness, stop_kind, tail_change
from .summary import history_frame, plot_history, plot_qc, write_summary

LOG = logging.getLogger("c2l.training")

__all__ = ["REF_FLAT_TOL", "TUTORIAL_LR", "TUTORIAL_NUM_SAMPLES", "Monitor", "Plan", "Setup", "Trained",
           "export_posterior", "fit", "flatness", "history_frame", "plot_history", "plot_qc", "setup_from_options",
           "start", "stop_kind", "tail_change", "train_and_export", "write_summary"]


#: the tutorial's learning rate and posterior samples (--tutorial-settings)
TUTORIAL_LR = 0.002
TUTORIAL_NUM_SAMPLES = 1000


@dataclass
class Setup:
    """How a training step runs: the plan, the loss/loop (`fast`), the export, and the device."""

    plan: Plan
    fast: bool
    analytic: bool
    num_samples: int
    accelerator: str = "cpu"
    device: str = "cpu"
    log_every: int | None = None
    data_on_device: str = "auto"
    likelihood: str = "nonzero"  # "nonzero": likelihood.NonzeroGammaPoisson (fast runs only); "dense": Pyro's


def setup_from_options(max_epochs: int, tutorial_settings: bool, lr: float, lr_min: float, stop_tol: float,
                       stop_window: int, min_epochs: int, early_stop: bool, export_mode: str, num_samples: int,
                       log_every: int | None = None, data_on_device: str = "auto", level_epochs: int = 0,
                       flat_tol: float = 0.0, likelihood: str = "nonzero") -> Setup:
    """The Setup the CLI's training options describe (no device yet); --tutorial-settings wins."""
    if tutorial_settings:
        return Setup(Plan(max_epochs, TUTORIAL_LR, TUTORIAL_LR).fixed(), False, False, TUTORIAL_NUM_SAMPLES,
                     log_every=log_every, data_on_device="off", likelihood="dense")
    if lr_min > lr:
        LOG.info("--lr %g is below --lr-min %g: training at one rate, %g", lr, lr_min, lr)
        lr_min = lr
    plan = Plan(max_epochs=max_epochs, lr=lr, lr_min=lr_min, tol=stop_tol, window=stop_window,
                check_every=stop_window, min_epochs=min_epochs, level_epochs=level_epochs, flat_tol=flat_tol)
    return Setup(plan if early_stop else plan.fixed(), True, export_mode == "analytic", num_samples,
                 log_every=log_every, data_on_device=data_on_device, likelihood=likelihood)


def start(setup: Setup, device: str, require_gpu: bool, threads: int | None, seed: int) -> Setup:
    """Threads, seeds and the device, set for this process; returns the Setup with its device filled in."""
    from ..runtime import resolve_device, seed_everything, set_threads

    set_threads(threads)
    seed_everything(seed)
    accelerator, description = resolve_device(device, require_gpu)
    LOG.info("training device: %s", description)
    return replace(setup, accelerator=accelerator, device=description)


@dataclass
class Trained:
    """A trained model with how its training went and how its posterior was exported."""

    model: object
    monitor: Monitor
    attempts: list
    train_seconds: float
    export: str
    export_seconds: float


def train_and_export(make_model, adata, plan: Plan, accelerator: str, batch_size: int | None, fast: bool,
                     analytic: bool, num_samples: int, export_batch_size: int, log_every: int | None = None,
                     data_on_device: str = "off", nonzero_likelihood: bool = True):
    """fit() then export_posterior(), both timed; returns (Trained, adata with the posterior)."""
    start = time.perf_counter()
    model, monitor, attempts = fit(make_model, plan, accelerator, batch_size, fast, log_every,
                                   data_on_device=data_on_device, nonzero_likelihood=nonzero_likelihood)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    adata, export = export_posterior(model, adata, analytic, num_samples, export_batch_size, accelerator)
    export_seconds = time.perf_counter() - start
    LOG.info("posterior exported in %.1f s: %s", export_seconds, export)
    return Trained(model, monitor, attempts, train_seconds, export, export_seconds), adata
