"""What both training steps share: the learning-rate plan and stopping rule, the training loop's callback,
the analytic posterior export, training history, plots and the training summary."""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

LOG = logging.getLogger("c2l.training")


# ---------------------------------------------------------------- learning-rate plan and stopping rule


@dataclass(frozen=True)
class Plan:
    """How a model trains: the learning-rate levels, when a level has converged, what happens then.

    Training starts at `lr`. Every `check_every` epochs the -ELBO averaged over the last `window` epochs is
    compared with the average over the `window` epochs before: the relative improvement
    `(before - last) / |last|`. When it stays below `tol` for `patience` checks in a row the current level
    has converged: the rate is multiplied by `lr_factor` (never below `lr_min`) and training goes on; at
    `lr_min` training stops (not before `min_epochs`). `max_epochs` is the ceiling.

    Divergence: a non-finite -ELBO, or a smoothed -ELBO that rises above the best one seen by more than
    `diverge_tol` (relative), stops the run; the caller restarts it from scratch at a lower rate.

    `level_epochs` > 0: every level above `lr_min` lasts exactly this many epochs instead (the rate falls at
    fixed epochs, whatever the -ELBO's noise does: models trained on parts of one data set, e.g. the shards of a
    run, take the same path); the plateau test then only ends training at `lr_min`.

    `flat_tol` > 0 (the reference model): the rule also needs the curve flat by the measure the run report grades
    (`flatness`: the relative change of the mean -ELBO between the last two tenths of the epochs so far) at most
    `flat_tol`; while it is not, training goes on (to `max_epochs` if need be). Without it a short window can
    call a plateau in noise while the curve as a whole still falls: two seeds of one reference stopped at
    epochs 150 and 240 of 250 (docs/output.md, "Stopping rule of the reference").

    `adaptive=False` is the tutorial: one fixed rate, all `max_epochs`, no stopping.
    """

    max_epochs: int
    lr: float
    lr_min: float
    lr_factor: float = 1 / 3
    tol: float = 1e-4
    window: int = 50
    check_every: int = 50
    patience: int = 2
    min_epochs: int = 0
    diverge_tol: float = 0.05
    adaptive: bool = True
    level_epochs: int = 0
    flat_tol: float = 0.0

    def __post_init__(self):
        if self.max_epochs < 1 or self.window < 1 or self.check_every < 1 or self.patience < 1 or self.level_epochs < 0:
            raise ValueError(f"invalid training plan {self}")
        if not (0 < self.lr_min <= self.lr) or not (0 < self.lr_factor < 1):
            raise ValueError(f"learning rates must satisfy 0 < lr_min <= lr and 0 < lr_factor < 1: {self}")

    def fixed(self) -> "Plan":
        """The same plan without stopping or rate changes (all max_epochs at lr)."""
        return replace(self, adaptive=False)

    def describe(self) -> str:
        if not self.adaptive:
            return f"{self.max_epochs} epochs at lr {self.lr:g} (fixed)"
        steps = f"every {self.level_epochs} epochs" if self.level_epochs else "per plateau"
        return (f"lr {self.lr:g} -> {self.lr_min:g} (x{self.lr_factor:.3g} {steps}), stop when the "
                f"{self.window}-epoch mean -ELBO improves by < {self.tol:g} (relative) for {self.patience} checks "
                f"every {self.check_every} epochs at lr {self.lr_min:g}; at most {self.max_epochs} epochs")


STOP_KINDS = {"stop": "converged", "max_epochs": "max_epochs", "diverged": "diverged"}  # Monitor's action -> kind


def stop_kind(summary: dict) -> str | None:
    """How a training JSON's run ended: `converged`, `max_epochs` or `diverged` (None: not recorded). JSONs written
    before `stop_kind` existed (e.g. a resumed run's) only have the sentence, which is read instead."""
    if summary.get("stop_kind"):
        return str(summary["stop_kind"])
    reason = str(summary.get("stop_reason") or "")
    if reason.startswith("converged"):
        return "converged"
    if reason.startswith("reached max_epochs"):
        return "max_epochs"
    return "diverged" if reason else None


class Monitor:
    """The plan applied to a stream of -ELBO values, one per epoch: what to do after each epoch.

    Pure Python (no torch), so that the rule is tested on synthetic curves. `update(elbo)` returns one of
    `continue`, `lower_lr` (the new rate is `self.lr`), `stop` (converged), `diverged` or `max_epochs`.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.lr = plan.lr
        self.elbo: list[float] = []
        self.level_start = 0  # epoch at which the current rate began
        self.below = 0  # consecutive checks below tol
        self.best = math.inf  # best smoothed -ELBO seen
        self.last_rel = math.nan
        self.events: list[dict] = []
        self.stop_reason: str | None = None  # a sentence, for people
        self.stop_kind: str | None = None  # a value of STOP_KINDS, for programs
        self.stopped_epoch: int | None = None
        self.converged_epoch: int | None = None  # where the stopping rule fired (also noted with fixed epochs)

    @property
    def epoch(self) -> int:
        return len(self.elbo)

    def _event(self, kind: str, text: str) -> None:
        self.events.append({"epoch": self.epoch, "event": kind, "lr": self.lr, "relative_improvement": self.last_rel,
                            "detail": text})

    def _finish(self, action: str, reason: str) -> str:
        self.stop_reason = reason
        self.stop_kind = STOP_KINDS[action]
        self.stopped_epoch = self.epoch
        self._event(action, reason)
        return action

    def _above_min(self) -> bool:
        return self.lr > self.plan.lr_min * (1 + 1e-6)

    def _lower(self, why: str) -> str:
        p = self.plan
        old, self.lr = self.lr, max(p.lr_min, self.lr * p.lr_factor)
        if self.lr < p.lr_min * (1 + 1e-6):  # a factor given in decimals (0.0667 for 1/15) lands on lr_min
            self.lr = p.lr_min
        self.level_start, self.below = self.epoch, 0
        self._event("lower_lr", f"{why}: lr {old:g} -> {self.lr:g}")
        return "lower_lr"

    def update(self, elbo: float) -> str:
        p = self.plan
        self.elbo.append(float(elbo))
        if not math.isfinite(elbo):
            return self._finish("diverged", f"-ELBO is {elbo} at epoch {self.epoch} (lr {self.lr:g})")
        if self.epoch >= p.max_epochs:
            return self._finish("max_epochs", f"reached max_epochs {p.max_epochs}")
        if p.adaptive and p.level_epochs and self._above_min() and self.epoch - self.level_start >= p.level_epochs:
            return self._lower(f"{p.level_epochs} epochs at lr {self.lr:g}")
        if self.epoch % p.check_every:
            return "continue"
        w = p.window
        if self.epoch - self.level_start < 2 * w:
            return "continue"
        last = float(np.mean(self.elbo[-w:]))
        before = float(np.mean(self.elbo[-2 * w : -w]))
        self.last_rel = (before - last) / max(abs(last), 1e-30)
        if p.adaptive and last > self.best + p.diverge_tol * abs(self.best):
            return self._finish("diverged", f"the {w}-epoch mean -ELBO rose to {last:.6g} from its best {self.best:.6g} "
                                            f"(> {p.diverge_tol:g} relative) at lr {self.lr:g}")
        self.best = min(self.best, last)
        self.below = self.below + 1 if self.last_rel < p.tol else 0
        if self.below < p.patience:
            return "continue"
        if not p.adaptive:  # fixed epochs: only note where the rule would have stopped training
            if self.converged_epoch is None and self.epoch >= p.min_epochs:
                self.converged_epoch = self.epoch
                self._event("converged", f"the stopping rule would have stopped here (relative improvement "
                                         f"{self.last_rel:.2e} < {p.tol:g}); training goes on (fixed epochs)")
            return "continue"
        if self._above_min():
            if p.level_epochs:  # the rate falls at fixed epochs, not at plateaus
                return "continue"
            return self._lower(f"plateau at lr {self.lr:g} (relative improvement {self.last_rel:.2e} < {p.tol:g})")
        if self.epoch < p.min_epochs:
            return "continue"
        if p.flat_tol > 0:
            flat = tail_change(self.elbo)
            if not flat <= p.flat_tol:  # NaN (too few epochs) included
                if not self.events or self.events[-1]["event"] != "not_flat":
                    self._event("not_flat", f"the rule fired but the -ELBO changed {flat:.2e} between the last two "
                                            f"tenths of the epochs (> {p.flat_tol:g}): training goes on")
                return "continue"
        self.converged_epoch = self.epoch
        return self._finish("stop", f"converged: the {w}-epoch mean -ELBO improved by {self.last_rel:.2e} (< tol {p.tol:g}, "
                                    f"relative) at {p.patience} checks in a row at the lowest lr {self.lr:g}")

    def summary(self) -> dict:
        return {
            "plan": asdict(self.plan),
            "epochs": self.epoch,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "stop_kind": self.stop_kind,
            "converged_epoch": self.converged_epoch,
            "final_lr": self.lr,
            "lr_events": [e for e in self.events if e["event"] == "lower_lr"],
        }


def one_adam(lr: float):
    """Adam for a Pyro training plan with one torch optimiser for all parameters (see `_one_adam_class`)."""
    return _one_adam_class()(lr)


@functools.lru_cache(maxsize=None)
def _one_adam_class():
    import pyro
    import pyro.optim
    import torch

    class OneAdam(pyro.optim.PyroOptim):
        """Pyro's `pyro.optim.Adam` with one `torch.optim.Adam` for all parameters.

        Pyro's optimiser wrapper makes one torch optimiser per parameter and steps them one by one: 35 calls per
        step for the mapping model, each with torch's per-call work (its checks, hooks and, on a GPU, a handful
        of kernel launches per parameter): 3.0-3.6 ms of a ~30 ms CPU mapping epoch on the benchmark's data,
        1.7-1.8 ms with one optimiser (docs/benchmarks.md). One optimiser over the same parameters does the same
        arithmetic (per-parameter state, the same defaults; on the CPU bit-identical results) in one call; on a
        GPU torch's default multi-tensor implementation then updates all parameters in a few kernels. As in
        Pyro, a step updates only the parameters it is given (new ones join the optimiser when first seen); the
        learning rate is `pt_optim_args["lr"]` when the optimiser is made and `set_learning_rate` after.
        """

        def __init__(self, lr: float):
            super().__init__(torch.optim.Adam, {"lr": lr})
            self.optimizer: torch.optim.Optimizer | None = None
            self._params: list = []
            self._known: set = set()

        def __call__(self, params, *args, **kwargs) -> None:
            params = list(params)
            new = [p for p in params if p not in self._known]
            if new:
                self._add(new)
            current = set(params)
            idle = [p for p in self._params if p not in current and p.grad is not None] \
                if len(current) < len(self._params) else []
            held = [p.grad for p in idle]
            for p in idle:  # not part of this step (Pyro would not step them): torch skips parameters without grads
                p.grad = None
            self.optimizer.step(*args, **kwargs)
            for p, g in zip(idle, held):
                p.grad = g

        def _add(self, params: list) -> None:
            if self.optimizer is None:
                self.optimizer = torch.optim.Adam(params, **self.pt_optim_args)
            else:
                self.optimizer.add_param_group({"params": params, **self.pt_optim_args})
            self._params += params
            self._known.update(params)
            store = pyro.get_param_store()
            for p in params:  # state given to set_state() before this parameter existed (as Pyro does)
                saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
                if saved:
                    self.optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in saved.items()}

        def get_state(self) -> dict:
            """Each parameter's Adam state (step, moments) by parameter name."""
            store = pyro.get_param_store()
            state = self.optimizer.state if self.optimizer is not None else {}
            return {store.param_name(p): dict(state[p]) for p in self._params if p in state}

        def set_state(self, state_dict: dict) -> None:
            """States from get_state(), used as Pyro does: for each parameter when the optimiser first sees it."""
            self._state_waiting_to_be_consumed.update(state_dict)

    return OneAdam


def set_learning_rate(pl_module, lr: float) -> None:
    """Set the learning rate of a Pyro training plan's optimisers (those made so far, and those made later):
    Pyro's own wrapper (one torch optimiser per parameter, made on first use) or `one_adam`'s."""
    optim = pl_module.optim
    if isinstance(optim.pt_optim_args, dict):
        optim.pt_optim_args["lr"] = lr
    torch_optims = list(optim.optim_objs.values())
    if getattr(optim, "optimizer", None) is not None:
        torch_optims.append(optim.optimizer)
    for opt in torch_optims:
        for group in opt.param_groups:
            group["lr"] = lr


def control_callback(monitor: Monitor, log_every: int | None = None):
    """A Lightning callback that feeds each epoch's -ELBO to `monitor`, sets the learning rate of Pyro's
    optimisers, stops the trainer when the monitor says so, and logs a line every `log_every` epochs."""
    from lightning.pytorch.callbacks import Callback

    every = log_every or max(1, monitor.plan.max_epochs // 20)

    class TrainingControl(Callback):
        def __init__(self):
            self.start = time.perf_counter()
            self.action = "continue"

        def on_train_epoch_end(self, trainer, pl_module):
            # Lightning runs callbacks before the module's own epoch end, which is where scvi logs `elbo_train`
            # (the mean loss of the epoch's steps): take the same mean from the steps' outputs directly.
            outputs = getattr(pl_module, "training_step_outputs", None) or []
            value = float(sum(float(o["loss"]) for o in outputs) / len(outputs)) if outputs else math.nan
            self.action = monitor.update(value)
            if self.action == "lower_lr":
                set_learning_rate(pl_module, monitor.lr)
                LOG.info("epoch %d: %s", monitor.epoch, monitor.events[-1]["detail"])
            elif self.action != "continue":
                trainer.should_stop = True
                level = logging.WARNING if self.action == "diverged" else logging.INFO
                LOG.log(level, "epoch %d: %s", monitor.epoch, monitor.stop_reason)
            epoch = monitor.epoch
            if epoch % every == 0 or self.action not in ("continue", "lower_lr"):
                elapsed = time.perf_counter() - self.start
                LOG.info("epoch %d/%d  -ELBO %.6g  lr %g  %.1f s elapsed, %.1f ms/epoch",
                         epoch, monitor.plan.max_epochs, value, monitor.lr, elapsed, 1000 * elapsed / epoch)

    return TrainingControl()


# ---------------------------------------------------------------- training


def fit(make_model, plan: Plan, accelerator: str, batch_size: int | None, fast: bool = True,
        log_every: int | None = None, max_restarts: int = 2, data_on_device: str = "off",
        nonzero_likelihood: bool = True):
    """Create a model with `make_model()` and train it by `plan`; returns (model, monitor, attempts).

    `fast=True` (the pipeline): Pyro's JitTrace_ELBO when every epoch is one full batch of fixed shape (Pyro's
    compiled ELBO is keyed on the number of arguments, not their shapes, so minibatches of different sizes
    would reuse a trace of the wrong shape), Pyro's argument validation off, and the adaptive plan with a
    restart from scratch at a lower rate when training diverges. `fast=False` (the tutorial): the model's own
    `train()` (Trace_ELBO, validation on).

    `data_on_device` ('auto', 'on', 'off'; fast runs in minibatches only): the whole data set is copied to the
    training device once, dense, and the minibatches are drawn there (see `device_data`); each attempt's
    `data_loading` says what was done.

    `nonzero_likelihood` (fast runs only): both models score their counts with `likelihood.NonzeroGammaPoisson`
    (the same log-density as Pyro's GammaPoisson, its special functions computed on the nonzero counts only).
    A full-batch run then also hands the model the same data tensor every epoch (`FullBatchSplitter`), so that
    what depends on the data only is computed once.
    """
    import pyro
    from pyro.infer import JitTrace_ELBO, Trace_ELBO

    if accelerator == "cpu":
        cpu_only_cuda_check()
    attempts: list[dict] = []
    for attempt in range(max_restarts + 1):
        pyro.clear_param_store()  # a restarted (or second) model must not pick up the previous one's parameters
        model = make_model()
        monitor = Monitor(plan)
        kwargs = {"max_epochs": plan.max_epochs, "batch_size": batch_size, "train_size": 1, "lr": plan.lr,
                  "accelerator": accelerator, "enable_progress_bar": False,
                  "callbacks": [control_callback(monitor, log_every)]}
        if accelerator == "gpu":
            kwargs["device"] = 1
        if fast:
            from scvi.model.base import PyroSviTrainMixin

            from .likelihood import DATA, nonzero_likelihood as likelihood_context

            n_obs = model.adata_manager.adata.n_obs
            one_batch = batch_size is None or batch_size >= n_obs
            if one_batch and nonzero_likelihood:
                loss = same_data_jit_elbo()
                use_full_batch(model, accelerator)
                kwargs["batch_size"] = n_obs
            else:
                loss = JitTrace_ELBO(ignore_jit_warnings=True) if one_batch else Trace_ELBO()
            on_device, loading = device_data(data_on_device, accelerator, model.adata_manager.adata, one_batch)
            if on_device:
                use_device_data(model, accelerator)
            likelihood = "nonzero-count GammaPoisson" if nonzero_likelihood else "Pyro's GammaPoisson"
            LOG.info("training plan: %s; loss %s; likelihood %s; data: %s", plan.describe(), type(loss).__name__,
                     likelihood, loading)
            with pyro.validation_enabled(False), likelihood_context(nonzero_likelihood):
                DATA.constant_in_trace = nonzero_likelihood and one_batch
                PyroSviTrainMixin.train(model, plan_kwargs={"loss_fn": loss, "optim": one_adam(plan.lr)}, **kwargs)
        else:
            loading = "the model's own loader (full batch on the device)" if batch_size is None else \
                "the model's own loader (minibatches from host memory)"
            LOG.info("training plan: %s; the model's own train() (Trace_ELBO)", plan.describe())
            model.train(**kwargs)
        attempts.append({**monitor.summary(), "data_loading": loading})
        if monitor.stopped_epoch is not None and monitor.events[-1]["event"] == "diverged":
            if plan.adaptive and attempt < max_restarts and plan.lr > plan.lr_min:
                plan = replace(plan, lr=max(plan.lr_min, plan.lr * plan.lr_factor))
                LOG.warning("restarting from scratch at lr %g (attempt %d of %d)", plan.lr, attempt + 2, max_restarts + 1)
                continue
            from .errors import C2LError

            raise C2LError(f"training diverged: {monitor.stop_reason}; lower the learning rate", field="lr")
        return model, monitor, attempts
    raise AssertionError("unreachable")


# the dense copy of the data may take at most this share of the GPU's free memory, and of the host's available
# memory (it is built on the host first), for `data_on_device='auto'` to choose it
DEVICE_DATA_MAX_SHARE = 0.25


def device_data(mode: str, accelerator: str, adata, one_batch: bool) -> tuple[bool, str]:
    """Whether a minibatched run keeps its whole data set on the training device, and a line saying what is done.

    scvi-tools' default loader builds every minibatch on the host (sparse rows densified, then copied to the
    GPU): on a GPU the reference model's epochs were host-bound (H100, 73,260 cells x 10,237 genes: 3.5 s per
    epoch at 4-5 % GPU utilisation). With the data on the device (scvi-tools' DeviceBackedDataSplitter, shuffled
    minibatches of the same size, drawn by the same kind of sampler) nothing crosses the bus per step. `auto`: on a
    GPU when the dense float32 copy fits DEVICE_DATA_MAX_SHARE of the GPU's free memory and of the host's
    available memory; `on`: always (also on the CPU: one dense copy in memory instead of densifying each
    minibatch); `off`: never. Full-batch runs are already device-backed by scvi-tools.
    """
    if one_batch:
        return False, "full batch (scvi-tools keeps it on the device)"
    if mode == "off":
        return False, "minibatches from host memory (--data-on-device off)"
    dense_gb = adata.n_obs * adata.n_vars * 4 / 1e9
    where = "on the GPU" if accelerator == "gpu" else "in memory (CPU)"
    if mode == "on":
        return True, f"whole data {where} ({dense_gb:.2f} GB dense, --data-on-device on), minibatches drawn there"
    if accelerator != "gpu":
        return False, "minibatches from host memory (CPU training)"
    import torch

    from .runtime import available_memory_gb

    free_gpu = torch.cuda.mem_get_info()[0] / 1e9
    host = available_memory_gb()
    if dense_gb > DEVICE_DATA_MAX_SHARE * free_gpu or (host is not None and dense_gb > DEVICE_DATA_MAX_SHARE * host):
        return False, (f"minibatches from host memory (a dense copy, {dense_gb:.1f} GB, is over "
                       f"{DEVICE_DATA_MAX_SHARE:.0%} of the GPU's free {free_gpu:.1f} GB or the host's available "
                       f"{'?' if host is None else f'{host:.1f}'} GB)")
    return True, f"whole data on the GPU ({dense_gb:.2f} GB dense, {free_gpu:.0f} GB free), minibatches drawn there"


def use_device_data(model, accelerator: str) -> None:
    """Make scvi-tools' train() build this model's batches from one copy of the data on the training device."""
    from functools import partial

    from scvi.dataloaders import DeviceBackedDataSplitter

    # train() calls self._data_splitter_cls(adata_manager, train_size=..., validation_size=...,
    # shuffle_set_split=..., batch_size=...): the instance attribute wins over the class's DataSplitter
    model._data_splitter_cls = partial(DeviceBackedDataSplitter, accelerator=accelerator,
                                       device=1 if accelerator == "gpu" else "auto", shuffle=True)


def use_full_batch(model, accelerator: str) -> None:
    """Make scvi-tools' train() hand this model the same full-batch tensors every epoch (`FullBatchSplitter`)."""
    from functools import partial

    model._data_splitter_cls = partial(_full_batch_splitter_class(), accelerator=accelerator,
                                       device=1 if accelerator == "gpu" else "auto", shuffle=False)


@functools.lru_cache(maxsize=None)
def _full_batch_splitter_class():
    from scvi.dataloaders import DeviceBackedDataSplitter
    from torch.utils.data import DataLoader, Dataset

    class WholeData(Dataset):
        def __init__(self, tensors: dict):
            self.tensors = tensors

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return self.tensors

    class FullBatchSplitter(DeviceBackedDataSplitter):
        """scvi-tools' DeviceBackedDataSplitter (the whole data set on the training device once, as for
        batch_size=None) whose loader yields the stored tensors themselves, in their order, every epoch.

        scvi-tools' own loader indexes the stored tensors with the list of all observations at every epoch,
        i.e. copies the whole dense data set once per epoch (4,000 x 10,237 float32: 164 MB) and gives the
        model a new tensor each time; with the stored tensor what depends on the data only (the nonzero
        counts' positions, lgamma(x + 1)) is computed once per training run."""

        def _make_dataloader(self, tensor_dict, shuffle):
            if tensor_dict is None:
                return None
            return DataLoader(WholeData(tensor_dict), batch_size=None, shuffle=False,
                              collate_fn=lambda batch: batch)

    return FullBatchSplitter


def same_data_jit_elbo():
    """Pyro's JitTrace_ELBO for a run whose every step sees the same data tensor (see `_same_data_jit_class`)."""
    return _same_data_jit_class()(ignore_jit_warnings=True)


@functools.lru_cache(maxsize=None)
def _same_data_jit_class():
    from pyro.infer import JitTrace_ELBO

    class SameDataJitTrace_ELBO(JitTrace_ELBO):
        """JitTrace_ELBO whose compiled function holds the data's nonzero counts as constants (`likelihood.DATA`
        with `constant_in_trace`): every call must give the tensor of the first call, unchanged, which this
        checks (a different tensor raises instead of being scored with the wrong counts)."""

        _data = None

        def _check(self, args):
            x = args[0]
            if self._data is None:
                self._data = (x, x._version)
            elif x is not self._data[0] or x._version != self._data[1]:
                raise RuntimeError("the compiled ELBO holds the first data tensor's nonzero counts: it was called "
                                   "with other data (use Trace_ELBO or JitTrace_ELBO for changing data)")

        def loss_and_grads(self, model, guide, *args, **kwargs):
            self._check(args)
            return super().loss_and_grads(model, guide, *args, **kwargs)

        def loss(self, model, guide, *args, **kwargs):
            self._check(args)
            return super().loss(model, guide, *args, **kwargs)

    return SameDataJitTrace_ELBO


def cpu_only_cuda_check() -> None:
    """Make torch's "is CUDA available?" cheap for a CPU training run.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported, and torch's optimisers ask that question at
    every step of every parameter (`_accelerator_graph_capture_health_check`). With a CUDA build of torch on a
    machine without a GPU, the NVML answer is never cached: each call loads libnvidia-ml again (~40 us), 35
    times per epoch for the mapping model, ~17 % of a CPU epoch on the benchmark's data. The CUDA runtime's
    answer (the default without the variable) is cached by torch. Nothing forks CUDA state here (data loaders
    run in-process), which is what Lightning's setting guards against; results are identical.
    """
    import os

    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


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


# ---------------------------------------------------------------- posterior export


def analytic_posterior(model, quantiles: tuple[str, ...] = ("q05", "q95")) -> dict | None:
    """Posterior means, standard deviations and quantiles of every site, from the variational distribution.

    cell2location's guide (pyro AutoNormal, non-amortised) is a Normal per parameter in unconstrained space,
    mapped by the support's bijection; all of cell2location's sites are positive (exp), i.e. log-normal:
    quantiles are exact (exp of the Normal's quantiles), means `exp(loc + scale^2/2)`, standard deviations
    `mean * sqrt(exp(scale^2) - 1)`. This is the distribution the sampled export draws 1000 times from; here
    without sampling noise. Deterministic sites (e.g. `u_sf_mRNA_factors`) are the model's function of the
    latent sites' statistic (exact for means of this model's products of independent factors; for quantiles the
    function of the factors' quantiles; not given for stds). Returns None when the guide is not an AutoNormal.
    """
    import torch
    from pyro import poutine
    from pyro.infer.autoguide import AutoNormal
    from torch.distributions import Normal, biject_to

    guide = model.module.guide
    if not isinstance(guide, AutoNormal) or getattr(model.module, "is_amortised", False):
        return None
    stats = {"means": None, "stds": None, **{k: float(f"0.{k[1:]}") for k in quantiles}}
    out: dict[str, dict] = {f"post_sample_{k}": {} for k in stats}
    with torch.no_grad():
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            loc, scale = guide._get_loc_and_scale(name)
            transform = biject_to(site["fn"].support)
            normal = Normal(loc, scale)
            for k, q in stats.items():
                if q is not None:
                    out[f"post_sample_{k}"][name] = transform(normal.icdf(torch.full_like(loc, q)))
            affine = _exp_affine(transform)
            if affine is not None:  # value = shift + factor * exp(Normal): log-normal moments
                shift, factor = affine
                lognormal_mean = torch.exp(loc + scale**2 / 2)
                mean = shift + factor * lognormal_mean
                std = factor * lognormal_mean * torch.sqrt(torch.expm1(scale**2))
            else:  # no closed form: 1000 draws, in chunks of 100 (the sampled export's count, without its loop)
                total, total2 = torch.zeros_like(loc), torch.zeros_like(loc)
                for _ in range(10):
                    draws = transform(normal.sample((100,)))
                    total, total2 = total + draws.sum(0), total2 + (draws**2).sum(0)
                mean = total / 1000
                std = torch.sqrt(torch.clamp(total2 / 1000 - mean**2, min=0))
            out["post_sample_means"][name] = mean
            out["post_sample_stds"][name] = std
        deterministic = _deterministic_sites(model)
        if deterministic:
            args, kwargs = _model_args(model, None)
            for k in [s for s in stats if s != "stds"]:
                latent = dict(out[f"post_sample_{k}"])
                trace = poutine.trace(poutine.condition(model.module.model, data=latent)).get_trace(*args, **kwargs)
                for n in deterministic:
                    out[f"post_sample_{k}"][n] = trace.nodes[n]["value"]
    return {k: {n: v.detach().cpu().numpy() for n, v in d.items()} for k, d in out.items()}


def _model_args(model, indices):
    """The model's (args, kwargs) for the observations `indices` (None: all, one batch), on the guide's device."""
    from scvi.dataloaders import AnnDataLoader

    n = model.adata_manager.adata.n_obs if indices is None else len(indices)
    batch = next(iter(AnnDataLoader(model.adata_manager, shuffle=False, batch_size=n, indices=indices)))
    args, kwargs = model.module._get_fn_args_from_batch(batch)
    device = next(model.module.guide.parameters()).device
    return [a.to(device) for a in args], {k: v.to(device) for k, v in kwargs.items()}


def _deterministic_sites(model) -> list[str]:
    """Names of the model's pyro.deterministic sites (the guide's prototype trace leaves them out), found by
    running the model once on two observations."""
    from pyro import poutine

    args, kwargs = _model_args(model, [0, 1][: model.adata_manager.adata.n_obs])
    trace = poutine.trace(poutine.block(model.module.model, hide_fn=lambda site: False)).get_trace(*args, **kwargs)
    return [n for n, site in trace.nodes.items()
            if site["type"] == "sample" and site.get("infer", {}).get("_deterministic")]


def _exp_affine(transform) -> tuple[float, float] | None:
    """(shift, factor) when `transform` is x -> shift + factor * exp(x) with scalar factor > 0 (Pyro's bijection
    for positive supports is exp followed by an affine map), else None."""
    from torch.distributions import transforms as T

    while isinstance(transform, T.IndependentTransform):
        transform = transform.base_transform
    parts = transform.parts if isinstance(transform, T.ComposeTransform) else [transform]
    if not parts or not isinstance(parts[0], T.ExpTransform):
        return None
    shift, factor = 0.0, 1.0
    for part in parts[1:]:
        if not isinstance(part, T.AffineTransform):
            return None
        try:
            loc, scale = float(part.loc), float(part.scale)
        except (TypeError, ValueError, RuntimeError):  # tensor-valued maps: no scalar form
            return None
        if scale <= 0:
            return None
        shift, factor = shift * scale + loc, factor * scale
    return shift, factor


def export_posterior(model, adata, analytic: bool, num_samples: int, batch_size: int, accelerator: str):
    """model.export_posterior(adata): from the variational distribution directly (analytic=True, falling back to
    sampling for a guide without closed forms), or from `num_samples` posterior samples as the tutorial does.

    The model's own export_posterior runs in both cases; the analytic one only replaces its sampling step.
    Returns (adata, a description of the export used).
    """
    sample_kwargs = posterior_kwargs(num_samples, batch_size, accelerator)
    if analytic:
        samples = analytic_posterior(model)
        if samples is not None:
            model.sample_posterior = lambda *a, **k: samples  # shadows the sampling method for this call only
            try:
                return model.export_posterior(adata, sample_kwargs=sample_kwargs), "analytic (variational distribution)"
            finally:
                del model.sample_posterior
        LOG.warning("the guide has no closed-form posterior: exporting from %d samples", num_samples)
    return model.export_posterior(adata, sample_kwargs=sample_kwargs), f"sampled ({num_samples} posterior samples)"


def posterior_kwargs(num_samples: int, batch_size: int, accelerator: str) -> dict:
    """sample_kwargs for export_posterior(): samples, minibatch size and the same device as training."""
    kwargs = {"num_samples": num_samples, "batch_size": batch_size, "accelerator": accelerator}
    if accelerator == "gpu":
        kwargs["device"] = 1
    return kwargs


# ---------------------------------------------------------------- history, plots, summary


def history_frame(model) -> pd.DataFrame:
    """The -ELBO per epoch as a table."""
    h = model.history_["elbo_train"]
    return pd.DataFrame({"epoch": np.arange(1, len(h) + 1), "elbo_train": h.to_numpy().ravel()})


def plot_history(model, path: Path, skip: int, title: str, monitor: "Monitor | None" = None) -> Path:
    """The tutorial's history plot (-ELBO per epoch, the first `skip` epochs left out), with the epochs at
    which the learning rate was lowered and where and why training stopped."""
    import matplotlib.pyplot as plt

    from .runtime import save_figures

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

    from .runtime import captured_figures, save_figures

    with captured_figures() as figures:
        model.plot_QC(**kwargs)
    if not figures and plt.get_fignums():
        figures = [plt.gcf()]
    return save_figures(figures, path)


def flatness(history: pd.DataFrame, tail: float = 0.1) -> float:
    """Relative change of the mean -ELBO between the last two `tail` fractions of training (small = flat)."""
    return tail_change(history["elbo_train"].to_numpy(), tail)


def tail_change(elbo, tail: float = 0.1) -> float:
    """`flatness` of a sequence of -ELBO values (NaN when there are too few)."""
    y = np.asarray(elbo, dtype=float)
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


# ---------------------------------------------------------------- a training step's set-up and summary

TUTORIAL_LR = 0.002
#: the reference's stopping rule also needs its -ELBO flat to this (Plan.flat_tol): the run report's PASS for
#: elbo_flatness, so that a reference the rule stops is one the report calls converged
REF_FLAT_TOL = 1e-3
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
    from .runtime import resolve_device, seed_everything, set_threads

    set_threads(threads)
    seed_everything(seed)
    accelerator, description = resolve_device(device, require_gpu)
    LOG.info("training device: %s", description)
    return replace(setup, accelerator=accelerator, device=description)


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
