"""Step `train_reference`: the negative-binomial regression model that estimates reference signatures."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import pandas as pd

from .training import Plan, Setup, Trained, train_and_export

LOG = logging.getLogger("c2l.train_reference")


def train_reference(
    adata: ad.AnnData,
    labels_key: str,
    batch_key: str | None,
    categorical_covariate_keys: list[str] | None,
    plan: Plan,
    batch_size: int,
    accelerator: str,
    fast: bool,
    analytic: bool,
    num_samples: int,
    log_every: int | None = None,
    data_on_device: str = "off",
    nonzero_likelihood: bool = True,
) -> tuple[Trained, ad.AnnData]:
    """Set up, train and export the RegressionModel; returns (Trained, adata with the posterior).

    With `plan.fixed()`, `fast=False`, `analytic=False` this is exactly the tutorial's calls.
    """
    from cell2location.models import RegressionModel

    RegressionModel.setup_anndata(
        adata=adata,
        batch_key=batch_key,
        labels_key=labels_key,
        categorical_covariate_keys=categorical_covariate_keys or None,
    )
    LOG.info("training the reference model: %d cells x %d genes, at most %d epochs, batch %d, %s",
             adata.n_obs, adata.n_vars, plan.max_epochs, batch_size, accelerator)
    return train_and_export(lambda: RegressionModel(adata), adata, plan, accelerator, batch_size, fast, analytic,
                            num_samples, batch_size, log_every, data_on_device, nonzero_likelihood)


def signatures(adata: ad.AnnData) -> pd.DataFrame:
    """Reference signatures (genes x cell types): the posterior means `means_per_cluster_mu_fg`."""
    names = list(adata.uns["mod"]["factor_names"])
    cols = [f"means_per_cluster_mu_fg_{n}" for n in names]
    source = adata.varm["means_per_cluster_mu_fg"] if "means_per_cluster_mu_fg" in adata.varm else adata.var
    table = pd.DataFrame(source[cols], index=adata.var_names).copy()
    table.columns = names
    table.index.name = "gene"
    return table


def reference_checks(adata: ad.AnnData, labels_key: str, sig: pd.DataFrame) -> dict:
    """For the run report: cells per type, per type the Pearson r of log1p(signature) with log1p(the type's mean
    counts per cell) over the signatures' genes (plot_QC's "signatures vs per-cluster averages"), and how much of
    the expression the labels explain against random labels (markers.label_signal)."""
    from .markers import label_signal
    from .report import signature_agreement

    labels = adata.obs[labels_key].astype(str)
    try:
        agreement = signature_agreement(adata, labels, sig)
    except Exception as exc:  # noqa: BLE001 - a QC number must never fail a finished training
        LOG.warning("signature agreement not computed: %s", exc)
        agreement = {}
    try:
        signal = label_signal(adata, labels_key)
        LOG.info("labels '%s' explain %.3f of the variance of the %d most variable genes (%.1fx labels at random)",
                 labels_key, signal["r2"], signal["n_genes"], signal["ratio"])
    except Exception as exc:  # noqa: BLE001 - a QC number must never fail a finished training
        LOG.warning("label signal not computed: %s", exc)
        signal = None
    return {"cells_per_type": {k: int(v) for k, v in labels.value_counts().sort_index().items()},
            "signature_agreement": agreement, "label_signal": signal}


def plot_reference_qc(model, path) -> None:
    """plot_QC on 1000 cells; if that subsample misses a covariate level (upstream #74), on all cells."""
    from .training.summary import plot_qc

    try:
        plot_qc(model, path, use_n_obs=1000)
    except ValueError as exc:
        import matplotlib.pyplot as plt

        plt.close("all")
        LOG.warning("plot_QC on a 1000-cell subsample failed (%s); retrying on all cells", exc)
        plot_qc(model, path, use_n_obs=None)


def run(reference: Path, labels_key: str, batch_key: str | None, categorical_covariate_keys: list[str],
        batch_size: int, setup: Setup, outdir: Path, prefix: str) -> None:
    """The step: train on a filtered reference and write signatures.csv, <prefix>_model/, <prefix>_history.csv/png,
    <prefix>_training.json, <prefix>_qc.png and <prefix>_posterior.h5ad into `outdir` (all or none)."""
    from .filter_reference import load_reference
    from .runtime import staged_outputs, write_h5ad
    from .training.summary import history_frame, plot_history, write_summary

    adata = load_reference(reference, labels_key, batch_key, categorical_covariate_keys, None, 1, warn=False)
    trained, adata = train_reference(adata, labels_key, batch_key, categorical_covariate_keys, setup.plan, batch_size,
                                     setup.accelerator, setup.fast, setup.analytic, setup.num_samples, setup.log_every,
                                     setup.data_on_device, setup.likelihood == "nonzero")
    history = history_frame(trained.model)
    with staged_outputs(outdir) as out:
        signatures(adata).to_csv(out.path("signatures.csv"))
        history.to_csv(out.path(f"{prefix}_history.csv"), index=False)
        write_summary(trained, history, setup.device, out.path(f"{prefix}_training.json"),
                      reference_checks(adata, labels_key, signatures(adata)))
        plot_history(trained.model, out.path(f"{prefix}_history.png"), skip=20, title="reference regression model",
                     monitor=trained.monitor)
        plot_reference_qc(trained.model, out.path(f"{prefix}_qc.png"))
        trained.model.save(str(out.path(f"{prefix}_model")), overwrite=True)
        write_h5ad(adata, out.path(f"{prefix}_posterior.h5ad"))
