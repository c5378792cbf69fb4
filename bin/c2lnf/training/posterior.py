"""The posterior export: from the variational distribution in closed form (the pipeline), or from posterior samples
(the tutorial). Tests: tests/test_training_posterior.py."""

from __future__ import annotations

import logging

LOG = logging.getLogger("c2l.training")


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
