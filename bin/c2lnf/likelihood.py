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
full-batch run: see `training.FullBatchSplitter`; once per minibatch otherwise).

`nonzero_likelihood()` makes both cell2location models use it for as long as the context lasts (their modules'
`dist.GammaPoisson` is swapped, nothing else): the model, its priors, guide, parameter names and saved state
are unchanged, and a model saved or exported afterwards is cell2location's own.
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
    `training.SameDataJitTrace_ELBO` checks at every call)."""

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


@contextlib.contextmanager
def nonzero_likelihood(enabled: bool = True):
    """Within the context both cell2location models score their counts with NonzeroGammaPoisson."""
    if not enabled:
        yield
        return
    modules = [importlib.import_module(name) for name in MODEL_MODULES]
    saved = [m.dist for m in modules]
    try:
        for m, d in zip(modules, saved):
            m.dist = _wrapped(d)
        yield
    finally:
        for m, d in zip(modules, saved):
            m.dist = d
        DATA.__init__()


@functools.lru_cache(maxsize=None)
def _wrapped(base):
    return _Distributions(base)
