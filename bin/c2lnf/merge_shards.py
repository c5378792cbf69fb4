"""Step `merge_shards`: the shards of one sharded mapping model back into per-section outputs.

A model too large for one task is fitted as k shards (map-cells --shard i/k), each over a random subset of every
section's spots. This step puts the shards' abundance tables back together and writes exactly what an unsharded
map-cells writes per section (<sample>.cell2location.h5ad, <sample>.<stat>_cell_abundance_w_sf.csv, spots in the
section's order), with the shard of every spot in `obs['c2l_shard']`; the model's <prefix>_training.json,
<prefix>_history.csv and <prefix>_history.png describe all shards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import C2LError
from .map_cells import STATS, shard_tag
from .training.stopping import stop_kind

LOG = logging.getLogger("c2l.merge_shards")


def read_shards(sample: str, shard_dir: Path, count: int) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """The section's four tables over all shards (barcodes as index) and each barcode's shard (1-based)."""
    tables: dict[str, list[pd.DataFrame]] = {stat: [] for stat in STATS}
    shard_of: list[pd.Series] = []
    for index in range(1, count + 1):
        tag = shard_tag(index, count)
        for stat in STATS:
            path = shard_dir / f"{sample}.{tag}.{stat}_cell_abundance_w_sf.csv"
            if not path.exists():
                if stat == STATS[0]:  # a section smaller than the number of shards is absent from some
                    LOG.warning("%s: no spots in %s", sample, tag)
                    break
                raise C2LError(f"{path.name} is missing while {sample}.{tag}.{STATS[0]}... exists", sample, "shard")
            table = pd.read_csv(path, index_col=0)
            table.index = table.index.astype(str)
            tables[stat].append(table)
            if stat == STATS[0]:
                shard_of.append(pd.Series(index, index=table.index))
    if not shard_of:
        raise C2LError(f"no shard holds any spot of this section (looked for {sample}.shard-*.csv in {shard_dir})",
                       sample, "shard")
    merged = {stat: pd.concat(parts) for stat, parts in tables.items()}
    return merged, pd.concat(shard_of)


def merge_section(section: ad.AnnData, sample: str, tables: dict[str, pd.DataFrame], shard_of: pd.Series,
                  uns: dict) -> tuple[ad.AnnData, dict[str, pd.DataFrame]]:
    """The section with the merged tables in obsm (section order), obs['c2l_shard'] and uns['cell2location']."""
    spots = pd.Index(section.obs_names.astype(str))
    dup = shard_of.index[shard_of.index.duplicated()]
    if len(dup):
        raise C2LError(f"spot {dup[0]} is in more than one shard ({len(dup)} such spots)", sample, "shard")
    missing = spots.difference(shard_of.index)
    extra = shard_of.index.difference(spots)
    if len(missing) or len(extra):
        what = f"{len(missing)} spot(s) in no shard, e.g. {missing[0]}" if len(missing) else \
            f"{len(extra)} shard spot(s) not in the section, e.g. {extra[0]}"
        raise C2LError(f"the shards do not cover the section exactly: {what}", sample, "shard")
    out = section.copy()
    ordered = {}
    for stat, table in tables.items():
        table = table.loc[spots]
        table.index.name = "barcode"
        ordered[stat] = table
        obsm = table.copy()
        obsm.index = out.obs_names
        obsm.columns = [f"{stat}cell_abundance_w_sf_{c}" for c in table.columns]
        out.obsm[f"{stat}_cell_abundance_w_sf"] = obsm
    out.obs["c2l_shard"] = shard_of.loc[spots].to_numpy()
    out.uns["cell2location"] = {"factor_names": list(map(str, tables[STATS[0]].columns)), **uns}
    return out, ordered


def short_reason(summary: dict) -> str:
    """How a shard's training ended, in a word or two, for a legend."""
    kind = stop_kind(summary) or "done"
    return "max epochs" if kind == "max_epochs" else kind


def plot_shard_histories(histories: dict[str, pd.DataFrame], summaries: dict[str, dict], path: Path,
                         title: str) -> Path:
    """-ELBO per epoch of every shard in one figure (first 10 % of each left out), with the epochs at which the
    learning rate was lowered (grey, as in an unsharded model's plot) and where and why each shard stopped."""
    import matplotlib.pyplot as plt

    from .runtime import save_figures

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps: dict[int, float] = {}
    last = 0
    for i, (tag, h) in enumerate(histories.items()):
        s = summaries.get(tag, {})
        skip = min(1000, len(h) // 10)
        part = h.iloc[skip:]
        color = plt.cm.tab10(i % 10) if len(histories) <= 10 else plt.cm.viridis(0.85 * i / (len(histories) - 1))
        reason = short_reason(s)
        ax.plot(part["epoch"], part["elbo_train"], lw=0.8, color=color,
                label=f"{tag}: {s.get('epochs', len(h))} ep., {reason}")
        stopped = s.get("stopped_epoch")
        if stopped is not None and len(part):
            ax.plot([stopped], [part["elbo_train"].iloc[-1]], marker="|", ms=14, mew=2, color="black",
                    zorder=5)
        last = max(last, stopped or (int(h["epoch"].iloc[-1]) if len(h) else 0))
        for event in s.get("lr_events") or []:
            steps.setdefault(int(event["epoch"]), float(event["lr"]))
    for epoch, lr in sorted(steps.items()):
        ax.axvline(epoch, color="0.6", ls=":", lw=1)
        ax.annotate(f"lr {lr:.3g}", (epoch, 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color="0.4")
    if last:
        ax.set_xlim(0, last * 1.03)
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO loss")
    if len(histories) <= 12:
        ax.legend(fontsize=7, frameon=False, loc="lower left")  # the curves fall from upper left
    ax.set_title(f"{title}\n{len(histories)} shards (one model each); black bar: where each stopped", fontsize=10)
    return save_figures([fig], path)


def run(sections: dict[str, Path], shard_dir: Path, count: int, outdir: Path, prefix: str) -> None:
    """The step: `sections` (sample -> read-visium h5ad) and the k shards' outputs in `shard_dir` (their tables
    <sample>.<tag>.<stat>_..., <prefix>.<tag>_training.json and _history.csv) -> per-section outputs and the
    model's summary, history table and plot in `outdir` (all or none)."""
    from .runtime import staged_outputs, write_h5ad

    if count < 2:
        raise C2LError(f"--shards {count}: a sharded model has at least 2 shards", field="shards")
    tags = [shard_tag(i, count) for i in range(1, count + 1)]
    summaries, histories = {}, {}
    for tag in tags:
        for kind in ("training.json", "history.csv"):
            if not (shard_dir / f"{prefix}.{tag}_{kind}").exists():
                raise C2LError(f"{prefix}.{tag}_{kind} is missing from {shard_dir}", prefix, "shard")
        summaries[tag] = json.loads((shard_dir / f"{prefix}.{tag}_training.json").read_text())
        histories[tag] = pd.read_csv(shard_dir / f"{prefix}.{tag}_history.csv")
    first = summaries[tags[0]].get("model", {})
    with staged_outputs(outdir) as out:
        for sample, path in sections.items():
            section = ad.read_h5ad(path)
            tables, shard_of = read_shards(sample, shard_dir, count)
            alpha = first.get("detection_alpha", {}).get(sample)
            uns = {"model_run": prefix, "n_shards": count, "n_cells_per_location": first.get("n_cells_per_location"),
                   "detection_alpha": alpha, "epochs": [summaries[t]["epochs"] for t in tags],
                   "export": summaries[tags[0]].get("export")}
            merged, ordered = merge_section(section, sample, tables, shard_of, uns)
            write_h5ad(merged, out.path(f"{sample}.cell2location.h5ad"))
            for stat, table in ordered.items():
                table.to_csv(out.path(f"{sample}.{stat}_cell_abundance_w_sf.csv"))
            LOG.info("%s: %d spots from %d shards (%s)", sample, merged.n_obs, count,
                     ", ".join(str(n) for n in np.bincount(merged.obs["c2l_shard"], minlength=count + 1)[1:]))
        history = pd.concat([h.assign(shard=t) for t, h in histories.items()], ignore_index=True)
        history.to_csv(out.path(f"{prefix}_history.csv"), index=False)
        stops = {t: f"{s.get('epochs')} epochs, {s.get('stop_reason') or 'done'}" for t, s in summaries.items()}
        plot_shard_histories(histories, summaries, out.path(f"{prefix}_history.png"),
                             f"cell2location model '{prefix}'")
        n_loc = [s.get("model", {}).get("n_locations") for s in summaries.values()]
        est = [s.get("memory_estimate_gb") for s in summaries.values()]
        summary = {
            "sharded": True,
            "n_shards": count,
            "n_locations": int(sum(x or 0 for x in n_loc)),
            "locations_per_shard": n_loc,
            "memory_estimate_gb_per_shard": est,
            "epochs": [s.get("epochs") for s in summaries.values()],
            "stopped": stops,
            "train_seconds": round(sum(s.get("train_seconds") or 0 for s in summaries.values()), 1),
            "final_elbo": [s.get("final_elbo") for s in summaries.values()],
            "device": summaries[tags[0]].get("device"),
            "shards": summaries,
        }
        (out.path(f"{prefix}_training.json")).write_text(json.dumps(summary, indent=2) + "\n")
