"""cell2location's observation likelihood, computed where the counts are.

Both cell2location models score every count x with `GammaPoisson(concentration=alpha, rate=alpha / mu)`. Pyro
evaluates that density on every entry of the (locations or cells) x genes matrix with three `lgamma` calls (and
two `digamma` calls in the backward pass), although most counts are zero, `lgamma(x + 1)` depends on the data
only, and `lgamma(alpha) - lgamma(alpha)` cancels where x is 0. Written per entry (rate r = alpha / mu),

    log p(x) = alpha * log(r / (1 + r))                                       (every entry)
             + lgamma(alpha + x) - lgamma(alpha) - x * log(1 + r) - lgamma(x + 1)   (x != 0 only)

which is Pyro's `GammaPoisson.log_prob` rearranged (its `-log_beta(alpha, x + 1) - log(alpha + x)` is
`lgamma(alpha + x) - lgamma(alpha) - lgamma(x + 1)`), so the value and its gradients are the same up to rounding.
`NonzeroGammaPoisson` computes the first line densely as `-alpha * log1p(1 / r)` (one fused forward/backward)
and the second on the nonzero entries only; the nonzero positions, their counts and `lgamma(x + 1)` are
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
from torch.distributions.utils import broadcast_all

# the modules whose `dist.GammaPoisson` is the observation likelihood (cell2location 0.1.x)
MODEL_MODULES = ("cell2location.models._cell2location_module", "cell2location.models.reference._reference_module")


class _ZeroCountTerm(torch.autograd.Function):
    """alpha * log(r / (1 + r)) = -alpha * log1p(1 / r) per entry, with its gradients computed in a few passes:
    d/d alpha = -log1p(1 / r), d/d r = alpha / (r (1 + r)). Inputs broadcast; gradients are summed back to each
    input's shape. An incoming gradient that is one number broadcast (what `.sum()` sends back) is applied as
    that number, not as a matrix."""

    @staticmethod
    def forward(ctx, alpha, rate):
        t = torch.reciprocal(rate).log1p_()
        ctx.save_for_backward(alpha, rate, t)
        return torch.mul(alpha, t).neg_()

    @staticmethod
    def backward(ctx, grad):
        alpha, rate, t = ctx.saved_tensors
        scalar = grad.dim() > 0 and all(s == 0 for s in grad.stride())
        c = grad.reshape(-1)[0] if scalar else None
        g_alpha = g_rate = None
        if ctx.needs_input_grad[0]:
            if scalar:
                g_alpha = _sum_to(t, alpha.shape) * -c
            else:
                g_alpha = _sum_to(torch.mul(grad, t).neg_(), alpha.shape)
        if ctx.needs_input_grad[1]:
            g = torch.add(rate, 1).mul_(rate).reciprocal_()  # 1 / (r (1 + r))
            a = alpha * c if scalar and alpha.numel() < g.numel() else alpha
            g = g.mul_(a) if g.shape == torch.broadcast_shapes(a.shape, g.shape) else g * a
            if scalar and a is alpha:
                g = g.mul_(c)
            elif not scalar:
                g = g.mul_(grad)
            g_rate = _sum_to(g, rate.shape)
        return g_alpha, g_rate


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    """t summed over the dimensions that were broadcast to give it its shape."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and t.shape[i + lead] != 1)
    return t.sum(dims, keepdim=True).reshape(shape) if dims else t


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
        out = _ZeroCountTerm.apply(alpha, rate)
        if out.shape != shape:
            out = out.expand(shape).contiguous()
        n_genes = shape[1]
        a = _gather(alpha, idx, shape, n_genes)
        r = _gather(rate, idx, shape, n_genes)
        nz = torch.lgamma(a + x) - torch.lgamma(a) - x * torch.log1p(r) + neg_lgamma_x1
        return out.view(-1).index_add_(0, idx, nz).view(shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NonzeroGammaPoisson, _instance)
        return super().expand(batch_shape, _instance=new)


def _gather(t: torch.Tensor, idx: torch.Tensor, shape, n_genes: int) -> torch.Tensor:
    """t broadcast to `shape`, at the flat positions idx (without materialising the broadcast)."""
    if t.shape == shape:
        return t.reshape(-1)[idx]
    if t.dim() == 2 and t.shape[0] == 1 and t.shape[1] == n_genes:
        return t.reshape(-1)[idx % n_genes]
    if t.dim() == 2 and t.shape[1] == 1 and t.shape[0] == shape[0]:
        return t.reshape(-1)[idx // n_genes]
    return t.expand(shape).reshape(-1)[idx]


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
