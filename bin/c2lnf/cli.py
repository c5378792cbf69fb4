"""The `c2l` command line: one click group, one subcommand per pipeline step.

The click layer parses options and reports; the science lives in the step modules' plain functions.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import __version__
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


def _sections(sections: dict[str, str]) -> dict[str, Path]:
    paths = {}
    for sample, path in sections.items():
        path = Path(path)
        if not path.is_file():
            raise click.BadParameter(f"{sample}: no such file: {path}", param_hint="--section")
        paths[sample] = path
    return paths


def _shard(ctx, param, value):
    if value is None:
        return None
    index, sep, count = value.partition("/")
    try:
        i, k = int(index), int(count)
    except ValueError:
        raise click.BadParameter(f"'{value}': expected I/K, e.g. 2/8") from None
    if not sep or k < 2 or not 1 <= i <= k:
        raise click.BadParameter(f"'{value}': expected I/K with K >= 2 and 1 <= I <= K")
    return i, k


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
        if key.strip() in out:
            raise click.BadParameter(f"'{key.strip()}' given twice")
        out[key.strip()] = value
    return out


# The pipeline's defaults live in nextflow.config (and nextflow_schema.json), and the pipeline passes every value.
# For running a step by hand the CLI shares this one constant, keyed by the params' names; tests/test_cli.py
# checks that it equals nextflow.config.
DEFAULTS = {
    "cell_count_cutoff": 5, "cell_percentage_cutoff2": 0.03, "nonz_mean_cutoff": 1.12, "min_cells_per_type": 5,
    "ref_max_epochs": 250, "ref_batch_size": 2500, "ref_lr": 0.002, "ref_lr_min": 0.002, "ref_stop_tol": 1e-3,
    "ref_stop_window": 10, "ref_min_epochs": 50, "ref_num_samples": 1000,
    "n_cells_per_location": 30, "detection_alpha": 20,
    "map_max_epochs": 30000, "map_lr": 0.03, "map_lr_min": 0.002, "map_stop_tol": 1e-4, "map_stop_window": 100,
    "map_min_epochs": 500, "map_num_samples": 1000, "map_level_epochs": 2000,
    "n_overlay": 6, "seed": 0,
}


def training_options(model: str):
    """Options shared by the two training steps; `model` ('reference' or 'mapping') picks the defaults."""
    from .training import TUTORIAL_LR, TUTORIAL_NUM_SAMPLES

    prefix = {"reference": "ref", "mapping": "map"}[model]
    d = {key: DEFAULTS[f"{prefix}_{key}"] for key in
         ("max_epochs", "lr", "lr_min", "stop_tol", "stop_window", "min_epochs", "num_samples")}

    def decorate(func):
        options = [
            click.option("--max-epochs", type=int, default=d["max_epochs"], show_default=True, callback=_positive,
                         help="Most epochs to train (the tutorial's number; training stops earlier once converged)."),
            click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                         help="Where to train: a CUDA GPU if torch sees one (auto), or force cpu/cuda."),
            click.option("--require-gpu", is_flag=True, help="Fail instead of falling back to the CPU when no GPU is visible."),
            click.option("--threads", type=int, default=None, callback=_positive, help="CPU threads for torch (default: torch's choice)."),
            click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
                         help="Seed for every random number generator."),
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
            click.option("--num-samples", type=int, default=d["num_samples"], show_default=True, callback=_positive,
                         help="Posterior samples drawn by --export sampled."),
            click.option("--log-every", type=int, default=None, callback=_positive,
                         help="Log a progress line every N epochs (default: 20 lines per run)."),
            click.option("--data-on-device", type=click.Choice(["auto", "on", "off"]), default="auto",
                         show_default=True,
                         help="Minibatched training: copy the whole data set to the training device once (dense) and "
                              "draw the minibatches there; auto: on a GPU when it fits a quarter of its free memory."),
            click.option("--likelihood", type=click.Choice(["nonzero", "dense"]), default="nonzero",
                         show_default=True,
                         help="How the counts' GammaPoisson log-density is computed: special functions on the "
                              "nonzero counts only (the same value and gradients), or Pyro's dense one "
                              "(--tutorial-settings always uses Pyro's)."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _training(device, require_gpu, threads, seed, **options):
    """The training Setup of a step from its training options, with threads, seeds and the device set."""
    from .training import setup_from_options, start

    return start(setup_from_options(**options), device, require_gpu, threads, seed)


def _prefix_option(default: str | None, what: str):
    return click.option("--prefix", default=default, show_default=default is not None,
                        help=f"Prefix of the output file names ({what}).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="c2l")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logs.")
@click.option("--warnings-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append every warning to this file (the pipeline shows them in its console and report).")
@click.option("--pipeline-digest", default=None, hidden=True,
              help="Digest of this package stamped by the pipeline so that -resume notices code changes.")
def cli(verbose: bool, warnings_file: Path | None, pipeline_digest: str | None) -> None:
    """cell2location-nf: the steps of the cell2location workflow, one subcommand each."""
    from .runtime import package_digest, setup_logging

    setup_logging(verbose, warnings_file)
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
@click.option("--obs", multiple=True, callback=_key_values,
              help="KEY=VALUE descriptive metadata written as a constant obs column (repeatable).")
@click.option("--drop-empty-spots", is_flag=True, help="Drop spots without counts instead of failing.")
@click.option("--layer", default=None,
              help="With --h5ad: the layer holding the raw counts when X does not, or 'raw' for .raw.X (with .raw.var).")
@click.option("--bin-size", type=click.Choice(["8", "16"]), default=None,
              help="Visium HD (Space Ranger >= 3): read binned_outputs/square_0NNum at this bin size in um [default for HD: 16].")
@_prefix_option(None, "default: the sample id")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for <prefix>.h5ad and <prefix>.qc.csv.")
@domain_errors
def read_visium_cmd(sample, spaceranger_dir, h5ad, obs, drop_empty_spots, layer, bin_size, prefix, outdir):
    """Read one Visium section: counts, positions, images; MT genes to obsm['MT']; QC numbers."""
    from .read_visium import run

    if (spaceranger_dir is None) == (h5ad is None):
        raise click.UsageError("give exactly one of --spaceranger-dir or --h5ad")
    if layer and spaceranger_dir is not None:
        raise click.UsageError("--layer is for --h5ad sections (a Space Ranger matrix holds raw counts)")
    run(sample, spaceranger_dir, h5ad, obs, drop_empty_spots, outdir, prefix or sample,
        None if bin_size is None else int(bin_size), layer)


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
@click.option("--layer", default=None,
              help="The layer holding the raw counts when X does not, or 'raw' for .raw.X with .raw.var (CELLxGENE).")
@click.option("--cell-count-cutoff", type=int, default=DEFAULTS["cell_count_cutoff"], show_default=True,
              help="filter_genes: cell_count_cutoff.")
@click.option("--cell-percentage-cutoff2", type=float, default=DEFAULTS["cell_percentage_cutoff2"], show_default=True,
              help="filter_genes: cell_percentage_cutoff2.")
@click.option("--nonz-mean-cutoff", type=float, default=DEFAULTS["nonz_mean_cutoff"], show_default=True,
              help="filter_genes: nonz_mean_cutoff.")
@click.option("--min-cells-per-type", type=int, default=DEFAULTS["min_cells_per_type"], show_default=True, callback=_positive,
              help="Fail when a cell type has fewer cells than this.")
@_prefix_option("reference", "<prefix>_filtered.h5ad, <prefix>_filter.png, <prefix>_genes.csv")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the outputs.")
@domain_errors
def filter_reference_cmd(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column, layer,
                         cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff, min_cells_per_type, prefix, outdir):
    """Check the reference and keep the genes that pass cell2location's filter_genes."""
    from .filter_reference import run

    run(reference, labels_key, batch_key, categorical_covariate_keys, gene_id_column, cell_count_cutoff,
        cell_percentage_cutoff2, nonz_mean_cutoff, min_cells_per_type, outdir, prefix, layer)


@cli.command("train-reference")
@reference_options
@click.option("--batch-size", type=int, default=DEFAULTS["ref_batch_size"], show_default=True, callback=_positive,
              help="Cells per minibatch.")
@training_options("reference")
@_prefix_option("reference", "<prefix>_model/, <prefix>_training.json, ...; signatures.csv keeps its name")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for signatures.csv, the model, plots and the posterior h5ad.")
@domain_errors
def train_reference_cmd(reference, labels_key, batch_key, categorical_covariate_keys, batch_size, device, require_gpu,
                        threads, seed, prefix, outdir, **options):
    """Train the reference regression model and export cell-type signatures."""
    from .train_reference import run

    from .training.stopping import REF_FLAT_TOL

    setup = _training(device, require_gpu, threads, seed, flat_tol=REF_FLAT_TOL, **options)
    run(reference, labels_key, batch_key, categorical_covariate_keys, batch_size, setup, outdir, prefix)


@cli.command("map-cells")
@click.option("--section", "sections", multiple=True, required=True, callback=_key_values,
              help="SAMPLE=PATH of a read-visium h5ad (repeatable: all sections are fitted in one model).")
@click.option("--signatures", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Signatures CSV (genes x cell types) from train-reference or a previous run.")
@click.option("--n-cells-per-location", type=float, default=DEFAULTS["n_cells_per_location"], show_default=True,
              callback=_positive,
              help="Expected cells per spot (one value for the model).")
@click.option("--detection-alpha", "detection_alpha", multiple=True, default=(str(DEFAULTS["detection_alpha"]),),
              show_default=True,
              help="Regularisation of within-slide detection sensitivity (20 high, 200 low technical variability): "
                   "VALUE for every section, or SAMPLE=VALUE per section (repeatable).")
@click.option("--batch-size", type=int, default=None, callback=_positive,
              help="Locations per minibatch (default: all, the tutorial's full batch); for models that cannot fit.")
@click.option("--shard", default=None, callback=_shard,
              help="I/K: fit only shard I of K of every section's spots (a random split stratified by section, "
                   "seeded by --seed); merge the K shards with merge-shards.")
@click.option("--level-epochs", type=click.IntRange(min=0), default=DEFAULTS["map_level_epochs"], show_default=True,
              help="Epochs at each learning rate above --lr-min: the rate falls at fixed epochs, so every model "
                   "(another seed, every shard of a run) takes the same path and the abundances' scale, which "
                   "moves with the time spent at the high rate, is the same. 0: at plateaus of the -ELBO (a path "
                   "that depends on its noise).")
@training_options("mapping")
@_prefix_option("joint", "the model's name: <prefix>_model/, <prefix>_training.json, ...")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the per-section h5ad/CSVs and the model's outputs.")
@domain_errors
def map_cells_cmd(sections, signatures, n_cells_per_location, detection_alpha, batch_size, shard, level_epochs, device,
                  require_gpu, threads, seed, prefix, outdir, **options):
    """Map cell types onto the sections with one Cell2location model (all --section's jointly)."""
    from .map_cells import run

    paths = _sections(sections)
    alpha = _per_section("--detection-alpha", detection_alpha, list(paths))
    setup = _training(device, require_gpu, threads, seed, level_epochs=level_epochs, **options)
    run(paths, signatures, n_cells_per_location, alpha, setup, outdir, prefix, shard=shard, shard_seed=seed,
        batch_size=batch_size)


@cli.command("merge-shards")
@click.option("--section", "sections", multiple=True, required=True, callback=_key_values,
              help="SAMPLE=PATH of a read-visium h5ad of the model (repeatable).")
@click.option("--shards", "count", type=int, required=True, help="K: the number of shards the model was split into.")
@click.option("--shard-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder holding the K shards' tables, _training.json and _history.csv.")
@_prefix_option("joint", "the model's name, as given to map-cells without the shard tag")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the per-section h5ad/CSVs and the model's summary.")
@domain_errors
def merge_shards_cmd(sections, count, shard_dir, prefix, outdir):
    """Merge the K shards of one sharded map-cells model into per-section outputs (as if unsharded)."""
    from .merge_shards import run

    run(_sections(sections), shard_dir, count, outdir, prefix)


def _per_section(name: str, values: tuple[str, ...], samples: list[str]) -> dict[str, float]:
    """VALUE (every section) or SAMPLE=VALUE items -> {sample: positive float} for every sample."""
    out: dict[str, float] = {}
    for item in values:
        sample, _, raw = item.rpartition("=")
        targets = [sample] if sample else samples
        if sample and sample not in samples:
            raise click.BadParameter(f"'{item}': no --section named {sample}", param_hint=name)
        try:
            value = float(raw)
        except ValueError:
            raise click.BadParameter(f"'{item}': '{raw}' is not a number", param_hint=name) from None
        if not value > 0 or value == float("inf"):
            raise click.BadParameter(f"'{item}': must be > 0", param_hint=name)
        out.update({s: value for s in targets})
    missing = [s for s in samples if s not in out]
    if missing:
        raise click.BadParameter(f"no value for section(s) {', '.join(missing)}", param_hint=name)
    return out


@cli.command("plot-spatial")
@click.argument("section", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample", required=True, help="Sample id of the section (named in errors).")
@click.option("--overlay-cell-types", default=None, callback=_csv_list,
              help="Comma-separated cell types for the overlay map (default: the most abundant --n-overlay).")
@click.option("--n-overlay", type=click.IntRange(1, 7), default=DEFAULTS["n_overlay"], show_default=True,
              help="How many of the most abundant cell types the overlay shows when none are named.")
@_prefix_option(None, "default: the sample id")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the three PNG figures.")
@domain_errors
def plot_spatial_cmd(section, sample, overlay_cell_types, n_overlay, prefix, outdir):
    """Spatial maps of one mapped section: q05 per cell type, a multi-type overlay, per-spot pie charts."""
    from .plot_spatial import run

    run(section, sample, overlay_cell_types, n_overlay, outdir, prefix or sample)


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, e.g. 5,10,15, got '{value}'") from None


@cli.command("regions")
@click.option("--section", "sections", multiple=True, required=True, callback=_key_values,
              help="SAMPLE=PATH of a mapped <sample>.cell2location.h5ad (repeatable: all are clustered together).")
@click.option("--n-neighbors", type=click.IntRange(2, None), default=15, show_default=True,
              help="Neighbours of the k-NN graph on the q05 abundances (the tutorial's 15).")
@click.option("--resolution", type=click.FloatRange(0, None, min_open=True), default=1.1, show_default=True,
              help="Leiden resolution (the tutorial's 1.1): higher, more regions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-NN graph and Leiden.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for regions.csv, regions_composition.csv/.png and <sample>.regions.png.")
@domain_errors
def regions_cmd(sections, n_neighbors, resolution, seed, outdir):
    """Tissue regions: Leiden clustering of the spots on their q05 abundances; maps and per-region composition."""
    from .regions import run

    run(_sections(sections), n_neighbors, resolution, seed, outdir)


@cli.command("colocation")
@click.option("--section", "sections", multiple=True, required=True, callback=_key_values,
              help="SAMPLE=PATH of a mapped <sample>.cell2location.h5ad (repeatable: all are factorised together).")
@click.option("--n-factors", required=True, callback=_int_list,
              help="Comma-separated numbers of factors, each fitted (the tutorial sweeps 5..30).")
@click.option("--n-restarts", type=click.IntRange(1, None), default=3, show_default=True,
              help="NMF restarts per factor count (the tutorial's 3); their agreement is the stability check.")
@click.option("--n-iter", type=click.IntRange(1, None), default=10000, show_default=True,
              help="Maximum NMF iterations (the tutorial's 10,000).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the NMF initialisation.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for one n_fact<k>/ per number of factors.")
@domain_errors
def colocation_cmd(sections, n_factors, n_restarts, n_iter, seed, outdir):
    """Co-location of cell types: NMF of the q05 abundances (cell2location.run_colocation), per factor count."""
    from .colocation import run

    run(_sections(sections), n_factors, n_restarts, n_iter, seed, outdir)


def _folder(ctx, param, value):
    if value is not None and not value.is_dir():
        return None  # absent input (a step that did not run): reported as missing
    return value


@cli.command("report")
@click.option("--sections", type=click.Path(path_type=Path), default=None, callback=_folder,
              help="Folder with READ_VISIUM's <sample>.qc.csv.")
@click.option("--reference", type=click.Path(path_type=Path), default=None, callback=_folder,
              help="Folder with reference_genes.csv, reference_training.json, reference_history.csv (any of them).")
@click.option("--models", type=click.Path(path_type=Path), default=None, callback=_folder,
              help="Folder with each mapping model's <run>_training.json and <run>_history.csv.")
@click.option("--figures", type=click.Path(path_type=Path), default=None, callback=_folder,
              help="Folder with PLOT_SPATIAL's PNGs.")
@click.option("--versions", "versions_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="software_versions.yml of the run.")
@click.option("--params", "params_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The run's parameters as JSON.")
@click.option("--expected-sections", default=None, callback=_csv_list,
              help="Comma-separated section ids of the run: those without results are named in the report.")
@click.option("--title", default="cell2location-nf", show_default=True, help="The report's title.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the MultiQC custom content, multiqc_config.yaml and verdicts.json.")
@domain_errors
def report_cmd(sections, reference, models, figures, versions_file, params_json, expected_sections, title, outdir):
    """MultiQC custom content for one run: QC tables, PASS/WARN/FAIL verdicts per model, -ELBO curves, maps."""
    from .report import run

    run(sections, reference, models, figures, versions_file, params_json, expected_sections or [], outdir, title)


@cli.command("versions")
@click.option("--process", default="C2L", show_default=True, help="Process name used as the YAML key.")
def versions_cmd(process):
    """Print the nf-core style versions.yml of the software stack."""
    from .versions import versions_yaml

    click.echo(versions_yaml(process), nl=False)


def main() -> None:
    from .runtime import install_stop_handlers

    install_stop_handlers()
    cli(prog_name="c2l")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
