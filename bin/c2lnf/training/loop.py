"""The training loop: a model trained by a `Plan` through scvi-tools/Lightning with Pyro's SVI, one torch Adam for
all parameters, the data placed on the training device, the callback that applies the stopping rule.
Tests: tests/test_training_loop.py."""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import replace

from .stopping import Monitor, Plan

LOG = logging.getLogger("c2l.training")

# torch's multi-tensor Adam on every device (False: its per-tensor loop, torch's CPU default; benchmarks compare)
ADAM_FOREACH = True


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
        1.7-1.8 ms with one optimiser (benchmarks/README.md). One optimiser over the same parameters does the same
        arithmetic (per-parameter state, the same defaults; on the CPU bit-identical results) in one call, with
        torch's multi-tensor (`foreach`) implementation on every device: on a GPU (torch's default there) all
        parameters are updated in a few kernels; on the CPU its per-tensor loop runs in C++ instead of Python
        (1.0-1.4 ms less of an 18-20 ms mapping epoch at the bar benchmark's shapes, `make bench NAME=loop`; the
        same results bit for bit: tests/test_training_loop.py); torch's `fused` Adam rounds differently. As in
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
                self.optimizer = torch.optim.Adam(params, **self.pt_optim_args, foreach=ADAM_FOREACH)
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

            from ..likelihood import DATA, nonzero_likelihood as likelihood_context

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
            likelihood = ("nonzero-count GammaPoisson, fused with the expected counts where the model allows"
                          if nonzero_likelihood else "Pyro's GammaPoisson")
            LOG.info("training plan: %s; loss %s; likelihood %s; data: %s", plan.describe(), type(loss).__name__,
                     likelihood, loading)
            with pyro.validation_enabled(False), likelihood_context(nonzero_likelihood):
                DATA.constant_in_trace = nonzero_likelihood and one_batch
                if one_batch and nonzero_likelihood and PLAIN_FULL_BATCH and not _takes_kl_weight(model):
                    train_full_batch(model, loss, one_adam(plan.lr), plan.max_epochs, kwargs["callbacks"])
                else:
                    PyroSviTrainMixin.train(model, plan_kwargs={"loss_fn": loss, "optim": one_adam(plan.lr)},
                                            **kwargs)
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
            from ..errors import C2LError

            raise C2LError(f"training diverged: {monitor.stop_reason}; lower the learning rate", field="lr")
        return model, monitor, attempts
    raise AssertionError("unreachable")


# full-batch fast runs train in `train_full_batch` (False: through scvi-tools' Lightning trainer, as before)
PLAIN_FULL_BATCH = True


def _takes_kl_weight(model) -> bool:
    """Whether scvi-tools' training plan would anneal this model's KL term (a `kl_weight` argument to its
    model; cell2location's two models have none): only the Lightning path does that."""
    from inspect import signature

    fn = model.module.model
    return "kl_weight" in signature(getattr(fn, "forward", fn)).parameters


def train_full_batch(model, loss, optim, max_epochs: int, callbacks: list) -> None:
    """Train a Pyro scvi-tools model on its whole data set, one SVI step per epoch, without Lightning.

    For a model set up by `use_full_batch`: what scvi-tools' `PyroSviTrainMixin.train` does then, step for step:
    the same data tensors (`FullBatchSplitter`, on the training device), the module moved there, the plan's
    `n_obs` set, the guide run once to make its parameters (scvi's PyroJitGuideWarmup), one `SVI.step` per epoch
    with the same loss and optimiser, the epoch's loss rounded to float32 as Lightning's loss tensor is,
    `history_["elbo_train"]` indexed by epoch, the module in eval mode and `is_trained_` set at the end.
    `callbacks` (this module's `control_callback`, benchmarks' timers) get `on_train_epoch_start` /
    `on_train_epoch_end` with a trainer carrying `current_epoch` and `should_stop` and a training plan carrying
    `optim` and `training_step_outputs`.

    Lightning's loop costs the same on every step whatever the data's size (its hooks, the training plan's
    collection walking, the shim optimiser scvi steps so that Lightning counts steps): 2-3 ms of a ~20 ms CPU
    mapping epoch at the bar benchmark's shapes (`make bench NAME=loop`), thousands of epochs per run. Results
    are bit-identical to the Lightning path (tests/test_training_loop.py); minibatched runs, and full batches
    scored by Pyro's own likelihood (other loaders), still train through Lightning.
    """
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd
    import pyro

    module = model.module
    n_obs = model.adata_manager.adata.n_obs
    splitter = model._data_splitter_cls(model.adata_manager, train_size=1, validation_size=None,
                                        shuffle_set_split=True, batch_size=n_obs)
    splitter.setup()
    loader = splitter.train_dataloader()
    batch = next(iter(loader))  # the guide's warm-up batch
    module.to(splitter.device)
    for part in (module.model, module.guide):  # as scvi's TrainRunner sets the training plan's n_obs_training
        if hasattr(part, "n_obs"):
            part.n_obs = splitter.n_train
    args, kwargs = module._get_fn_args_from_batch(batch)
    module.train()
    module.guide(*args, **kwargs)  # makes the guide's parameters before the first step, as scvi's warm-up does
    svi = pyro.infer.SVI(module.model, module.guide, optim, loss)
    trainer = SimpleNamespace(current_epoch=0, should_stop=False)
    plan = SimpleNamespace(optim=optim, training_step_outputs=[], module=module)
    values: list[float] = []
    for epoch in range(max_epochs):
        trainer.current_epoch = epoch
        for cb in callbacks:
            if hasattr(cb, "on_train_epoch_start"):
                cb.on_train_epoch_start(trainer, plan)
        # A new iterator over the loader each epoch, as Lightning makes: each draws its base seed from torch's
        # generator, so the random stream (and every result) stays that of the Lightning path.
        args, kwargs = module._get_fn_args_from_batch(next(iter(loader)))
        value = float(np.float32(svi.step(*args, **kwargs)))
        values.append(value)
        plan.training_step_outputs = [{"loss": value}]
        for cb in callbacks:
            cb.on_train_epoch_end(trainer, plan)
        if trainer.should_stop:
            break
    model.history_ = {"elbo_train": pd.DataFrame({"elbo_train": values},
                                                  index=pd.Index(range(len(values)), name="epoch"))}
    model.train_indices = getattr(splitter, "train_idx", None)
    model.validation_indices = getattr(splitter, "val_idx", None)
    model.test_indices = getattr(splitter, "test_idx", None)
    module.eval()
    model.is_trained_ = True


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

    from ..runtime import available_memory_gb

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
