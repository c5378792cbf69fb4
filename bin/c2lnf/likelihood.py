"""cell2location's observation likelihood, computed where the counts are.

Both cell2location models score every count x with `GammaPoisson(concentration=alpha, rate=alpha / mu)`. Pyro
evaluates that density on every entry of the (locations or cells) x genes matrix with three `lgamma` calls (and
two `digamma` calls in the backward pass), although most counts are zero, `lgamma(x + 1)` depends on the data
only, and `lgamma(alpha) - lgamma(alpha)` cancels where x is 0. Written per entry (rate r = alpha / mu),

    log p(x) = alpha * log(r / (1 + r))                                       (every entry)
             + lgamma(alpha + x) - lgamma(alpha) - x * log(1 + r) - lgamma(x + 1)   (x != 0 only)

which is Pyro's `GammaPoisson.log_prob` rearranged (its `-log_beta(alpha, x + 1) - log(alpha + x)` is
`lgamma(alpha + x) - lgamma(alpha) - lgamma(x + 1)`), so the value and its gradients are the same up to rounding.
`NonzeroGammaPoisson` computes the first line densely as `-alpha * log1p(1 / r)` and the second on the nonzero
entries only, forward and backward in one autograd function (`_LogProb`: a few passes over the dense matrix, no
dense temporaries for the nonzero terms); the nonzero positions, their counts and `lgamma(x + 1)` are
computed once per data tensor (once per data set when the same tensor comes back every epoch, as in a
full-batch run: see `training.loop` (FullBatchSplitter); once per minibatch otherwise).

`nonzero_likelihood()` makes both cell2location models use it for as long as the context lasts (their modules'
`dist.GammaPoisson` is swapped), and by default also fuses each model's observation part (`fused_observation`,
below): the expected counts mu, which both models build from a few small factors, and the log-density are then
computed in one autograd function (`_Fused`) with a hand-written backward pass, a few passes over the dense
matrix in all and one dense temporary kept for the backward pass. The latent part of the model is
cell2location's own forward, run up to its last latent site; the sites, their names, the priors, the guide,
the parameters and saved state are unchanged, and a model saved or exported afterwards is cell2location's own.
Measured at the tutorial's shapes (benchmarks/likelihood_costs.py): mapping epoch 3.5 s -> 0.87 s, reference
epoch 7.6 s -> 2.5 s, against Pyro's GammaPoisson in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import torch
from pyro.distributions import GammaPoisson

# the modules whose `dist.GammaPoisson` is the observation likelihood (cell2location 0.1.x)
MODEL_MODULES = ("cell2location.models._cell2location_module", "cell2location.models.reference._reference_module")


class _LogProb(torch.autograd.Function):
    """The log-density of every entry, flat (row-major), with its gradients in one backward pass:

    every entry: alpha * log(r / (1 + r)) = -alpha * t, t = log1p(1 / r);
        d/d alpha = -t, d/d r = alpha / (r (1 + r))
    nonzero entries (flat positions idx, counts x) add lgamma(alpha + x) - lgamma(alpha) - x * log1p(r)
    - lgamma(x + 1); d/d alpha += digamma(alpha + x) - digamma(alpha), d/d r += -x / (1 + r).

    `rate` has the counts' shape (n, g); `alpha` too, or (1, g) (one value per gene). The output is flat so
    that nothing outside needs to reshape it in place; an incoming gradient that is one number broadcast (what
    `.sum()` sends back) is applied as that number, not as a matrix."""

    @staticmethod
    def forward(ctx, alpha, rate, idx, x, neg_lgamma_x1):
        shape = rate.shape
        per_gene = alpha.shape != shape
        t = torch.reciprocal(rate).log1p_()
        flat = torch.empty(shape.numel(), dtype=t.dtype, device=t.device)
        torch.mul(alpha, t, out=flat.view(shape)).neg_()
        cols = torch.remainder(idx, shape[1]) if per_gene else None
        a = alpha.reshape(-1)[cols] if per_gene else alpha.reshape(-1)[idx]
        r = rate.reshape(-1)[idx]
        ax = a + x
        nz = torch.lgamma(ax).sub_(torch.lgamma(a)).sub_(torch.log1p(r).mul_(x)).add_(neg_lgamma_x1)
        flat.index_add_(0, idx, nz)
        ctx.save_for_backward(alpha, rate, t, idx, x, a, r, ax)
        ctx.cols = cols
        return flat

    @staticmethod
    def backward(ctx, grad):
        alpha, rate, t, idx, x, a, r, ax = ctx.saved_tensors
        cols = ctx.cols
        shape = rate.shape
        scalar = grad.dim() > 0 and grad.numel() > 1 and all(s == 0 for s in grad.stride())
        c = grad.reshape(-1)[:1] if scalar else None
        g_nz = c.expand(idx.shape) if scalar else grad[idx]
        g = grad.reshape(shape) if not scalar else None
        g_alpha = g_rate = None
        if ctx.needs_input_grad[0]:
            d_nz = torch.digamma(ax).sub_(torch.digamma(a)).mul_(g_nz)
            if alpha.shape == shape:
                g_alpha = t.neg() if scalar else torch.mul(g, t).neg_()
                if scalar:
                    g_alpha.mul_(c)
                g_alpha.view(-1).index_add_(0, idx, d_nz)
            else:  # (1, g): summed over the rows
                g_alpha = (t.sum(0, keepdim=True).mul_(c).neg_() if scalar
                           else torch.mul(g, t).sum(0, keepdim=True).neg_())
                g_alpha.view(-1).index_add_(0, cols, d_nz)
        if ctx.needs_input_grad[1]:
            g_rate = torch.add(rate, 1).mul_(rate).reciprocal_().mul_(alpha)  # alpha / (r (1 + r))
            g_rate.mul_(c if scalar else g)
            g_rate.view(-1).index_add_(0, idx, torch.add(r, 1).reciprocal_().mul_(x).mul_(g_nz).neg_())
        return g_alpha, g_rate, None, None, None


class _DataTerms:
    """What depends on the counts only: the nonzero entries' flat positions, their counts and -lgamma(x + 1).

    The last data tensor's terms are kept (with the tensor, so that its identity cannot be reused): a tensor
    that comes back unchanged (same object, same version) is not scanned again. Inside a JIT trace the terms
    are part of the traced graph (recomputed at every call), unless `constant_in_trace` is set: then they are
    computed outside the graph, once, and the compiled function is only valid for that one data tensor (what
    `training.loop`'s SameDataJitTrace_ELBO checks at every call)."""

    def __init__(self):
        self.value = None
        self.version = -1
        self.terms = None
        self.constant_in_trace = False

    def get(self, value: torch.Tensor):
        tracing = torch.jit.is_tracing()
        if value is self.value and value._version == self.version and (not tracing or self.constant_in_trace):
            return self.terms
        state = torch._C._get_tracing_state() if tracing and self.constant_in_trace else None
        if state is not None:
            torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                flat = value.reshape(-1)
                idx = flat.nonzero().squeeze(-1)
                x = flat[idx]
                terms = (idx, x, torch.lgamma(x + 1).neg_())
        finally:
            if state is not None:
                torch._C._set_tracing_state(state)
        if not tracing or self.constant_in_trace:
            self.value, self.version, self.terms = value, value._version, terms
        return terms


DATA = _DataTerms()


class NonzeroGammaPoisson(GammaPoisson):
    """Pyro's GammaPoisson (same parameters, sampling, mean and variance) whose `log_prob` computes the special
    functions on the nonzero counts only (see the module's docstring). Values of any other shape than two
    broadcast dimensions fall back to Pyro's dense `log_prob`."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        alpha, rate = self.concentration, self.rate
        shape = torch.broadcast_shapes(alpha.shape, rate.shape, value.shape)
        if len(shape) != 2 or value.shape != shape or value.layout != torch.strided:
            return super().log_prob(value)
        idx, x, neg_lgamma_x1 = DATA.get(value)
        if rate.shape != shape:
            rate = rate.expand(shape).contiguous()
        if alpha.shape != shape and alpha.shape != (1, shape[1]):
            alpha = alpha.expand(shape).contiguous()
        return _LogProb.apply(alpha, rate, idx, x, neg_lgamma_x1).view(shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NonzeroGammaPoisson, _instance)
        return super().expand(batch_shape, _instance=new)


class _Distributions:
    """`pyro.distributions` with GammaPoisson replaced (what a model module sees as `dist` in the context)."""

    def __init__(self, base):
        self._base = base

    def __getattr__(self, name):
        return NonzeroGammaPoisson if name == "GammaPoisson" else getattr(self._base, name)


FUSED = True  # the default of nonzero_likelihood(fused=None) (benchmarks/likelihood_costs.py turns it off to
#               measure the unfused nonzero-count likelihood)


@contextlib.contextmanager
def nonzero_likelihood(enabled: bool = True, fused: bool | None = None):
    """Within the context both cell2location models score their counts with NonzeroGammaPoisson and (`fused`)
    compute their observation part with `_Fused` (see `fused_observation`; models it does not cover, e.g. a
    reference with categorical covariates, use NonzeroGammaPoisson)."""
    if not enabled:
        yield
        return
    modules = [importlib.import_module(name) for name in MODEL_MODULES]
    saved = [m.dist for m in modules]
    try:
        for m, d in zip(modules, saved):
            m.dist = _wrapped(d)
        with fused_observation(FUSED if fused is None else fused):
            yield
    finally:
        for m, d in zip(modules, saved):
            m.dist = d
        DATA.__init__()


@functools.lru_cache(maxsize=None)
def _wrapped(base):
    return _Distributions(base)


# ---------------------------------------------------------------- the observation part, fused
#
# Both models' expected counts are one matrix product of a small row factor and a small gene factor:
#
#   mapping:   mu = ((w_sf @ cell_state) * m_g + obs2sample @ s_g_gene_add) * detection_y_s
#                 = (detection_y_s * [w_sf, obs2sample]) @ [cell_state * m_g; s_g_gene_add]
#   reference: mu = (obs2label @ per_cluster_mu_fg + obs2sample @ s_g_gene_add) * (obs2sample @ detection_mean_y_e)
#                 = (detection_y_c * [obs2label, obs2sample]) @ [per_cluster_mu_fg; s_g_gene_add]
#
# and alpha is one row per batch (mapping: obs2sample @ alpha_g^-2 selects it; reference: one row). `_Fused`
# computes mu = Z @ M, the log-density of every count and its gradients for Z, M and alpha in a few passes over
# the dense (rows x genes) matrix, keeping no dense temporaries but the one that becomes the gradient:
#
#   log p(x) = alpha log alpha + x log mu - (alpha + x) log(alpha + mu) + lgamma(alpha + x) - lgamma(alpha)
#              - lgamma(x + 1)
#   d/d mu    = x / mu - q,   q = (alpha + x) / (alpha + mu)
#   d/d alpha = log alpha + 1 - log(alpha + mu) - q + digamma(alpha + x) - digamma(alpha)
#
# (Pyro's GammaPoisson(alpha, alpha / mu).log_prob rearranged.) x log mu is needed on the nonzero counts only;
# lgamma(alpha + x) - lgamma(alpha) and digamma(alpha + x) - digamma(alpha) take one value per (batch, gene,
# count) and are looked up in a table computed per step for counts 1..K (in float64; counts above K are
# computed entry by entry); what depends on the data only (nonzero positions, counts, lgamma(x + 1), table
# slots and their counts) is computed once per data tensor (`TERMS`).


def _table_width(n_rows_alpha: int, n_genes: int) -> int:
    """Counts 1..K are looked up in a (batches x genes x K) table: at most ~1M special-function calls a step."""
    return int(max(4, min(64, 1_000_000 // max(1, n_rows_alpha * n_genes))))


class _FusedTerms:
    """The data-only terms of one data tensor (and its rows' batches), kept like `_DataTerms` (same identity and
    version: not computed again; inside a JIT trace only when `DATA.constant_in_trace`)."""

    def __init__(self):
        self.key = None
        self.terms = None

    def get(self, x: torch.Tensor, batch_key, batch: torch.Tensor, n_alpha: int, k: int):
        """`batch_key`: the model's batch argument (the tensor whose identity stands for `batch`), or None when
        there is one alpha row."""
        tracing = torch.jit.is_tracing()
        key = (x, x._version, batch_key, -1 if batch_key is None else batch_key._version, n_alpha, k)
        constant = DATA.constant_in_trace
        same = self.key is not None and all(a is b if (torch.is_tensor(a) or a is None) else a == b
                                            for a, b in zip(key, self.key))
        if same and (not tracing or constant):
            return self.terms
        state = torch._C._get_tracing_state() if tracing and constant else None
        if state is not None:
            torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                terms = _data_terms(x, batch, n_alpha, k)
        finally:
            if state is not None:
                torch._C._set_tracing_state(state)
        if not tracing or constant:
            self.key, self.terms = key, terms
        return terms


def _data_terms(x: torch.Tensor, batch: torch.Tensor, n_alpha: int, k: int):
    n, g = x.shape
    flat = x.reshape(-1)
    idx = flat.nonzero().squeeze(-1)
    xv = flat[idx]
    rows = torch.div(idx, g, rounding_mode="floor")
    cols = idx - rows * g
    neg_lgamma_x1 = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(
        0, rows, torch.lgamma(xv + 1).double()).neg_()
    slot = batch[rows] * g + cols if n_alpha > 1 else cols  # the (batch, gene) of each count
    xi = xv.long()
    small = (xi <= k) & (xv == xi)  # whole counts 1..k (x > 0 here)
    tidx = torch.where(small, slot * k + (xi - 1), torch.full_like(slot, n_alpha * g * k))  # last slot: 0
    big = (~small).nonzero().squeeze(-1)
    counts = torch.bincount(tidx, minlength=n_alpha * g * k + 1)[:-1].to(x.dtype).view(n_alpha, g, k)
    return idx, xv, rows, tidx, counts, big, slot[big], xv[big], neg_lgamma_x1


TERMS = _FusedTerms()


def _tables(alpha: torch.Tensor, k: int):
    """lgamma(alpha + j) - lgamma(alpha) - j log(alpha) and digamma(alpha + j) - digamma(alpha), j = 1..k,
    (b, g, k), in float64
    (then the input's dtype); a zero slot at the end of the flat lgamma table."""
    a = alpha.detach().double().unsqueeze(-1)
    j = torch.arange(1, k + 1, dtype=torch.float64, device=alpha.device)
    lg = (torch.lgamma(a + j) - torch.lgamma(a) - j * torch.log(a)).to(alpha.dtype)
    dg = (torch.digamma(a + j) - torch.digamma(a)).to(alpha.dtype)
    return torch.cat([lg.reshape(-1), lg.new_zeros(1)]), dg


class _Fused(torch.autograd.Function):
    """Per-row log-likelihood (n, 1) of counts x under GammaPoisson(alpha, alpha / (Z @ M)), alpha = A[batch];
    gradients for Z (n, K), M (K, g) and A (b, g). The backward pass needs the incoming gradient to be the same
    for every row (what Pyro's ELBOs send: the site's scale)."""

    @staticmethod
    def forward(ctx, Z, M, A, x, batch, onehot, idx, xv, rows, tidx, counts, big, big_slot, big_x, neg_lgamma_x1):
        n, g = x.shape
        b = A.shape[0]
        k = counts.shape[-1]
        mu = Z @ M
        mu_nz = mu.view(-1)[idx]
        # l = log1p(mu / alpha) = log(alpha + mu) - log(alpha): every entry's -alpha * l and the per-row sums
        # (of positive terms: no cancellation in float32)
        inv_a = torch.reciprocal(A)
        lp = torch.mul(mu, inv_a) if b == 1 else torch.mm(onehot, inv_a).mul_(mu)
        lp.log1p_()
        col_l = lp.sum(0, keepdim=True) if b == 1 else onehot.t() @ lp
        rows_ll = (lp @ A.t()).view(n) if b == 1 else (lp @ A.t()).gather(1, batch.view(n, 1)).view(n)
        rows_ll.neg_()
        l_nz = lp.view(-1)[idx]
        del lp
        # q = (alpha + x) / (alpha + mu), which becomes the gradient (mu itself is needed no more)
        apm = mu.add_(A) if b == 1 else mu.addmm_(onehot, A)
        q = torch.add(x, A) if b == 1 else torch.addmm(x, onehot, A)
        q.div_(apm)
        del apm, mu
        col_q = q.sum(0, keepdim=True) if b == 1 else onehot.t() @ q
        # nonzero counts: x (log mu - log(alpha + mu)) + lgamma(alpha + x) - lgamma(alpha)
        #   = x (log mu - l) + [lgamma(alpha + x) - lgamma(alpha) - x log alpha]   (the bracket from the table)
        lg, dg = _tables(A, k)
        nz = torch.log(mu_nz).sub_(l_nz).mul_(xv).add_(lg[tidx])
        a_big = A.reshape(-1)[big_slot]
        if big.numel():
            nz.index_add_(0, big, torch.lgamma(a_big + big_x) - torch.lgamma(a_big) - big_x * torch.log(a_big))
        rows_ll.index_add_(0, rows, nz)
        rows_ll.add_(neg_lgamma_x1.to(rows_ll.dtype))
        # d/d alpha = log alpha + 1 - log(alpha + mu) - q + digamma(alpha + x) - digamma(alpha) = 1 - l - q + ...
        n_b = A.new_tensor([[float(n)]]) if b == 1 else onehot.sum(0).unsqueeze(1)
        d_alpha = (n_b - col_l - col_q) + (counts * dg).sum(-1)
        if big.numel():
            d_alpha.view(-1).index_add_(0, big_slot, torch.digamma(a_big + big_x) - torch.digamma(a_big))
        ctx.save_for_backward(Z, M, idx, xv, mu_nz)
        ctx.q, ctx.d_alpha = q, d_alpha
        return rows_ll.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad):
        Z, M, idx, xv, mu_nz = ctx.saved_tensors
        q, d_alpha = ctx.q, ctx.d_alpha
        ctx.q = ctx.d_alpha = None
        flat = grad.reshape(-1)
        c = flat[:1]
        if not (flat.numel() == 1 or grad.stride() == (0, 0) or bool((flat == c).all())):
            raise NotImplementedError("the fused cell2location likelihood takes one gradient for all rows "
                                      "(a scaled sum, as in Pyro's ELBOs)")
        neg_g = q  # -(d log p / d mu) = q - x / mu
        neg_g.view(-1).index_add_(0, idx, xv / mu_nz, alpha=-1)
        g_z = g_m = None
        if ctx.needs_input_grad[0]:
            g_z = (neg_g @ M.t()).mul_(-c)
        if ctx.needs_input_grad[1]:
            g_m = (Z.t() @ neg_g).mul_(-c)
        return (g_z, g_m, d_alpha * c) + (None,) * 12


class FusedObservation(GammaPoisson):
    """GammaPoisson(alpha, alpha / mu) for mu = Z @ M and alpha = A[batch] without the dense mu: its log_prob is
    the per-row sum (n, 1) of the counts' log-densities (what the ELBO sums), computed by `_Fused`. Sampling,
    mean and variance are Pyro's (they build mu)."""

    def __init__(self, Z, M, A, batch, onehot, batch_key):
        self.Z, self.M, self.A, self.batch, self.onehot, self.batch_key = Z, M, A, batch, onehot, batch_key
        n, g = Z.shape[0], M.shape[1]
        # batch_shape (n, g); the parameters are only placeholders (see _dense for the real ones)
        super().__init__(A.new_ones(1, 1).expand(n, g), A.new_ones(1, 1).expand(n, g), validate_args=False)

    def log_prob(self, value):
        k = _table_width(self.A.shape[0], value.shape[1])
        terms = TERMS.get(value, self.batch_key, self.batch, self.A.shape[0], k)
        return _Fused.apply(self.Z, self.M, self.A, value, self.batch, self.onehot, *terms)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) != self.batch_shape:
            raise ValueError(f"FusedObservation has batch shape {tuple(self.batch_shape)}, not {tuple(batch_shape)}")
        return self

    def _dense(self):
        alpha = self.A if self.A.shape[0] == 1 else self.A.index_select(0, self.batch)
        return GammaPoisson(alpha.expand(self.Z.shape[0], self.M.shape[1]), alpha / (self.Z @ self.M))

    def sample(self, sample_shape=torch.Size()):
        return self._dense().sample(sample_shape)

    @property
    def mean(self):
        return self._dense().mean

    @property
    def variance(self):
        return self._dense().variance


class _Stop(Exception):
    pass


class _Latents:
    """Records the values of a model's sample sites and stops the model after `last` (a Pyro messenger)."""

    def __init__(self, last: str):
        from pyro.poutine.messenger import Messenger

        outer = self

        class _M(Messenger):
            def _postprocess_message(self, msg):
                if msg["type"] == "sample":
                    outer.values[msg["name"]] = msg["value"]
                    if msg["name"] == last:
                        raise _Stop

        self.values: dict = {}
        self.messenger = _M()


def _latents(forward, module, args, last):
    """Run cell2location's own forward (its priors, sites and names) up to its last latent site `last`; returns
    the sites' values and the observation plate the forward made (`create_plates`)."""
    rec = _Latents(last)
    plates = []
    make_plates = type(module).create_plates
    object.__setattr__(module, "create_plates", lambda *a: plates.append(make_plates(module, *a)) or plates[-1])
    try:
        with rec.messenger:
            forward(module, *args)
    except _Stop:
        return rec.values, plates[0]
    finally:
        object.__delattr__(module, "create_plates")
    raise RuntimeError(f"the model did not reach its site {last!r}")


def _mapping_forward(original):
    def forward(self, x_data, idx, batch_index):
        if self.training_wo_observed or self.dropout_p != 0 or x_data.dim() != 2 or x_data.layout != torch.strided:
            return original(self, x_data, idx, batch_index)
        import pyro

        v, obs_plate = _latents(original, self, (x_data, idx, batch_index), "alpha_g_inverse")
        w_sf, m_g, y_s = v["w_sf"], v["m_g"], v["detection_y_s"]
        batch = batch_index.reshape(-1).long()
        onehot = torch.nn.functional.one_hot(batch, self.n_batch).to(w_sf.dtype)
        Z = torch.cat([w_sf, onehot], 1) * y_s
        M = torch.cat([self.cell_state * m_g, v["s_g_gene_add"]], 0)
        A = self.ones / v["alpha_g_inverse"].pow(2)
        with obs_plate:
            pyro.sample("data_target", FusedObservation(Z, M, A, batch, onehot, batch_index if self.n_batch > 1
                                                        else None), obs=x_data)
            pyro.deterministic("u_sf_mRNA_factors", w_sf * (self.cell_state * m_g).sum(-1))

    return forward


def _reference_forward(original):
    def forward(self, x_data, idx, batch_index, label_index, extra_categoricals):
        if self.n_extra_categoricals is not None or x_data.dim() != 2 or x_data.layout != torch.strided:
            return original(self, x_data, idx, batch_index, label_index, extra_categoricals)
        import pyro

        args = (x_data, idx, batch_index, label_index, extra_categoricals)
        v, obs_plate = _latents(original, self, args, "alpha_g_inverse")
        mu_fg = v["per_cluster_mu_fg"]
        dtype = mu_fg.dtype
        batch = batch_index.reshape(-1).long()
        obs2sample = torch.nn.functional.one_hot(batch, self.n_batch).to(dtype)
        obs2label = torch.nn.functional.one_hot(label_index.reshape(-1).long(), self.n_factors).to(dtype)
        y_c = obs2sample @ v["detection_mean_y_e"]
        Z = torch.cat([obs2label, obs2sample], 1) * y_c
        M = torch.cat([mu_fg, v["s_g_gene_add"]], 0)
        A = self.ones / v["alpha_g_inverse"].pow(2)
        with obs_plate:
            pyro.sample("data_target", FusedObservation(Z, M, A, batch, obs2sample, None), obs=x_data)

    return forward


def _model_classes():
    from cell2location.models._cell2location_module import (
        LocationModelLinearDependentWMultiExperimentLocationBackgroundNormLevelGeneAlphaPyroModel as Mapping)
    from cell2location.models.reference._reference_module import (
        RegressionBackgroundDetectionTechPyroModel as Reference)

    return [(Mapping, _mapping_forward), (Reference, _reference_forward)]


@contextlib.contextmanager
def fused_observation(enabled: bool = True):
    """Within the context both models' observation part (expected counts and likelihood) is `_Fused`; their
    latent part is cell2location's own forward, run up to its last latent site. Outside, nothing is changed."""
    if not enabled:
        yield
        return
    saved = [(cls, cls.__dict__["forward"]) for cls, _ in _model_classes()]
    try:
        for (cls, make), (_, original) in zip(_model_classes(), saved):
            cls.forward = make(original)
        yield
    finally:
        for cls, original in saved:
            cls.forward = original
        TERMS.__init__()
