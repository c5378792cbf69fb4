"""The training loop (c2lnf.training.loop): the data kept on the training device, and one torch Adam for all
parameters against Pyro's per-parameter Adam."""

from __future__ import annotations

import numpy as np


def test_data_on_device_decision(monkeypatch):
    """`auto` keeps minibatched data on a GPU only where a dense copy fits; full batches and the CPU are left alone."""
    import types

    import torch

    from c2lnf import runtime
    from c2lnf.training import loop as training

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
               "--device", "cpu", "--seed", "0", "--data-on-device", mode, "--outdir", out)
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


def _svi_run(optim, steps: int, lr_change_at: int | None = None, fresh: bool = True):
    """A small Pyro model (three parameters of different shapes and constraints) fitted by SVI with `optim`,
    from a cleared parameter store (`fresh`) or from the one there; returns the parameters."""
    from types import SimpleNamespace

    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO

    from c2lnf.training.loop import set_learning_rate

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

    from c2lnf.training.loop import one_adam

    ref = _svi_run(pyro.optim.Adam({"lr": 0.05}), 60, lr_change_at=30)
    one = _svi_run(one_adam(0.05), 60, lr_change_at=30)
    assert ref.keys() == one.keys() == {"loc", "scale", "m"}
    for k in ref:
        assert torch.equal(ref[k], one[k]), k
    moved = _svi_run(one_adam(0.05), 60)  # without the rate change the path differs: the change took effect
    assert not torch.equal(moved["m"], one["m"])


def test_one_adam_steps_only_the_parameters_it_is_given():
    import torch

    from c2lnf.training.loop import one_adam

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

    from c2lnf.training.loop import one_adam

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


def _fit(make_model, plan, plain: bool, batch_size=None):
    """fit() from seed 0 through `train_full_batch` (`plain`) or scvi-tools' Lightning trainer: the -ELBO
    history, the parameters, the monitor's summary and the model."""
    import pyro

    from c2lnf.runtime import seed_everything
    from c2lnf.training import loop

    loop.PLAIN_FULL_BATCH = plain
    try:
        seed_everything(0)
        model, monitor, _ = loop.fit(make_model, plan, "cpu", batch_size, True)
    finally:
        loop.PLAIN_FULL_BATCH = True
    return (model.history_["elbo_train"]["elbo_train"].to_numpy(dtype=float),
            {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, monitor.summary(), model)


def test_full_batch_loop_trains_bit_for_bit_as_lightning(ln_halves, signatures_csv):
    """The plain full-batch loop against scvi-tools' Lightning path on a lymph node half: a rate step, a stop by
    the rule, the same -ELBO at every epoch, the same parameters bit for bit, the same history table."""
    import anndata as ad
    import pandas as pd
    import torch
    from cell2location.models import Cell2location

    from c2lnf.training.stopping import Plan

    spots = ad.read_h5ad(ln_halves["ln_left"])
    sig = pd.read_csv(signatures_csv, index_col=0)
    genes = spots.var_names.intersection(sig.index)
    spots, sig = spots[:, genes].copy(), sig.loc[genes]
    spots.obs["sample"] = "ln_left"
    Cell2location.setup_anndata(spots, batch_key="sample")
    plan = Plan(300, 0.03, 0.01, tol=0.05, window=10, check_every=10, level_epochs=40)
    def make():
        return Cell2location(spots, cell_state_df=sig, N_cells_per_location=30, detection_alpha=20)

    (h0, p0, s0, m0), (h1, p1, s1, m1) = _fit(make, plan, plain=False), _fit(make, plan, plain=True)
    assert len(s1["lr_events"]) == 1 and s1["stop_kind"] == "converged" and s1["stopped_epoch"] < 300, s1
    assert s0 == s1
    assert len(h0) == len(h1) == s1["stopped_epoch"] and (h0 == h1).all()
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    assert m1.history_["elbo_train"].index.name == m0.history_["elbo_train"].index.name == "epoch"
    assert m1.is_trained_ and not m1.module.training
    # the comparison can fail: fewer random draws (the loader's iterator made once, not per epoch, as a loop
    # without Lightning's habits would) give another run from the first step on
    import builtins

    from c2lnf.training import loop

    first: list = []

    def once_only(obj):  # the loader's first iterator only; later ones replay its batch without drawing
        if not first:
            first.append(next(builtins.iter(obj)))
        return builtins.iter(first)

    loop.iter = once_only
    try:
        h2 = _fit(make, Plan(5, 0.03, 0.03).fixed(), plain=True)[0]
    finally:
        del loop.iter
    assert len(h2) == 5 and not (h2 == h1[:5]).any()


def test_reference_full_batch_loop_trains_bit_for_bit_as_lightning(filtered_reference):
    """The same for the reference model, trained in one batch (fixed epochs)."""
    import anndata as ad
    import torch
    from cell2location.models import RegressionModel

    from c2lnf.training.stopping import Plan

    ref = ad.read_h5ad(filtered_reference / "reference_filtered.h5ad")
    RegressionModel.setup_anndata(ref, batch_key="sample", labels_key="cell_type")
    plan = Plan(15, 0.002, 0.002).fixed()
    (h0, p0, s0, _), (h1, p1, s1, _) = (_fit(lambda: RegressionModel(ref), plan, plain, batch_size=ref.n_obs)
                                        for plain in (False, True))
    assert len(h1) == 15 and (h0 == h1).all() and s0 == s1
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
