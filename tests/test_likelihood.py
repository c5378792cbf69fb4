"""The nonzero-count likelihood (c2lnf.likelihood) against Pyro's GammaPoisson, on the real test data.

Both cell2location models, each on a dense and a sparse real data set, float32 and float64, at several random
points of the guide's parameters: the data's log-likelihood, the whole -ELBO and every parameter's gradient.
A deliberately wrong likelihood must fail the same comparison, and a seeded training run with and without it
must give the same maps.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from conftest import HIPPOCAMPUS, LYMPH_NODE, require

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

RTOL = 1e-5
RTOL32_GRAD = 1e-4  # float32 gradients (see assert_equal_to_pyro)


# ---------------------------------------------------------------- data and models


def _read_pair(root):
    import anndata as ad
    import scanpy as sc

    ref = ad.read_h5ad(require(root / "reference.h5ad"))
    vis = sc.read_10x_h5(require(root / "visium" / "filtered_feature_bc_matrix.h5"))
    vis.var_names_make_unique()
    return ref, vis


def _signatures(ref, genes):
    """Per-type mean expression of the reference (a signature table for the mapping model; its values do not
    matter for the equality checks)."""
    import pandas as pd

    labels = ref.obs["cell_type"].astype("category")
    x = ref[:, genes].X
    return pd.DataFrame({c: np.asarray(x[(labels == c).to_numpy()].mean(0)).ravel() + 1e-3
                         for c in labels.cat.categories}, index=genes)


CASES = {
    # (model, data): nonzero share of the counts
    "mapping-dense": ("mapping", HIPPOCAMPUS),      # 313 spots x 124 genes, 99 % nonzero
    "mapping-sparse": ("mapping", LYMPH_NODE),      # 1000 spots x 558 genes, 49 % nonzero
    "mapping-two-samples": ("mapping2", LYMPH_NODE),  # the same spots as two samples (alpha per sample)
    "reference-dense": ("reference", HIPPOCAMPUS),  # 510 cells x 307 genes, 45 % nonzero
    "reference-sparse": ("reference", LYMPH_NODE),  # 330 cells x 10,237 genes, 14 % nonzero
}


@pytest.fixture(scope="module")
def models():
    """One model per case, made once (made again per dtype below)."""
    from cell2location.models import Cell2location, RegressionModel

    made = {}

    def make(case):
        if case in made:
            return made[case]
        kind, root = CASES[case]
        ref, vis = _read_pair(root)
        if kind == "reference":
            ref = ref.copy()
            RegressionModel.setup_anndata(ref, batch_key="sample", labels_key="cell_type")
            made[case] = lambda: RegressionModel(ref)
        else:
            genes = ref.var_names.intersection(vis.var_names)
            v = vis[:, genes].copy()
            v.obs["sample"] = "s" if kind == "mapping" else np.where(np.arange(v.n_obs) % 3 == 0, "a", "b")
            Cell2location.setup_anndata(v, batch_key="sample")
            sig = _signatures(ref, genes)
            made[case] = lambda: Cell2location(v, cell_state_df=sig, N_cells_per_location=30, detection_alpha=20)
        return made[case]

    return make


class _OneHot:
    """one_hot(...) whose .float() gives the float64 the test asks for (the models call one_hot(...).float())."""

    def __init__(self, t):
        self.t = t

    def float(self):
        return self.t.double()


@contextlib.contextmanager
def _float64(enabled):
    """Make both models' one-hot matrices float64 (the rest follows the module's and the data's dtype)."""
    if not enabled:
        yield
        return
    import importlib

    from torch.nn.functional import one_hot

    from c2lnf.likelihood import MODEL_MODULES

    mods = [importlib.import_module(m) for m in MODEL_MODULES]
    try:
        for m in mods:
            m.one_hot = lambda *a, **k: _OneHot(one_hot(*a, **k))
        yield
    finally:
        for m in mods:
            m.one_hot = one_hot


def _args(model, dtype):
    from scvi.dataloaders import AnnDataLoader

    n = model.adata_manager.adata.n_obs
    batch = next(iter(AnnDataLoader(model.adata_manager, shuffle=False, batch_size=n)))
    args, kwargs = model.module._get_fn_args_from_batch(batch)
    args = [a.to(dtype) if torch.is_floating_point(a) else a for a in args]
    return args, kwargs


def _setup(make, dtype, point_seed):
    """A model whose guide exists, with its parameters moved to a random point (seeded)."""
    from pyro.infer import Trace_ELBO

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make()
    model.module.to(dtype)
    args, kwargs = _args(model, dtype)
    with pyro.validation_enabled(False):
        Trace_ELBO().loss(model.module.model, model.module.guide, *args, **kwargs)  # makes the guide's parameters
    gen = torch.Generator().manual_seed(point_seed)
    with torch.no_grad():
        for name, p in pyro.get_param_store().named_parameters():
            step = 0.5 if "locs" in name else 0.3
            p.add_(step * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return model, args, kwargs


def _elbo_and_grads(model, args, kwargs, nonzero, seed=1, fused=True):
    """(-ELBO, {parameter: gradient}, the data site's log-likelihood) with the same guide draws (seeded).
    Validation on: Pyro checks every site's shapes against its plates."""
    from pyro import poutine
    from pyro.infer import Trace_ELBO

    from c2lnf.likelihood import nonzero_likelihood

    params = dict(pyro.get_param_store().named_parameters())
    with pyro.validation_enabled(nonzero), nonzero_likelihood(nonzero, fused=fused):
        pyro.set_rng_seed(seed)
        loss = Trace_ELBO().differentiable_loss(model.module.model, model.module.guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        pyro.set_rng_seed(seed)
        guide_trace = poutine.trace(model.module.guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model.module.model, trace=guide_trace)).get_trace(*args, **kwargs)
        site = model_trace.nodes["data_target"]
        loglik = site["fn"].log_prob(site["value"]).sum()
    return (float(loss.detach()), {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(params, grads)},
            float(loglik))


def _rel(a, b):
    """max |a - b| / max |b| (numbers or tensors)."""
    if not torch.is_tensor(a):
        return abs(a - b) / max(abs(b), 1e-30)
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _rel2(a, b):
    """||a - b|| / ||b|| (Euclidean norms of the whole tensors)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def compare(make, dtype, point_seed, fused=True):
    """How far the nonzero-count likelihood's (`fused`: the fused observation part's) -ELBO, log-likelihood and
    gradients are from Pyro's, at one point (the same parameters and the same guide draws): relative differences,
    per parameter both the largest entry's (`grads`) and the whole vector's (`grads_l2`)."""
    model, args, kwargs = _setup(make, dtype, point_seed)
    pyro_loss, pyro_grads, pyro_ll = _elbo_and_grads(model, args, kwargs, False)
    new_loss, new_grads, new_ll = _elbo_and_grads(model, args, kwargs, True, fused=fused)
    return {"elbo": _rel(new_loss, pyro_loss), "loglik": _rel(new_ll, pyro_ll),
            "grads": {n: _rel(new_grads[n], pyro_grads[n]) for n in pyro_grads},
            "grads_l2": {n: _rel2(new_grads[n], pyro_grads[n]) for n in pyro_grads}, "n_params": len(pyro_grads)}


def assert_equal_to_pyro(res, dtype):
    """float64: every gradient entry within 1e-5 of Pyro's (relative to the largest). float32: every gradient
    vector within RTOL32_GRAD of Pyro's (relative, Euclidean norm): the overdispersion's (alpha_g_inverse)
    gradients of the two float32 computations differ by up to ~5e-5, by rounding (float64: ~1e-13), and Pyro's
    is the further of the two from the float64 answer (test_float32_gradients_as_accurate_as_pyros)."""
    assert res["n_params"] >= 10
    assert res["elbo"] <= RTOL, res["elbo"]
    assert res["loglik"] <= RTOL, res["loglik"]
    measure, tol = (res["grads"], RTOL) if dtype == torch.float64 else (res["grads_l2"], RTOL32_GRAD)
    bad = {n: r for n, r in measure.items() if not r <= tol}
    assert not bad, f"gradients off by more than {tol} relative: {bad}"


# ---------------------------------------------------------------- the distribution alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape_alpha", ["per_gene", "per_entry"])
def test_log_prob_equals_pyro_per_entry(dtype, shape_alpha):
    """Every entry's log-density equals Pyro's (real lymph node reference counts, 14 % nonzero)."""
    import anndata as ad
    from pyro.distributions import GammaPoisson

    from c2lnf.likelihood import NonzeroGammaPoisson

    ref = ad.read_h5ad(require(LYMPH_NODE / "reference.h5ad"))
    x = torch.tensor(ref.X[:, :3000].toarray(), dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(x.shape, generator=gen, dtype=dtype) * x.mean(0, keepdim=True) * 2 + 1e-3
    alpha_shape = (1, x.shape[1]) if shape_alpha == "per_gene" else x.shape
    alpha = 1 / (torch.rand(alpha_shape, generator=gen, dtype=dtype) + 0.05) ** 2
    a = GammaPoisson(alpha, alpha / mu).log_prob(x)
    b = NonzeroGammaPoisson(alpha, alpha / mu).log_prob(x)
    assert b.shape == a.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(b, a, rtol=tol, atol=tol * float(a.abs().max())), float((a - b).abs().max())
    assert _rel(float(b.sum()), float(a.sum())) <= (1e-12 if dtype == torch.float64 else RTOL)


def test_float32_gradients_as_accurate_as_pyros():
    """At one point (real counts, per-gene alpha), the float32 gradients' distance to the float64 answer is no
    larger than Pyro's float32 gradients' (what the float32 tolerance of the model-level test rests on)."""
    import anndata as ad
    from pyro.distributions import GammaPoisson

    from c2lnf.likelihood import NonzeroGammaPoisson

    ref = ad.read_h5ad(require(LYMPH_NODE / "reference.h5ad"))
    x64 = torch.tensor(ref.X[:, :3000].toarray(), dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    mu64 = torch.rand(x64.shape, generator=gen, dtype=torch.float64) * x64.mean(0, keepdim=True) * 2 + 1e-3
    ai64 = torch.rand(1, x64.shape[1], generator=gen, dtype=torch.float64) + 0.05

    def grads(dist, dtype):
        ai = ai64.to(dtype).requires_grad_()
        mu = mu64.to(dtype).requires_grad_()
        alpha = 1 / ai.pow(2)
        total = dist(alpha, alpha / mu).log_prob(x64.to(dtype)).sum()
        return [g.double() for g in torch.autograd.grad(total, [ai, mu])]

    truth = grads(GammaPoisson, torch.float64)
    pyro32, new32 = grads(GammaPoisson, torch.float32), grads(NonzeroGammaPoisson, torch.float32)
    for t, p, n in zip(truth, pyro32, new32):
        assert _rel2(n, t) <= max(1.5 * _rel2(p, t), 1e-6), (_rel2(n, t), _rel2(p, t))


def test_data_terms_are_kept_per_tensor():
    """The data-only terms are computed once per data tensor, and again when the tensor changes."""
    from c2lnf.likelihood import DATA, NonzeroGammaPoisson

    x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 5.0]])
    d = NonzeroGammaPoisson(torch.ones(1, 3), torch.ones(2, 3))
    d.log_prob(x)
    terms = DATA.terms
    d.log_prob(x)
    assert DATA.terms is terms
    x[0, 0] = 3.0  # in place: a new version
    lp = d.log_prob(x)
    assert DATA.terms is not terms and len(DATA.terms[0]) == 4
    from pyro.distributions import GammaPoisson

    assert torch.allclose(lp, GammaPoisson(torch.ones(1, 3), torch.ones(2, 3)).log_prob(x))


# ---------------------------------------------------------------- both models, whole -ELBO and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_elbo_and_gradients_equal_pyro(models, case, dtype, fused):
    """-ELBO, data log-likelihood and every parameter's gradient equal Pyro's at three random points, for the
    fused observation part (the default) and for the nonzero-count likelihood alone."""
    if not fused and case == "mapping-two-samples":
        pytest.skip("the unfused likelihood sees the same per-entry alpha as the one-sample case")
    make = models(case)
    with _float64(dtype == torch.float64):
        for point in (1, 2, 3):
            res = compare(make, dtype, point, fused=fused)
            assert_equal_to_pyro(res, dtype)


class _WrongTerm:
    """NonzeroGammaPoisson (unfused) or the fused observation part with a deliberately wrong term."""

    def __init__(self, kind, fused):
        self.kind, self.fused = kind, fused

    def __enter__(self):
        from c2lnf import likelihood

        kind = self.kind
        if self.fused:
            self.saved = ("_data_terms", likelihood._data_terms) if kind == "lgamma_x_plus_1" else \
                ("_tables", likelihood._tables)

            def wrong_terms(*a):  # -lgamma(x + 1) left out (a constant: -ELBO moves, gradients do not)
                terms = self.saved[1](*a)
                return terms[:-1] + (torch.zeros_like(terms[-1]),)

            def wrong_tables(alpha, k):  # digamma(alpha + x) - digamma(alpha) off by one count: gradients move
                lg, dg = self.saved[1](alpha, k)
                return lg, torch.cat([dg[..., 1:], dg[..., -1:]], -1)

            setattr(likelihood, self.saved[0], wrong_terms if kind == "lgamma_x_plus_1" else wrong_tables)
            return self
        self.saved = ("NonzeroGammaPoisson.log_prob", likelihood.NonzeroGammaPoisson.log_prob)
        saved = self.saved[1]

        def wrong(dist, value):
            lp = saved(dist, value)
            if kind == "lgamma_x_plus_1":  # -lgamma(x + 1) left out (a constant: -ELBO moves, gradients do not)
                return lp + torch.lgamma(value + 1)
            # x * log(1 + r) written as x * log(r): the gradients move
            return lp + value * (torch.log1p(dist.rate) - torch.log(dist.rate))

        likelihood.NonzeroGammaPoisson.log_prob = wrong
        return self

    def __exit__(self, *exc):
        from c2lnf import likelihood

        name, fn = self.saved
        if name.startswith("NonzeroGammaPoisson"):
            likelihood.NonzeroGammaPoisson.log_prob = fn
        else:
            setattr(likelihood, name, fn)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("kind", ["lgamma_x_plus_1", "log_rate"])
@pytest.mark.parametrize("case", ["mapping-sparse", "reference-sparse"])
def test_a_wrong_term_fails_the_comparison(models, case, kind, fused):
    make = models(case)
    with _WrongTerm(kind, fused), _float64(True):
        res = compare(make, torch.float64, 1, fused=fused)
    with pytest.raises(AssertionError):
        assert_equal_to_pyro(res, torch.float64)


def test_fused_float32_gradients_as_accurate_as_pyros():
    """The fused part's float32 gradients (for the row and gene factors and alpha) are no further from the
    float64 answer than Pyro's float32 gradients are (real lymph node reference counts, 3,000 genes)."""
    import anndata as ad
    from pyro.distributions import GammaPoisson

    from c2lnf import likelihood

    ref = ad.read_h5ad(require(LYMPH_NODE / "reference.h5ad"))
    x64 = torch.tensor(ref.X[:, :3000].toarray(), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    z64 = torch.rand(x64.shape[0], 5, generator=gen, dtype=torch.float64)
    m64 = torch.rand(5, x64.shape[1], generator=gen, dtype=torch.float64) * x64.mean(0, keepdim=True) + 1e-3
    ai64 = torch.rand(1, x64.shape[1], generator=gen, dtype=torch.float64) + 0.05

    def grads(fused, dtype):
        z, m, ai = (t.to(dtype).requires_grad_() for t in (z64, m64, ai64))
        alpha, x = 1 / ai.pow(2), x64.to(dtype)
        if fused:
            batch = torch.zeros(x.shape[0], dtype=torch.long)
            d = likelihood.FusedObservation(z, m, alpha, batch, torch.ones(x.shape[0], 1, dtype=dtype), None)
            total = d.log_prob(x).sum()
        else:
            total = GammaPoisson(alpha, alpha / (z @ m)).log_prob(x).sum()
        return [g.double() for g in torch.autograd.grad(total, [z, m, ai])] + [total.double()]

    likelihood.TERMS.__init__()
    truth = grads(False, torch.float64)
    new64 = grads(True, torch.float64)
    for t, n in zip(truth, new64):
        assert _rel2(n, t) <= 1e-10
    pyro32, new32 = grads(False, torch.float32), grads(True, torch.float32)
    for t, p, n in zip(truth, pyro32, new32):
        assert _rel2(n, t) <= max(1.5 * _rel2(p, t), 1e-6), (_rel2(n, t), _rel2(p, t))


def test_fused_model_has_cell2location_sites():
    """Under the fused context a model trace has the same sites, types and shapes as cell2location's own, and
    the context leaves both models' forward as it found it."""
    from cell2location.models._cell2location_module import (
        LocationModelLinearDependentWMultiExperimentLocationBackgroundNormLevelGeneAlphaPyroModel as Mapping)
    from cell2location.models.reference._reference_module import RegressionBackgroundDetectionTechPyroModel as Ref
    from pyro import poutine

    from c2lnf.likelihood import FusedObservation, nonzero_likelihood

    before = (Mapping.forward, Ref.forward)
    for case in ("mapping-two-samples", "reference-sparse"):
        model, args, kwargs = _setup(models.__wrapped__()(case), torch.float32, 1)
        traces = {}
        for nonzero in (False, True):
            with nonzero_likelihood(nonzero):
                pyro.set_rng_seed(0)
                guide = poutine.trace(model.module.guide).get_trace(*args, **kwargs)
                traces[nonzero] = poutine.trace(poutine.replay(model.module.model, trace=guide)).get_trace(
                    *args, **kwargs)
        sites = {k: {n: (s["type"], tuple(s["value"].shape) if torch.is_tensor(s.get("value")) else None)
                     for n, s in traces[k].nodes.items()} for k in traces}
        assert sites[True] == sites[False]
        assert isinstance(traces[True].nodes["data_target"]["fn"], FusedObservation)
    assert (Mapping.forward, Ref.forward) == before


# ---------------------------------------------------------------- training with and without


def test_seeded_training_gives_the_same_maps(models, tmp_path):
    """300 epochs through training.loop.fit (the pipeline's fast path), seeded, with and without: q05 maps agree."""
    from c2lnf.runtime import seed_everything
    from c2lnf.training.loop import fit
    from c2lnf.training.posterior import analytic_posterior
    from c2lnf.training.stopping import Plan

    from cell2location.models import Cell2location

    make = models("mapping-sparse")
    q05, elbo, params = {}, {}, {}
    for nonzero in (False, True):
        seed_everything(0)
        model, monitor, _ = fit(make, Plan(300, 0.002, 0.002).fixed(), "cpu", None, True,
                                nonzero_likelihood=nonzero)
        q05[nonzero] = analytic_posterior(model)["post_sample_q05"]["w_sf"]
        elbo[nonzero] = monitor.elbo
        params[nonzero] = {n: tuple(p.shape) for n, p in pyro.get_param_store().named_parameters()}
    r = [np.corrcoef(q05[False][:, k], q05[True][:, k])[0, 1] for k in range(q05[False].shape[1])]
    assert np.median(r) >= 0.999, r
    assert abs(elbo[True][-1] - elbo[False][-1]) <= 1e-4 * abs(elbo[False][-1])
    assert params[True] == params[False]  # the same parameters, names and shapes
    # the model trained with it is cell2location's own: saved, loaded by stock cell2location, the same posterior
    model.save(str(tmp_path / "m"), overwrite=True)
    pyro.clear_param_store()
    loaded = Cell2location.load(str(tmp_path / "m"), model.adata)
    again = analytic_posterior(loaded)["post_sample_q05"]["w_sf"]
    np.testing.assert_allclose(again, q05[True], rtol=1e-6)


def test_full_batch_jit_refuses_other_data():
    """The compiled ELBO of a full-batch run holds the data's nonzero counts: other data must raise."""
    from c2lnf.training.loop import same_data_jit_elbo

    loss = same_data_jit_elbo()
    x = torch.zeros(2, 2)
    loss._check((x,))
    loss._check((x,))
    with pytest.raises(RuntimeError, match="other data"):
        loss._check((x.clone(),))


def test_context_restores_the_models_distributions():
    """Outside the context both models are cell2location's own (what is saved and exported is unchanged)."""
    import importlib

    import pyro.distributions as dist

    from c2lnf.likelihood import MODEL_MODULES, NonzeroGammaPoisson, nonzero_likelihood

    mods = [importlib.import_module(m) for m in MODEL_MODULES]
    with nonzero_likelihood():
        assert all(m.dist.GammaPoisson is NonzeroGammaPoisson for m in mods)
        assert all(m.dist.Gamma is dist.Gamma for m in mods)
    assert all(m.dist is dist for m in mods)


def test_likelihood_option_and_tutorial_settings():
    """--likelihood nonzero is the default of the fast path; --tutorial-settings always uses Pyro's."""
    from c2lnf.training import setup_from_options

    common = dict(max_epochs=10, lr=0.01, lr_min=0.001, stop_tol=1e-4, stop_window=5, min_epochs=0,
                  early_stop=True, export_mode="analytic", num_samples=10)
    assert setup_from_options(tutorial_settings=False, **common).likelihood == "nonzero"
    assert setup_from_options(tutorial_settings=False, likelihood="dense", **common).likelihood == "dense"
    tutorial = setup_from_options(tutorial_settings=True, likelihood="nonzero", **common)
    assert tutorial.likelihood == "dense" and not tutorial.fast
