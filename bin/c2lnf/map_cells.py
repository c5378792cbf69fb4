"""Step `map_cells`: the Cell2location spatial mapping model over one or several sections.

All sections given are fitted in one joint model (`batch_key = sample`); the pipeline's `per_sample` mode
simply calls this step once per section.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import C2LError
from .genes import looks_ensembl
from . import memory
from .training import Plan, Setup, Trained, train_and_export

LOG = logging.getLogger("c2l.map_cells")
STATS = ("means", "stds", "q05", "q95")
#: locations x genes from which glibc's heap is kept from retaining freed tensors (runtime.limit_heap_retention):
#: 16 MB float32 tensors, where the retention costs GBs and a fresh mmap per tensor costs nothing measurable
HEAP_LIMIT_MIN_ELEMENTS = 4_000_000
#: the fewest spots of a section worth a model (a 1-spot model crashes inside pyro; a handful is no map)
MIN_SPOTS = 10


def read_signatures(path: Path) -> pd.DataFrame:
    """Read and check a signatures CSV: genes (rows) x cell types (columns), finite, non-negative."""
    try:
        table = pd.read_csv(path, index_col=0)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise C2LError(f"cannot read {Path(path).name}: {exc}", "signatures", "signatures") from exc
    if table.shape[0] < 2 or table.shape[1] < 2:
        raise C2LError(
            f"expected genes (rows) x cell types (columns) with at least 2 of each, got shape {table.shape}",
            "signatures",
            "signatures",
        )
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise C2LError(f"non-numeric column(s) {non_numeric[:5]}: every column must be a cell type's expression",
                       "signatures", "signatures")
    values = table.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise C2LError(f"{int((~np.isfinite(values)).sum())} NaN or infinite value(s)", "signatures", "signatures")
    if (values < 0).any():
        raise C2LError("negative expression values; signatures are expected counts per cell type", "signatures", "signatures")
    if table.index.duplicated().any():
        raise C2LError(f"duplicated gene(s), e.g. {table.index[table.index.duplicated()][0]}", "signatures", "signatures")
    table.index = table.index.astype(str)
    table.columns = pd.Index(signature_names(path, table.shape[1]))
    silent = [c for c in table.columns if not (table[c] > 0).any()]
    if silent:
        raise C2LError(f"cell type(s) without any expression: {', '.join(map(repr, silent[:5]))}; a signature of zeros "
                       "cannot be mapped: drop the column(s)", "signatures", "signatures")
    return table


def signature_names(path: Path, n: int) -> list[str]:
    """The cell-type names of a signatures CSV's header as written (pandas renames a repeated name 'B' to 'B.1'),
    refused when two are the same or differ only by spaces ('B' and 'B '); surrounding spaces are dropped."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle))[1:]
    if len(header) != n:   # (cannot happen after read_csv, but never pair names with the wrong columns)
        raise C2LError(f"the header names {len(header)} cell types for {n} columns", "signatures", "signatures")
    seen: dict[str, str] = {}
    for name in header:
        key = " ".join(name.split())
        if key in seen:
            what = (f"cell type {name!r} appears twice" if seen[key] == name
                    else f"cell types {seen[key]!r} and {name!r} differ only by spaces")
            raise C2LError(f"{what}; every column must be a different cell type", "signatures", "signatures")
        seen[key] = name
    return list(seen)


def shared_genes(sections: dict[str, ad.AnnData], signatures: pd.DataFrame) -> pd.Index:
    """Genes present in every section and in the signatures, in the signatures' order."""
    genes = pd.Index(signatures.index)
    for sample, adata in sections.items():
        common = genes.intersection(adata.var_names, sort=False)
        if len(common) == 0:
            hint = ""
            # transposed first: its cell-type index would otherwise pass for symbols against Ensembl ids
            if set(map(str, signatures.columns)) & set(map(str, adata.var_names)):
                hint = " (the signatures look transposed: genes must be rows, cell types columns)"
            elif (case := _case_only_match(genes, adata)) is not None:
                hint = case
            elif looks_ensembl(adata.var_names) != looks_ensembl(signatures.index):
                side = "the section" if looks_ensembl(adata.var_names) else "the reference"
                hint = (f" ({side} uses Ensembl ids and the other side gene symbols: give the reference's Ensembl id "
                        "column with --reference_gene_id_column, or use matching identifiers)")
            raise C2LError(f"no gene in common with the reference signatures{hint}", sample, "genes")
        genes = common
    if len(genes) < 10:
        LOG.warning("only %d genes are shared between the sections and the reference", len(genes))
    return genes


def gene_overlap(sections: dict[str, ad.AnnData], signatures: pd.DataFrame) -> dict[str, dict]:
    """Per section, for the run report: its genes, those it shares with the signatures (exactly and ignoring
    letter case), whether each side looks like Ensembl ids, and which signature genes the section lacks (or, when
    shorter, which it has: `missing_signature_genes` / `shared_signature_genes`; the report's marker check)."""
    sig = set(map(str, signatures.index))
    sig_upper = {g.upper() for g in sig}
    out = {}
    for sample, adata in sections.items():
        names = set(map(str, adata.var_names))
        shared = sig & names
        out[sample] = {"n_genes": len(names), "n_signature_genes": len(sig), "shared": len(shared),
                       "shared_ignoring_case": len(sig_upper & {g.upper() for g in names}),
                       "section_ensembl": bool(looks_ensembl(adata.var_names)),
                       "signatures_ensembl": bool(looks_ensembl(signatures.index))}
        if 2 * len(shared) <= len(sig):
            out[sample]["shared_signature_genes"] = sorted(shared)
        else:
            out[sample]["missing_signature_genes"] = sorted(sig - names)
    return out


def _case_only_match(genes: pd.Index, adata: ad.AnnData) -> str | None:
    """A hint when the genes match only if upper and lower case are ignored (a human reference against a mouse
    section: CD74 vs Cd74), over the section's var_names or, when those are Ensembl ids, its SYMBOL column."""
    candidates = [pd.Index(adata.var_names.astype(str))]
    if "SYMBOL" in adata.var:
        symbols = pd.Index(adata.var["SYMBOL"].astype(str))
        if len(genes.intersection(symbols)) == 0:
            candidates.append(symbols)
    for names in candidates:
        folded = pd.Index(genes.astype(str).str.upper()).intersection(names.str.upper())
        if len(folded):
            first = folded[0]
            ref = next(g for g in genes.astype(str) if g.upper() == first)
            sec = next(g for g in names if g.upper() == first)
            return (f" ({len(folded)} match when upper and lower case are ignored, e.g. {ref} vs {sec}: are the "
                    "reference and the section of different species, e.g. human and mouse?)")
    return None


def combine_sections(sections: dict[str, ad.AnnData], genes: pd.Index) -> ad.AnnData:
    """One AnnData of all sections over the shared genes, `obs['sample']` as the batch."""
    parts = []
    for sample, adata in sections.items():
        part = ad.AnnData(X=adata[:, genes].X.copy(), obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                          var=pd.DataFrame(index=genes))
        part.obs["sample"] = sample
        part.obs_names = [f"{sample}::{b}" for b in part.obs_names]
        parts.append(part)
    combined = ad.concat(parts, join="outer", merge="first") if len(parts) > 1 else parts[0]
    combined.obs["sample"] = pd.Categorical(combined.obs["sample"], categories=list(sections))
    return combined


def map_cells(
    sections: dict[str, ad.AnnData],
    signatures: pd.DataFrame,
    n_cells_per_location: float,
    detection_alpha: dict[str, float],
    plan: Plan,
    accelerator: str,
    fast: bool,
    analytic: bool,
    num_samples: int,
    log_every: int | None = None,
    batch_size: int | None = None,
    data_on_device: str = "off",
    total_locations: int | None = None,
    nonzero_likelihood: bool = True,
) -> tuple[Trained, ad.AnnData]:
    """Fit Cell2location to all sections jointly; returns (Trained, combined AnnData with the posterior).

    `n_cells_per_location` is the model's (one value for all sections), `detection_alpha` one value per section
    (sample -> value). With `plan.fixed()`, `fast=False`, `analytic=False` this is exactly the tutorial's calls.
    `batch_size`: locations per minibatch (None: the tutorial's full batch).

    `total_locations` (a shard of a larger run): the number of locations of the whole run; the ELBO's terms of
    the gene-level parameters are weighted by n / total_locations (see weigh_gene_level_terms).
    """
    from cell2location.models import Cell2location

    missing = [s for s in sections if s not in detection_alpha]
    if missing:
        raise C2LError("no detection_alpha given for this section", missing[0], "detection_alpha")
    alpha = {s: float(detection_alpha[s]) for s in sections}
    genes = shared_genes(sections, signatures)
    combined = combine_sections(sections, genes)
    totals = np.asarray(combined.X.sum(axis=1)).ravel()
    if (totals == 0).any():
        bad = combined.obs.loc[totals == 0, "sample"].value_counts()
        sample = bad.index[0]
        raise C2LError(
            f"{int(bad.iloc[0])} spot(s) have no counts over the {len(genes)} genes shared with the reference "
            "(check that both sides use the same gene identifiers)",
            str(sample),
            "genes",
        )
    if combined.n_obs < 2:
        raise C2LError(f"{combined.n_obs} spot(s) in this model: at least 2 are needed (fewer shards?)",
                       next(iter(sections)), "spots")
    Cell2location.setup_anndata(adata=combined, batch_key="sample")
    alpha_arg = alpha[next(iter(alpha))] if len(set(alpha.values())) == 1 else alpha

    if total_locations is not None and total_locations < combined.n_obs:
        raise C2LError(f"total_locations {total_locations} is below this model's {combined.n_obs} locations",
                       field="total_locations")
    weighted = total_locations is not None and total_locations > combined.n_obs

    def make_model():
        model = Cell2location(
            combined,
            cell_state_df=signatures.loc[genes],
            N_cells_per_location=n_cells_per_location,
            detection_alpha=alpha_arg,
        )
        if weighted:
            weigh_gene_level_terms(model, combined.n_obs / total_locations)
        return model

    if combined.n_obs * len(genes) >= HEAP_LIMIT_MIN_ELEMENTS:
        from .runtime import limit_heap_retention

        limit_heap_retention()
    estimate = memory.estimate_gb(combined.n_obs, len(genes), signatures.shape[1])
    LOG.info("mapping %d section(s): %d spots x %d shared genes x %d cell types, at most %d epochs %s, %s; "
             "estimated peak memory %s", len(sections), combined.n_obs, len(genes), signatures.shape[1],
             plan.max_epochs, "full batch" if batch_size is None else f"in minibatches of {batch_size}", accelerator,
             "n/a (no assets/memory_model.json)" if estimate is None else f"{estimate:.1f} GB")
    trained, combined = train_and_export(make_model, combined, plan, accelerator, batch_size, fast, analytic,
                                         num_samples, combined.n_obs if batch_size is None else batch_size, log_every,
                                         data_on_device, nonzero_likelihood)
    combined.uns["c2l_params"] = {
        "n_cells_per_location": float(n_cells_per_location),
        "detection_alpha": {k: float(v) for k, v in alpha.items()},
        "max_epochs": int(plan.max_epochs),
        "epochs": int(trained.monitor.epoch),
        "n_shared_genes": int(len(genes)),
        "n_locations": int(combined.n_obs),
        "n_cell_types": int(signatures.shape[1]),
        "batch_size": batch_size,
        "memory_estimate_gb": None if estimate is None else round(estimate, 2),
        "export": trained.export,
        "locations_in_run": int(total_locations) if weighted else int(combined.n_obs),
        "location_weight": round(total_locations / combined.n_obs, 6) if weighted else 1.0,
    }
    return trained, combined


def weigh_gene_level_terms(model, weight: float) -> None:
    """Weigh every ELBO term outside the model's location plate (the gene-level parameters: detection efficiency
    m_g, background, overdispersion, their hyperpriors) by `weight`, in the model and in the guide alike.

    A shard of n of a run's N locations fits the objective (n / N) * gene-level terms + its own per-location
    terms, which is the unsharded objective restricted to a random n of the N locations (what Pyro's minibatch
    subsampling estimates, scaled by n / N): the gene-level parameters meet their priors with the weight they
    have in the unsharded model. Unweighted, each of k shards weighs those priors k times more against its
    data; since the abundances' scale trades off against m_g (the counts see their product), the shards' maps
    then drift away from the unsharded model's (benchmarks/README.md, "Shards": on one rate path, 2 unweighted shards of
    4,000 spots ended 0.02-0.03 apart on the ground-truth metrics, weighted ones within 0.008).
    """
    from pyro.poutine.messenger import Messenger

    plate = "obs_plate"  # cell2location's location plate (create_plates)

    class GeneLevelWeight(Messenger):
        def _process_message(self, msg):
            if msg["type"] == "sample" and not any(f.name == plate for f in msg["cond_indep_stack"]):
                msg["scale"] = weight * msg["scale"]

    for module in (model.module.model, model.module.guide):
        forward = module.forward

        def weighted(*args, _forward=forward, **kwargs):
            with GeneLevelWeight():
                return _forward(*args, **kwargs)

        module.forward = weighted  # the instance's forward: what nn.Module.__call__ runs


def abundance_table(combined: ad.AnnData, stat: str, sample: str | None = None) -> pd.DataFrame:
    """Spots x cell types table of one posterior statistic (column prefix removed, barcodes as index)."""
    key = f"{stat}_cell_abundance_w_sf"
    table = combined.obsm[key]
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table, index=combined.obs_names)
    table = table.copy()
    table.columns = [re.sub(rf"^{stat}cell_abundance_w_sf_", "", str(c)) for c in table.columns]
    if sample is not None:
        table = table.loc[(combined.obs["sample"] == sample).to_numpy()]
        table.index = [i.split("::", 1)[1] for i in table.index]
    table.index.name = "barcode"
    return table


def section_result(section: ad.AnnData, combined: ad.AnnData, sample: str, run_id: str) -> ad.AnnData:
    """The section (all its genes) with the four abundance tables in obsm and the model's settings in uns."""
    out = section.copy()
    for stat in STATS:
        table = abundance_table(combined, stat, sample).loc[out.obs_names]
        table.columns = [f"{stat}cell_abundance_w_sf_{c}" for c in table.columns]
        out.obsm[f"{stat}_cell_abundance_w_sf"] = table
    out.uns["cell2location"] = {
        "factor_names": list(combined.uns["mod"]["factor_names"]),
        "model_run": run_id,
        **{k: v for k, v in combined.uns["c2l_params"].items() if k != "detection_alpha"},
        "detection_alpha": combined.uns["c2l_params"]["detection_alpha"][sample],
    }
    return out


def shard_tag(index: int, count: int) -> str:
    """The name of shard `index` (1-based) of `count`: 'shard-02-of-12'."""
    return f"shard-{index:0{len(str(count))}d}-of-{count}"


def run(sections: dict[str, Path], signatures: Path, n_cells_per_location: float, detection_alpha: dict[str, float],
        setup: Setup, outdir: Path, prefix: str, shard: tuple[int, int] | None = None, shard_seed: int = 0,
        batch_size: int | None = None) -> None:
    """The step: one model over `sections` (sample -> h5ad); writes <sample>.cell2location.h5ad and the four
    <sample>.<stat>_cell_abundance_w_sf.csv per section, and <prefix>_model/, <prefix>_history.csv/png,
    <prefix>_training.json, <prefix>_qc.png into `outdir` (all or none).

    `shard=(i, k)`: this model fits only shard i (1-based) of k of every section's spots (memory.shard_of_spots,
    seeded by `shard_seed`: every shard task of a run agrees on the split); the per-section tables are then named
    <sample>.<shard-tag>.<stat>_cell_abundance_w_sf.csv and no per-section h5ad is written (merge-shards writes
    the sections' outputs once all shards are done)."""
    from .runtime import staged_outputs, write_h5ad
    from .training.stopping import flatness
    from .training.summary import history_frame, plot_history, plot_qc, write_summary

    loaded = {sample: ad.read_h5ad(path) for sample, path in sections.items()}
    for sample, adata in loaded.items():
        if adata.n_obs < MIN_SPOTS:
            raise C2LError(f"{adata.n_obs} spot(s): a section needs at least {MIN_SPOTS} spots to be mapped", sample,
                           "spots")
    shard_info = None
    total_locations = None
    if shard is not None:
        index, count = shard
        if not 1 <= index <= count:
            raise C2LError(f"shard {index} of {count}: the index must be between 1 and {count}", field="shard")
        kept = {}
        for sample, adata in loaded.items():
            mask = memory.shard_of_spots(sample, adata.n_obs, count, shard_seed) == index - 1
            if not mask.any():
                LOG.warning("section %s has %d spots: none falls in shard %d of %d", sample, adata.n_obs, index, count)
                continue
            kept[sample] = adata[mask].copy()
        if not kept:
            raise C2LError(f"shard {index} of {count} holds no spot of any section", field="shard")
        LOG.info("shard %d of %d: %s", index, count, ", ".join(f"{s} {a.n_obs} of {loaded[s].n_obs} spots"
                                                              for s, a in kept.items()))
        total_locations = sum(int(a.n_obs) for a in loaded.values())
        shard_info = {"index": index, "count": count, "seed": shard_seed,
                      "spots": {s: int(a.n_obs) for s, a in kept.items()}, "locations_in_run": total_locations}
        loaded = kept
    sig = read_signatures(signatures)
    trained, combined = map_cells(loaded, sig, n_cells_per_location, detection_alpha, setup.plan, setup.accelerator,
                                  setup.fast, setup.analytic, setup.num_samples, setup.log_every, batch_size,
                                  setup.data_on_device, total_locations, setup.likelihood == "nonzero")
    model = trained.model
    history = history_frame(model)
    LOG.info("ELBO relative change over the last 10%% of epochs: %.2e", flatness(history))
    params = combined.uns["c2l_params"]
    extra = {"model": {k: params[k] for k in ("n_locations", "n_shared_genes", "n_cell_types", "batch_size",
                                              "n_cells_per_location", "detection_alpha", "locations_in_run",
                                              "location_weight")},
             "memory_estimate_gb": params["memory_estimate_gb"], "shard": shard_info,
             "gene_overlap": gene_overlap(loaded, sig)}
    tag = "" if shard is None else f".{shard_tag(*shard)}"
    with staged_outputs(outdir) as out:
        for sample, section in loaded.items():
            if shard is None:
                write_h5ad(section_result(section, combined, sample, prefix), out.path(f"{sample}.cell2location.h5ad"))
            for stat in STATS:
                abundance_table(combined, stat, sample).to_csv(out.path(f"{sample}{tag}.{stat}_cell_abundance_w_sf.csv"))
        history.to_csv(out.path(f"{prefix}_history.csv"), index=False)
        write_summary(trained, history, setup.device, out.path(f"{prefix}_training.json"), extra)
        plot_history(model, out.path(f"{prefix}_history.png"), skip=max(1, min(1000, len(history) // 10)),
                     title=f"cell2location model '{prefix}'", monitor=trained.monitor)
        plot_qc(model, out.path(f"{prefix}_qc.png"))
        model.save(str(out.path(f"{prefix}_model")), overwrite=True, save_anndata=True)
