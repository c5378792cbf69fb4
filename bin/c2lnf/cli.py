"""The `c2l` command line: one click group, one subcommand per pipeline step.

The click layer parses options and reports; the science lives in the step modules' plain functions.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import __version__, testdata
from .errors import C2LError

LOG = logging.getLogger("c2l")


def domain_errors(func):
    """Turn a C2LError into one clear line and exit 1; anything unexpected keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except C2LError as exc:
            raise click.ClickException(exc.format()) from None

    return wrapper


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be > 0, got {value}")
    return value


def _csv_list(ctx, param, value):
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _key_values(ctx, param, values):
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


# Tutorial values (the ceilings and the --tutorial-settings behaviour) and the pipeline's defaults per model.
TUTORIAL_LR = 0.002
TUTORIAL_NUM_SAMPLES = 1000
PLAN_DEFAULTS = {
    "reference": {"max_epochs": 250, "lr": 0.002, "lr_min": 0.002, "stop_tol": 1e-3, "stop_window": 10, "min_epochs": 50},
    "mapping": {"max_epochs": 30000, "lr": 0.03, "lr_min": 0.002, "stop_tol": 1e-4, "stop_window": 100, "min_epochs": 500},
}


def training_options(model: str):
    """Options shared by the two training steps; `model` ('reference' or 'mapping') picks the defaults."""
    d = PLAN_DEFAULTS[model]

    def decorate(func):
        options = [
            click.option("--max-epochs", type=int, default=d["max_epochs"], show_default=True, callback=_positive,
                         help="Most epochs to train (the tutorial's number; training stops earlier once converged)."),
            click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                         help="Where to train: a CUDA GPU if torch sees one (auto), or force cpu/cuda."),
            click.option("--require-gpu", is_flag=True, help="Fail instead of falling back to the CPU when no GPU is visible."),
            click.option("--threads", type=int, default=None, callback=_positive, help="CPU threads for torch (default: torch's choice)."),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random number generator."),
            click.option("--tutorial-settings", is_flag=True,
                         help=f"Exactly the tutorial: all --max-epochs at lr {TUTORIAL_LR}, the model's own train(), "
                              f"{TUTORIAL_NUM_SAMPLES}-sample export (overrides the options below)."),
            click.option("--lr", type=float, default=d["lr"], show_default=True, callback=_positive,
                         help="Starting Adam learning rate; lowered 3x at each plateau down to --lr-min."),
            click.option("--lr-min", type=float, default=d["lr_min"], show_default=True, callback=_positive,
                         help="Lowest learning rate: training stops at the first plateau at this rate."),
            click.option("--stop-tol", type=float, default=d["stop_tol"], show_default=True, callback=_positive,
                         help="Plateau: the window-mean -ELBO improves by less than this (relative) twice in a row."),
            click.option("--stop-window", type=int, default=d["stop_window"], show_default=True, callback=_positive,
                         help="Epochs per window of the plateau test (also how often it is checked)."),
            click.option("--min-epochs", type=int, default=d["min_epochs"], show_default=True,
                         help="Never stop (converged) before this many epochs."),
            click.option("--early-stop/--no-early-stop", default=True, show_default=True,
                         help="Stop at convergence and lower the rate at plateaus; off: all --max-epochs at --lr."),
            click.option("--export", "export_mode", type=click.Choice(["analytic", "sampled"]), default="analytic",
                         show_default=True,
                         help="Posterior summaries from the variational distribution directly, or from --num-samples draws."),
            click.option("--num-samples", type=int, default=TUTORIAL_NUM_SAMPLES, show_default=True, callback=_positive,
                         help="Posterior samples drawn by --export sampled."),
            click.option("--log-every", type=int, default=None, callback=_positive,
                         help="Log a progress line every N epochs (default: 20 lines per run)."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _training_setup(max_epochs, tutorial_settings, lr, lr_min, stop_tol, stop_window, min_epochs, early_stop,
                    export_mode, num_samples):
    """(Plan, fast, analytic, num_samples) from the training options; --tutorial-settings wins."""
    from .training import Plan

    if tutorial_settings:
        return Plan(max_epochs, TUTORIAL_LR, TUTORIAL_LR).fixed(), False, False, TUTORIAL_NUM_SAMPLES
    if lr_min > lr:
        LOG.info("--lr %g is below --lr-min %g: training at one rate, %g", lr, lr_min, lr)
        lr_min = lr
    plan = Plan(max_epochs=max_epochs, lr=lr, lr_min=lr_min, tol=stop_tol, window=stop_window,
                check_every=stop_window, min_epochs=min_epochs)
    return (plan if early_stop else plan.fixed()), True, export_mode == "analytic", num_samples


def _start_training(device: str, require_gpu: bool, threads: int | None, seed: int) -> tuple[str, str]:
    """Threads, seeds and the device; returns (scvi accelerator, device description)."""
    from .runtime import resolve_device, seed_everything, set_threads

    set_threads(threads)
    seed_everything(seed)
    accelerator, description = resolve_device(device, require_gpu)
    LOG.info("training device: %s", description)
    return accelerator, description


def _write_summary(trained, history, device: str, path: Path) -> None:
    """<name>_training.json: epochs, where and why training stopped, device, times, reconstruction accuracy."""
    import json

    from .training import reconstruction_metrics, training_summary

    try:
        qc = reconstruction_metrics(trained.model)
    except Exception as exc:  # noqa: BLE001 - a QC number must never fail a finished training (e.g. upstream #74)
        LOG.warning("reconstruction metrics not computed: %s", exc)
        qc = None
    summary = training_summary(trained.model, history, device, trained.train_seconds, qc, trained.monitor,
                               trained.attempts, trained.export_seconds, trained.export)
    if qc:
        LOG.info("reconstruction accuracy: Pearson r %.3f (log1p %.3f) over %d observations",
                 qc["pearson_r"], qc["pearson_r_log1p"], qc["n_obs_used"])
    path.write_text(json.dumps(summary, indent=2) + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="c2l")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logs.")
@click.option("--pipeline-digest", default=None, hidden=True,
              help="Digest of this package stamped by the pipeline so that -resume notices code changes.")
def cli(verbose: bool, pipeline_digest: str | None) -> None:
    """cell2location-nf: the steps of the cell2location workflow, one subcommand each."""
    from .runtime import package_digest, setup_logging

    setup_logging(verbose)
    if pipeline_digest and pipeline_digest != package_digest():
        LOG.warning(
            "this c2l (%s, package digest %s) is not the pipeline's bin/ (digest %s): a container image built "
            "from other code? Rebuild the image, or results may differ from this version of the pipeline",
            sys.argv[0], package_digest(), pipeline_digest,
        )


@cli.command("read-visium")
@click.option("--sample", required=True, help="Sample id (the samplesheet's `sample`).")
@click.option("--spaceranger-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Space Ranger output folder (or its parent holding outs/).")
@click.option("--h5ad", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A section already in AnnData form, with obsm['spatial'].")
@click.option("--meta", multiple=True, callback=_key_values, help="KEY=VALUE metadata carried into the outputs (repeatable).")
@click.option("--drop-empty-spots", is_flag=True, help="Drop spots without counts instead of failing.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for <sample>.h5ad and <sample>.qc.csv.")
@domain_errors
def read_visium_cmd(sample, spaceranger_dir, h5ad, meta, drop_empty_spots, outdir):
    """Read one Visium section: counts, positions, images; MT genes to obsm['MT']; QC numbers."""
    import pandas as pd

    from .read_visium import load_section
    from .runtime import staged_outputs, write_h5ad

    if (spaceranger_dir is None) == (h5ad is None):
        raise click.UsageError("give exactly one of --spaceranger-dir or --h5ad")
    adata, qc = load_section(sample, spaceranger_dir, h5ad, meta, drop_empty_spots)
    with staged_outputs(outdir) as out:
        write_h5ad(adata, out.path(f"{sample}.h5ad"))
        pd.DataFrame([qc]).to_csv(out.path(f"{sample}.qc.csv"), index=False)


def reference_options(func):
    options = [
        click.option("--reference", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Single-cell reference .h5ad with raw counts in X."),
        click.option("--labels-key", required=True, help="obs column with the cell-type labels."),
        click.option("--batch-key", default=None, help="obs column with the batch (donor, 10x reaction)."),
        click.option("--categorical-covariate-keys", default=None, callback=_csv_list,
                     help="Comma-separated obs columns regressed out as technical covariates."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("filter-reference")
@reference_options
@click.option("--gene-id-column", default=None, help="var column to use as gene ids (the tutorial's GeneID-2); default var_names.")
@click.option("--cell-count-cutoff", type=int, default=5, show_default=True, help="filter_genes: cell_count_cutoff.")
@click.option("--cell-percentage-cutoff2", type=float, default=0.03, show_default=True, help="filter_genes: cell_percentage_cutoff2.")
@click.option("--nonz-mean-cutoff", type=float, default=1.12, show_default=True, help="filter_genes: nonz_mean_cutoff.")
@click.option("--min-cells-per-type", type=int, default=5, show_default=True, callback=_positive,
              help="Fail when a cell type has fewer cells than this.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for reference_filtered.h5ad, reference_filter.png, reference_genes.csv.")
@domain_errors
def filter_reference_cmd(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column,
                         cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff, min_cells_per_type, outdir):
    """Check the reference and keep the genes that pass cell2location's filter_genes."""
    from .filter_reference import filter_reference, genes_table, load_reference
    from .runtime import save_figures, staged_outputs, write_h5ad

    adata = load_reference(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column, min_cells_per_type)
    filtered, figures = filter_reference(adata, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff)
    with staged_outputs(outdir) as out:
        write_h5ad(filtered, out.path("reference_filtered.h5ad"))
        save_figures(figures, out.path("reference_filter.png"))
        genes_table(adata, filtered.var_names).to_csv(out.path("reference_genes.csv"))


@cli.command("train-reference")
@reference_options
@click.option("--batch-size", type=int, default=2500, show_default=True, callback=_positive, help="Cells per minibatch.")
@training_options("reference")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for signatures.csv, reference_model/, plots and the posterior h5ad.")
@domain_errors
def train_reference_cmd(reference, labels_key, batch_key, categorical_covariate_keys, batch_size, max_epochs,
                        device, require_gpu, threads, seed, tutorial_settings, lr, lr_min, stop_tol, stop_window,
                        min_epochs, early_stop, export_mode, num_samples, log_every, outdir):
    """Train the reference regression model and export cell-type signatures."""
    from .filter_reference import load_reference
    from .runtime import staged_outputs, write_h5ad
    from .train_reference import plot_reference_qc, signatures, train_reference
    from .training import history_frame, plot_history

    plan, fast, analytic, num_samples = _training_setup(max_epochs, tutorial_settings, lr, lr_min, stop_tol,
                                                        stop_window, min_epochs, early_stop, export_mode, num_samples)
    adata = load_reference(reference, labels_key, batch_key, categorical_covariate_keys, None, 1)
    accelerator, device_name = _start_training(device, require_gpu, threads, seed)
    trained, adata = train_reference(adata, labels_key, batch_key, categorical_covariate_keys, plan, batch_size,
                                     accelerator, fast, analytic, num_samples, log_every)
    history = history_frame(trained.model)
    with staged_outputs(outdir) as out:
        signatures(adata).to_csv(out.path("signatures.csv"))
        history.to_csv(out.path("reference_history.csv"), index=False)
        _write_summary(trained, history, device_name, out.path("reference_training.json"))
        plot_history(trained.model, out.path("reference_history.png"), skip=20, title="reference regression model",
                     monitor=trained.monitor)
        plot_reference_qc(trained.model, out.path("reference_qc.png"))
        trained.model.save(str(out.path("reference_model")), overwrite=True)
        write_h5ad(adata, out.path("reference_posterior.h5ad"))


@cli.command("map-cells")
@click.argument("sections", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--signatures", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Signatures CSV (genes x cell types) from train-reference or a previous run.")
@click.option("--run-id", default="joint", show_default=True, help="Name of this model (prefix of model outputs).")
@click.option("--n-cells-per-location", type=float, default=30.0, show_default=True, callback=_positive,
              help="Expected cells per spot (sections may override it in their metadata).")
@click.option("--detection-alpha", type=float, default=20.0, show_default=True, callback=_positive,
              help="Regularisation of within-slide detection sensitivity (20 high, 200 low technical variability).")
@training_options("mapping")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the per-section h5ad/CSVs and the model's outputs.")
@domain_errors
def map_cells_cmd(sections, signatures, run_id, n_cells_per_location, detection_alpha, max_epochs, device,
                  require_gpu, threads, seed, tutorial_settings, lr, lr_min, stop_tol, stop_window, min_epochs,
                  early_stop, export_mode, num_samples, log_every, outdir):
    """Map cell types onto the sections with one Cell2location model (all SECTIONS jointly)."""
    import anndata as ad

    from .map_cells import STATS, abundance_table, map_cells, read_signatures, section_result
    from .runtime import staged_outputs, write_h5ad
    from .training import flatness, history_frame, plot_history, plot_qc

    plan, fast, analytic, num_samples = _training_setup(max_epochs, tutorial_settings, lr, lr_min, stop_tol,
                                                        stop_window, min_epochs, early_stop, export_mode, num_samples)
    loaded = {}
    for path in sections:
        adata = ad.read_h5ad(path)
        sample = str(adata.uns.get("c2l_sample", {}).get("sample") or Path(path).name.split(".")[0])
        if sample in loaded:
            raise C2LError("given twice", sample, "sample")
        loaded[sample] = adata
    sig = read_signatures(signatures)
    accelerator, device_name = _start_training(device, require_gpu, threads, seed)
    trained, combined = map_cells(loaded, sig, n_cells_per_location, detection_alpha, plan, accelerator, fast,
                                  analytic, num_samples, log_every)
    model = trained.model
    history = history_frame(model)
    LOG.info("ELBO relative change over the last 10%% of epochs: %.2e", flatness(history))
    with staged_outputs(outdir) as out:
        for sample, section in loaded.items():
            write_h5ad(section_result(section, combined, sample, run_id), out.path(f"{sample}.cell2location.h5ad"))
            for stat in STATS:
                abundance_table(combined, stat, sample).to_csv(out.path(f"{sample}.{stat}_cell_abundance_w_sf.csv"))
        history.to_csv(out.path(f"{run_id}_history.csv"), index=False)
        _write_summary(trained, history, device_name, out.path(f"{run_id}_training.json"))
        plot_history(model, out.path(f"{run_id}_history.png"), skip=max(1, min(1000, len(history) // 10)),
                     title=f"cell2location model '{run_id}'", monitor=trained.monitor)
        plot_qc(model, out.path(f"{run_id}_qc.png"))
        model.save(str(out.path(f"{run_id}_model")), overwrite=True, save_anndata=True)


@cli.command("plot-spatial")
@click.argument("section", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--overlay-cell-types", default=None, callback=_csv_list,
              help="Comma-separated cell types for the overlay map (default: the most abundant --n-overlay).")
@click.option("--n-overlay", type=click.IntRange(1, 7), default=6, show_default=True,
              help="How many of the most abundant cell types the overlay shows when none are named.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the three PNG figures.")
@domain_errors
def plot_spatial_cmd(section, overlay_cell_types, n_overlay, outdir):
    """Spatial maps of one mapped section: q05 per cell type, a multi-type overlay, per-spot pie charts."""
    import anndata as ad

    from .plot_spatial import check_cell_types, plot_abundance_maps, plot_overlay, plot_proportion_pies, top_cell_types
    from .runtime import save_figures, staged_outputs

    adata = ad.read_h5ad(section)
    sample = str(adata.uns.get("c2l_sample", {}).get("sample") or Path(section).name.split(".")[0])
    overlay = overlay_cell_types or top_cell_types(adata, n_overlay)
    check_cell_types(adata, overlay)
    with staged_outputs(outdir) as out:
        save_figures([plot_abundance_maps(adata)], out.path(f"{sample}.q05_abundance.png"))
        save_figures([plot_overlay(adata, overlay)], out.path(f"{sample}.overlay.png"))
        save_figures([plot_proportion_pies(adata)], out.path(f"{sample}.proportions.png"))


@cli.command("versions")
@click.option("--process", default="C2L", show_default=True, help="Process name used as the YAML key.")
def versions_cmd(process):
    """Print the nf-core style versions.yml of the software stack."""
    from .versions import versions_yaml

    click.echo(versions_yaml(process), nl=False)


cli.add_command(testdata.command, name="build-testdata")


def main() -> None:
    cli(prog_name="c2l")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
