"""Step `report`: what a user needs to judge a run, as MultiQC custom content (one report per run).

Reads what the other steps wrote (staged by the REPORT process into folders, so that names cannot collide):

- `sections/`: READ_VISIUM's `<sample>.qc.csv`;
- `reference/`: FILTER_REFERENCE's `reference_genes.csv`, TRAIN_REFERENCE's `reference_training.json` (with
  cells per type and signature agreement) and `reference_history.csv`;
- `models/`: every mapping model's `<run>_training.json` (with each section's gene overlap) and
  `<run>_history.csv` (unsharded or merged);
- `figures/`: PLOT_SPATIAL's PNGs; `versions.yml` and `params.json`.

Writes into `outdir` the custom-content files MultiQC turns into sections (`*_mqc.yaml`, `*_mqc.png`,
`software_mqc_versions.yml`), `multiqc_config.yaml` (title, order, no network) and `verdicts.json`: for each model
whether it converged, its reconstruction accuracy and, for the reference, how well its signatures agree with
the per-type means of the data, each PASS / WARN / FAIL against the thresholds in `THRESHOLDS` (documented in
docs/output.md with the runs they were chosen from). Whatever is missing (a step that failed or was skipped) is
reported as missing; the report is still written.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .markers import MIN_KEPT, MIN_KEPT_WARN, N_MARKERS, marker_check, markers_from_table
from .training.stopping import stop_kind

LOG = logging.getLogger("c2l.report")

#: PASS at or beyond `pass`, WARN at or beyond `warn`, else FAIL. `higher` says which way is better.
THRESHOLDS = {
    # |relative change of the -ELBO over the last 10 % of epochs|; runs stopped by the rule measured 1.8e-4 - 2.1e-4,
    # the test profile's reference (250 one-minibatch epochs) 9.8e-3, a 12-epoch reference (far from converged) 1.5e-2
    "elbo_flatness": {"pass": 1e-3, "warn": 1e-2, "higher": False},
    # Pearson r of log1p(observed) vs log1p(posterior expected counts), plot_QC's reconstruction panel;
    # measured 0.73 (test profile reference), 0.75 - 0.86 (simulation bar runs), 0.91 (400 mapping epochs at the
    # tutorial's shapes on a GPU); the 12-epoch reference 0.65
    "reconstruction_r_log1p": {"pass": 0.7, "warn": 0.5, "higher": True},
    # the same for a reference model: single cells are sparse, and Poisson noise alone caps the r far below 1
    # (hippocampus reference 0.69 against a Poisson ceiling of 0.83, unchanged from 250 to 1,000 epochs); real
    # references at the defaults measured 0.59 (her2st), 0.69 (hippocampus), 0.73 (lymph node), 0.61 (issue 28's
    # mouse cortex): PASS below the lowest of them, with a margin (docs/output.md)
    "reconstruction_r_log1p_reference": {"pass": 0.55, "warn": 0.4, "higher": True},
    # median over cell types of the Pearson r between log1p(signature) and log1p(per-type mean counts per cell
    # scaled to the signature's total), plot_QC's second panel
    "signature_r": {"pass": 0.8, "warn": 0.6, "higher": True},
    # genes shared between a section and the signatures; real runs at the defaults: the hippocampus section 124
    # (17 types, mapping r 0.94, its maps follow the anatomy), the lymph node 558, her2st H1 4,896
    "shared_genes": {"pass": 100, "warn": 50, "higher": True},
    # cells of the least represented type in the filtered reference
    "min_cells_per_type": {"pass": 20, "warn": 5, "higher": True},
    # of each type's top 20 markers in the reference (markers.py), those the gene filter keeps: the least of the
    # types. Tutorial filter: 12 (a 10-cell type) - 20 on the demo reference, 19 - 20 on the lymph node's, 20 on
    # the hippocampus'; the old demo filter 30/0.1/1.5: T cells 10 (their map then followed the spots' depth),
    # and 0 - 11 for 9 of 11 lymph node types
    "markers_kept": {"pass": MIN_KEPT, "warn": MIN_KEPT_WARN, "higher": True},
    # variance of the 1,000 most variable genes explained by the labels over that explained by the same labels
    # permuted (markers.label_signal): real cell types 6.6 (lymph node), 8.8 (hippocampus), 19.5 (her2st major),
    # 7.7 (her2st minor); wrong columns: the lymph node's sample 2.4, the hippocampus' sample 1.5, shuffled ~1
    "label_signal": {"pass": 4.0, "warn": 2.0, "higher": True},
}

#: what a user does about a check that is not PASS (the console line and the verdicts table give it)
ACTIONS = {
    "converged": "train longer (--{kind}_max_epochs) or, if the rule stopped it early, lower --{kind}_stop_tol",
    "reconstruction": "the model does not reproduce the counts: check --labels_key (the cell types) and the "
                      "gene overlap, then train longer",
    "signature_agreement": "signatures depart from the per-type means: check --batch_key and the covariates, and "
                           "types with few cells",
    "labels": "the labels barely explain the reference's expression: is --labels_key the cell-type column (not a "
              "sample, batch or numeric column)?",
    "markers": "lower the gene filter's cut-offs (--cell_count_cutoff, --cell_percentage_cutoff2, "
               "--nonz_mean_cutoff; the tutorial's 5 / 0.03 / 1.12)",
}

#: fewer epochs than this, not stopped by the rule: not converged whatever the last 10 % of epochs look like
MIN_JUDGE_EPOCHS = 20

#: the tutorial's reference budget (cell2location's tutorial: `max_epochs=250`). A reference trained this long whose
#: -ELBO still falls (but by no more than the WARN threshold) is PASS, with a note: small references do not flatten
#: in it, and training them on changed their signatures' scale (1.2 - 1.8x) and made the maps less accurate
#: against known cell counts (docs/output.md, "The reference's budget"), so "train longer" is not an action a
#: user should take by default.
TUTORIAL_REF_EPOCHS = 250

STATUS_COLOURS = {"PASS": "#5cb85c", "WARN": "#f0ad4e", "FAIL": "#d9534f", "MISSING": "#999999"}


def grade(value: float | None, name: str) -> str:
    """PASS / WARN / FAIL of `value` against THRESHOLDS[name]; MISSING when there is no value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "MISSING"
    t = THRESHOLDS[name]
    if t["higher"]:
        return "PASS" if value >= t["pass"] else "WARN" if value >= t["warn"] else "FAIL"
    return "PASS" if value <= t["pass"] else "WARN" if value <= t["warn"] else "FAIL"


def worst(statuses: list[str]) -> str:
    order = ["FAIL", "MISSING", "WARN", "PASS"]
    return min(statuses, key=order.index) if statuses else "MISSING"


# ---------------------------------------------------------------- reading what the steps wrote


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        LOG.warning("report: cannot read %s (%s)", path, exc)
        return None


def section_qc(sections: Path | None) -> pd.DataFrame:
    rows = []
    for path in sorted(sections.glob("*.qc.csv")) if sections else []:
        table = pd.read_csv(path)
        rows.append(table.iloc[0].to_dict())
    return pd.DataFrame(rows).set_index("sample") if rows else pd.DataFrame()


def gene_overlap(runs: list[dict]) -> pd.DataFrame:
    """Per section (from its mapping model's training JSON): genes, genes shared with the signatures (count, % of
    the signatures), and a hint when the overlap is low because one side uses Ensembl ids and the other symbols,
    or because genes match only ignoring letter case (a human reference against a mouse section, say)."""
    rows = []
    for run in runs:
        s = run["summary"] or {}
        overlap = s.get("gene_overlap") or next((sh.get("gene_overlap") for sh in (s.get("shards") or {}).values()
                                                 if sh.get("gene_overlap")), None) or {}
        for sample, o in overlap.items():
            shared = int(o["shared"])
            hint = ""
            if grade(shared, "shared_genes") != "PASS":
                if o.get("section_ensembl") != o.get("signatures_ensembl"):
                    hint = ("the section uses Ensembl ids and the reference symbols" if o.get("section_ensembl")
                            else "the section uses symbols and the reference Ensembl ids") + \
                        " (--reference_gene_id_column)"
                elif o.get("shared_ignoring_case", 0) > 2 * max(shared, 1):
                    hint = (f"{o['shared_ignoring_case']} genes match ignoring letter case: a reference of another "
                            "species (human symbols against mouse, say)?")
            rows.append({"sample": sample, "model": run["name"], "n_genes": int(o["n_genes"]), "shared_genes": shared,
                         "pct_of_signature_genes": 100.0 * shared / max(1, int(o.get("n_signature_genes") or 1)),
                         "status": grade(shared, "shared_genes"), "hint": hint})
    return pd.DataFrame(rows).set_index("sample") if rows else pd.DataFrame()


def reference_qc(reference: Path | None, runs: list[dict]) -> dict:
    """Genes kept by the filter (reference_genes.csv), cells per type and signature agreement (the reference's
    training JSON)."""
    out: dict = {}
    genes = reference / "reference_genes.csv" if reference else None
    if genes is not None and genes.exists():
        table = pd.read_csv(genes)
        if "kept" in table:
            out["genes_total"] = int(len(table))
            out["genes_kept"] = int(table["kept"].astype(bool).sum())
            markers = marker_table(table, runs)
            if not markers.empty:
                out["markers"] = markers
    summary = next((r["summary"] for r in runs if r["kind"] == "reference" and r["summary"]), None) or {}
    if summary.get("cells_per_type"):
        out["cells_per_type"] = summary["cells_per_type"]
        out["min_cells_per_type"] = int(min(summary["cells_per_type"].values()))
    if summary.get("signature_agreement"):
        out["signature_r"] = summary["signature_agreement"]
    if summary.get("label_signal"):
        out["label_signal"] = summary["label_signal"]
    return out


def section_signature_genes(runs: list[dict]) -> dict[str, tuple[str, set[str]]]:
    """Per section, from its mapping model's gene overlap: ('shared', the signature genes it measures) or
    ('missing', those it lacks)."""
    out = {}
    for run in runs:
        s = run["summary"] or {}
        overlaps = [s.get("gene_overlap") or {}] + [sh.get("gene_overlap") or {} for sh in (s.get("shards") or {}).values()]
        for overlap in overlaps:
            for sample, o in overlap.items():
                if "shared_signature_genes" in o:
                    out.setdefault(sample, ("shared", set(map(str, o["shared_signature_genes"]))))
                elif "missing_signature_genes" in o:
                    out.setdefault(sample, ("missing", set(map(str, o["missing_signature_genes"]))))
    return out


def marker_table(genes: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """Per cell type: its top markers in the reference (markers.py, from reference_genes.csv), how many the gene
    filter kept (graded against THRESHOLDS['markers_kept']), the names of those dropped, and per section how many
    of the kept ones it measures (shown, not graded: a section's genes are what they are)."""
    table = genes.set_index(genes.columns[0]) if "gene" not in genes.columns else genes.set_index("gene")
    table.index = table.index.astype(str)
    markers = markers_from_table(table)
    if not markers:
        return pd.DataFrame()
    kept = set(table.index[table["kept"].astype(bool)])
    symbols = dict(zip(table.index, table["SYMBOL"].astype(str))) if "SYMBOL" in table else None
    sections = {}
    for sample, (how, names) in section_signature_genes(runs).items():
        sections[sample] = names if how == "shared" else kept - names
    check = marker_check(markers, kept, sections, symbols)
    check["status"] = [grade(int(k), "markers_kept") for k in check["kept"]]
    return check


def signature_agreement(adata, labels: pd.Series, sig: pd.DataFrame) -> dict:
    """Per type, the Pearson r of log1p(signature) with log1p(the type's mean counts per cell), both over the
    signatures' genes (the tutorial's "estimated signatures vs naive per-cluster averages")."""
    import scipy.sparse as sp

    genes = [g for g in sig.index.astype(str) if g in set(adata.var_names)]
    if not genes:
        return {}
    x = adata[:, genes].X
    types = [t for t in sig.columns if t in set(labels)]
    onehot = sp.csr_matrix((np.ones(len(labels)), (pd.Categorical(labels, categories=types).codes, np.arange(len(labels)))),
                           shape=(len(types), len(labels))) if types else None
    if onehot is None:
        return {}
    keep = np.asarray(pd.Categorical(labels, categories=types).codes) >= 0
    onehot = onehot[:, keep] if not keep.all() else onehot
    xs = x[keep] if not keep.all() else x
    sums = onehot @ xs
    sums = np.asarray(sums.toarray() if sp.issparse(sums) else sums, dtype=float)
    n = np.asarray(onehot.sum(axis=1)).ravel()
    means = sums / n[:, None]
    r = {}
    for i, t in enumerate(types):
        a, b = np.log1p(sig.loc[genes, t].to_numpy(float)), np.log1p(means[i])
        r[t] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return r


def training_runs(reference: Path | None, models: Path | None) -> list[dict]:
    """One dict per trained model: name, summary JSON, history frame (may be None)."""
    runs = []
    if reference and (reference / "reference_training.json").exists():
        runs.append({"name": "reference", "kind": "reference", "summary": _read_json(reference / "reference_training.json"),
                     "history": _history(reference / "reference_history.csv")})
    for path in sorted(models.glob("*_training.json")) if models else []:
        name = path.name[: -len("_training.json")]
        runs.append({"name": name, "kind": "mapping", "summary": _read_json(path),
                     "history": _history(models / f"{name}_history.csv")})
    return runs


def _history(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    return pd.read_csv(path)


def converged_status(summary: dict, reference: bool = False) -> tuple[str, str]:
    """Converged? PASS when the stopping rule fired (or, with fixed epochs, the -ELBO is flat), else graded on
    the flatness of the last 10 % of epochs; a reference (`reference=True`) trained the tutorial's
    TUTORIAL_REF_EPOCHS or more is PASS up to the WARN threshold of flatness, with the change stated."""
    reason = str(summary.get("stop_reason") or "")
    kind = stop_kind(summary)
    flat = summary.get("elbo_relative_change_last_10pct")
    flat = abs(float(flat)) if flat is not None else None
    if summary.get("n_shards"):  # merged shards: every shard must have converged
        shards = summary.get("shards") or {}
        states = [converged_status(s)[0] for s in shards.values()] or ["MISSING"]
        return worst(states), f"{sum(s == 'PASS' for s in states)}/{len(states)} shards converged"
    if kind == "converged":
        text = f"stopped by the rule at epoch {summary.get('stopped_epoch')}"
        if flat is not None and grade(flat, "elbo_flatness") != "PASS":  # the rule's window saw a plateau in noise
            return grade(flat, "elbo_flatness"), f"{text}, but the -ELBO changed {flat:.1e} over the last 10 % of epochs"
        return "PASS", text
    epochs = summary.get("epochs")
    if epochs is not None and int(epochs) < MIN_JUDGE_EPOCHS:  # the last 10 % of a few epochs says nothing
        return "FAIL", f"{int(epochs)} epochs: too few to call it converged ({reason or 'fixed epochs'})"
    status = grade(flat, "elbo_flatness")
    text = reason or "fixed epochs"
    if flat is not None:
        text += f"; -ELBO changed {flat:.1e} over the last 10 % of epochs"
    if reference and status == "WARN" and epochs is not None and int(epochs) >= TUTORIAL_REF_EPOCHS:
        return "PASS", (text + f" (the tutorial's budget of {TUTORIAL_REF_EPOCHS} epochs or more: small references "
                        "are still falling there; training on changes the signatures' scale, docs/output.md)")
    return status, text


def model_verdicts(runs: list[dict], ref: dict) -> list[dict]:
    rows = []
    for run in runs:
        s = run["summary"] or {}
        conv, conv_text = (converged_status(s, run["kind"] == "reference") if s else
                           ("MISSING", "no training summary"))
        recon = s.get("reconstruction") or {}
        if s.get("n_shards"):
            vals = [((sh.get("reconstruction") or {}).get("pearson_r_log1p")) for sh in (s.get("shards") or {}).values()]
            vals = [v for v in vals if v is not None]
            r = min(vals) if vals else None
        else:
            r = recon.get("pearson_r_log1p")
        ceiling = recon.get("pearson_r_log1p_poisson_ceiling")
        recon_key = "reconstruction_r_log1p_reference" if run["kind"] == "reference" else "reconstruction_r_log1p"
        row = {"model": run["name"], "kind": run["kind"], "converged": conv, "convergence": conv_text,
               "reconstruction_r_log1p": r, "reconstruction": grade(r, recon_key)}
        kind = "ref" if run["kind"] == "reference" else "map"
        if ceiling is not None:
            row["reconstruction_ceiling"] = ceiling
        texts = {"converged": f"not converged ({conv_text})",
                 "reconstruction": "reconstruction r " + ("missing" if r is None else
                                                          f"{r:.3f} < {THRESHOLDS[recon_key]['pass']}")
                 + (f" (Poisson noise alone caps it at {ceiling:.3f})" if ceiling is not None else "")}
        if run["kind"] == "reference":
            sr = [v for v in (ref.get("signature_r") or {}).values() if v == v]
            med = float(np.median(sr)) if sr else None
            row["signature_r_median"] = med
            row["signature_agreement"] = grade(med, "signature_r")
            texts["signature_agreement"] = "median signature r " + ("missing" if med is None else
                                                                    f"{med:.3f} < {THRESHOLDS['signature_r']['pass']}")
            signal = (ref.get("label_signal") or {}).get("ratio")
            if signal is not None:
                row["label_signal"] = float(signal)
                row["labels"] = grade(float(signal), "label_signal")
                texts["labels"] = (f"the labels explain {signal:.1f}x the variance labels at random do "
                                   f"(< {THRESHOLDS['label_signal']['pass']:g})")
            markers = ref.get("markers")
            if markers is not None and not markers.empty:
                low = markers[markers["status"] != "PASS"]
                row["markers_min_kept"] = int(markers["kept"].min())
                row["markers"] = worst(list(markers["status"]))
                texts["markers"] = "; ".join(
                    f"the gene filter keeps {int(m.kept)} of the {int(m.markers)} top markers of '{t}' "
                    f"(dropped: {m.dropped})" for t, m in low.iterrows())
        checks = [c for c in ("converged", "reconstruction", "signature_agreement", "labels", "markers") if c in row]
        row["verdict"] = worst([row[c] for c in checks])
        causes = [c for c in checks if row[c] != "PASS"]
        row["cause"] = ", ".join(causes)
        row["action"] = " | ".join(f"{texts[c]}: {ACTIONS[c].format(kind=kind)}" for c in causes)
        rows.append(row)
    return rows


ALPHA_RUN = re.compile(r"^(?P<base>.+)_alpha(?P<alpha>[0-9.]+)$")


def _elbo_and_locations(summary: dict) -> tuple[float | None, int | None]:
    """Final -ELBO and locations of a mapping model (a sharded model's: summed over its shards)."""
    if summary.get("n_shards"):
        shards = list((summary.get("shards") or {}).values())
        elbos = [sh.get("final_elbo") for sh in shards]
        locs = [(sh.get("model") or {}).get("n_locations") for sh in shards]
        if shards and all(v is not None for v in elbos + locs):
            return float(sum(elbos)), int(sum(locs))
        return None, None
    n = (summary.get("model") or {}).get("n_locations")
    e = summary.get("final_elbo")
    return (None if e is None else float(e)), (None if n is None else int(n))


def alpha_comparison(runs: list[dict]) -> pd.DataFrame:
    """--detection_alpha with several values: per model (all its sections; one section with per_sample) and
    value, the final -ELBO per location, its reconstruction r, and which value fits better: the lower -ELBO per
    location, i.e. the higher evidence lower bound of the same data under the two priors."""
    rows = []
    for run in runs:
        m = ALPHA_RUN.match(run["name"]) if run["kind"] == "mapping" else None
        if not m or not run["summary"]:
            continue
        elbo, n = _elbo_and_locations(run["summary"])
        recon = (run["summary"].get("reconstruction") or {}).get("pearson_r_log1p")
        rows.append({"model": m["base"], "detection_alpha": float(m["alpha"]), "run": run["name"],
                     "sections": ", ".join(sorted((run["summary"].get("gene_overlap") or {}).keys())),
                     "elbo_per_location": None if elbo is None or not n else elbo / n,
                     "reconstruction_r_log1p": recon})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table[table.groupby("model")["model"].transform("size") > 1]
    if table.empty:
        return table
    best = table.dropna(subset=["elbo_per_location"]).groupby("model")["elbo_per_location"].idxmin()
    table["better"] = ""
    table.loc[best.to_numpy(), "better"] = "yes"
    return table.set_index("run")


# ---------------------------------------------------------------- writing MultiQC custom content


def _yaml(path: Path, content: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


def _clean(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else round(float(value), 4)
    return value


def _table(df: pd.DataFrame) -> dict:
    return {str(i): {str(k): _clean(v) for k, v in row.items()} for i, row in df.iterrows()}


def _section_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


#: section names of the image sections (MultiQC names an image section after its file otherwise)
IMAGE_NAMES: dict[str, str] = {}


def verdict_summary(qc: pd.DataFrame, ref: dict, verdicts: list[dict], expected_sections: list[str],
                    alphas: pd.DataFrame) -> dict:
    """verdicts.json: the run verdict, every model's checks, sections without results, the thresholds, the markers
    and (when several were fitted) the better detection_alpha per model."""
    missing_sections = [s for s in expected_sections if s not in qc.index]
    summary = {"run_verdict": worst([v["verdict"] for v in verdicts] + (["MISSING"] if missing_sections else [])),
               "models": verdicts, "missing_sections": missing_sections, "thresholds": THRESHOLDS}
    if ref.get("markers") is not None and not ref["markers"].empty:
        summary["markers"] = _table(ref["markers"])
    if not alphas.empty:
        summary["detection_alpha"] = {m: float(g.loc[g["better"] == "yes", "detection_alpha"].iloc[0])
                                      for m, g in alphas.groupby("model") if (g["better"] == "yes").any()}
    return summary


def verdicts_section(outdir: Path, summary: dict, verdicts: list[dict]) -> list[str]:
    """Verdicts: one row per trained model, its checks and what to do."""
    order = []
    missing_sections = summary["missing_sections"]
    headers = {
        "kind": {"title": "Kind"},
        "verdict": {"title": "Verdict", "description": "the worst of the checks of this model"},
        "converged": {"title": "Converged", "description": "the stopping rule fired, or the -ELBO changed "
                      f"<= {THRESHOLDS['elbo_flatness']['pass']:g} (PASS) / <= {THRESHOLDS['elbo_flatness']['warn']:g} "
                      "(WARN) over the last 10 % of epochs"},
        "convergence": {"title": "Why"},
        "reconstruction_r_log1p": {"title": "Reconstruction r", "format": "{:,.3f}", "min": 0, "max": 1,
                                   "description": "Pearson r of log1p(observed) vs log1p(expected counts); PASS >= "
                                   f"{THRESHOLDS['reconstruction_r_log1p']['pass']}, WARN >= {THRESHOLDS['reconstruction_r_log1p']['warn']} "
                                   f"(reference: {THRESHOLDS['reconstruction_r_log1p_reference']['pass']}, "
                                   f"{THRESHOLDS['reconstruction_r_log1p_reference']['warn']})"},
        "reconstruction_ceiling": {"title": "Reconstruction r ceiling", "format": "{:,.3f}", "min": 0, "max": 1,
                                   "description": "the r of Poisson draws from the expected counts against them: "
                                   "what a model that knew them exactly would reach (sparse cells cap it)"},
        "reconstruction": {"title": "Reconstruction"},
        "signature_r_median": {"title": "Signature r", "format": "{:,.3f}", "min": 0, "max": 1,
                               "description": "median over types of r(log1p signature, log1p per-type mean); PASS >= "
                               f"{THRESHOLDS['signature_r']['pass']}, WARN >= {THRESHOLDS['signature_r']['warn']}"},
        "signature_agreement": {"title": "Signatures"},
        "label_signal": {"title": "Label signal", "format": "{:,.1f}",
                         "description": "variance of the 1,000 most variable genes the labels explain, over what "
                         f"the same labels permuted explain; PASS >= {THRESHOLDS['label_signal']['pass']:g}, WARN >= "
                         f"{THRESHOLDS['label_signal']['warn']:g}"},
        "labels": {"title": "Labels"},
        "markers_min_kept": {"title": "Markers kept", "format": "{:,.0f}", "min": 0, "max": N_MARKERS,
                             "description": f"the least, over cell types, of the top {N_MARKERS} markers the gene "
                             f"filter kept; PASS >= {THRESHOLDS['markers_kept']['pass']}, WARN >= "
                             f"{THRESHOLDS['markers_kept']['warn']}"},
        "markers": {"title": "Markers"},
        "cause": {"title": "Checks not PASS"},
        "action": {"title": "What to do"},
    }
    table = {v["model"]: {k: _clean(v.get(k)) for k in headers if k in v} for v in verdicts}
    _yaml(outdir / "c2l_verdicts_mqc.yaml", {
        "id": "c2l_verdicts", "section_name": "Verdicts",
        "description": f"Run verdict: <strong>{summary['run_verdict']}</strong>. One row per trained model: did it "
                       "converge, does it reproduce the data, do the reference signatures agree with the per-type "
                       "means (thresholds in docs/output.md)."
                       + (f" Sections without results: {', '.join(missing_sections)}." if missing_sections else ""),
        "plot_type": "table", "pconfig": {"id": "c2l_verdicts_table", "title": "cell2location-nf: verdicts",
                                          "col1_header": "Model", "no_violin": True},
        "headers": headers, "data": table or {"(no model trained)": {"verdict": "MISSING"}},
    })
    order.append("c2l_verdicts")
    return order


def sections_section(outdir: Path, qc: pd.DataFrame) -> list[str]:
    """Sections: READ_VISIUM's QC, one row per section."""
    order = []
    if not qc.empty:
        cols = {"n_spots": "Spots", "n_spots_dropped": "Spots dropped", "n_genes": "Genes",
                "median_umis_per_spot": "Median UMIs / spot", "median_genes_per_spot": "Median genes / spot",
                "mean_mt_fraction": "Mean MT fraction", "n_mt_genes": "MT genes", "total_umis": "UMIs"}
        q = qc[[c for c in cols if c in qc]]
        fmt = {c: ("{:,.3f}" if c == "mean_mt_fraction" else "{:,.0f}") for c in q.columns}
        _yaml(outdir / "c2l_sections_mqc.yaml", {
            "id": "c2l_sections", "section_name": "Sections", "plot_type": "table",
            "description": "READ_VISIUM: one row per section (read_visium/qc_summary.csv).",
            "pconfig": {"id": "c2l_sections_table", "title": "Sections", "col1_header": "Section"},
            "headers": {c: {"title": cols[c], "format": fmt[c]} for c in q.columns}, "data": _table(q)})
        order.append("c2l_sections")
    return order


def gene_overlap_section(outdir: Path, overlap: pd.DataFrame) -> list[str]:
    """Gene overlap: the genes each section shares with the signatures."""
    order = []
    if not overlap.empty:
        _yaml(outdir / "c2l_gene_overlap_mqc.yaml", {
            "id": "c2l_gene_overlap", "section_name": "Gene overlap", "plot_type": "table",
            "description": "Genes shared by each section and the reference signatures (the genes the mapping model "
                           f"uses); PASS >= {THRESHOLDS['shared_genes']['pass']}, WARN >= {THRESHOLDS['shared_genes']['warn']}.",
            "pconfig": {"id": "c2l_gene_overlap_table", "title": "Gene overlap", "col1_header": "Section"},
            "headers": {"n_genes": {"title": "Section genes", "format": "{:,.0f}"},
                        "shared_genes": {"title": "Shared", "format": "{:,.0f}"},
                        "pct_of_signature_genes": {"title": "% of signature genes", "suffix": "%", "max": 100,
                                                   "format": "{:,.1f}"},
                        "status": {"title": "Status"}, "hint": {"title": "Hint"}},
            "data": _table(overlap)})
        order.append("c2l_gene_overlap")
    return order


def reference_cells_section(outdir: Path, ref: dict) -> list[str]:
    """Reference: cells per type after the gene filter."""
    order = []
    if ref.get("cells_per_type"):
        _yaml(outdir / "c2l_reference_cells_mqc.yaml", {
            "id": "c2l_reference_cells", "section_name": "Reference: cells per type", "plot_type": "bargraph",
            "description": (f"Filtered reference: {ref.get('genes_kept', '?')} of {ref.get('genes_total', '?')} genes "
                            f"kept by the gene filter; least represented type {ref['min_cells_per_type']} cells "
                            f"({grade(ref['min_cells_per_type'], 'min_cells_per_type')}: PASS >= "
                            f"{THRESHOLDS['min_cells_per_type']['pass']}, WARN >= {THRESHOLDS['min_cells_per_type']['warn']})."),
            "pconfig": {"id": "c2l_reference_cells_plot", "title": "Cells per type", "ylab": "cells",
                        "cpswitch": False},
            "data": {t: {"cells": n} for t, n in ref["cells_per_type"].items()}})
        order.append("c2l_reference_cells")
    return order


def markers_section(outdir: Path, ref: dict) -> list[str]:
    """Reference: each type's top markers the gene filter kept."""
    order = []
    markers = ref.get("markers")
    if markers is not None and not markers.empty:
        in_cols = [c for c in markers.columns if c.startswith("in ")]
        headers = {"markers": {"title": "Markers", "format": "{:,.0f}"},
                   "kept": {"title": "Kept by the filter", "format": "{:,.0f}", "min": 0, "max": N_MARKERS},
                   "status": {"title": "Status"}}
        headers.update({c: {"title": f"Measured {c}", "format": "{:,.0f}", "min": 0, "max": N_MARKERS,
                            "description": f"of the kept markers, those section {c[3:]} measures"} for c in in_cols})
        headers["dropped"] = {"title": "Dropped by the filter"}
        headers["kept_names"] = {"title": "Kept"}
        _yaml(outdir / "c2l_markers_mqc.yaml", {
            "id": "c2l_markers", "section_name": "Reference: markers kept", "plot_type": "table",
            "description": (f"Per cell type, its top {N_MARKERS} markers in the reference (the most specific genes "
                            "among those detected in a quarter of its cells), how many the gene filter kept "
                            f"(PASS >= {THRESHOLDS['markers_kept']['pass']}, WARN >= "
                            f"{THRESHOLDS['markers_kept']['warn']}: {ACTIONS['markers']}), and how many of the kept "
                            "ones each section measures (not graded)."),
            "pconfig": {"id": "c2l_markers_table", "title": "Markers kept", "col1_header": "Cell type",
                        "no_violin": True},
            "headers": headers, "data": _table(markers[list(headers)])})
        order.append("c2l_markers")
    return order


def signature_agreement_section(outdir: Path, ref: dict) -> list[str]:
    """Reference: each type's signature against its mean counts per cell."""
    order = []
    if ref.get("signature_r"):
        _yaml(outdir / "c2l_signature_agreement_mqc.yaml", {
            "id": "c2l_signature_agreement", "section_name": "Reference: signatures vs per-type means",
            "plot_type": "bargraph",
            "description": "Per type, Pearson r of log1p(estimated signature) with log1p(the type's mean counts per "
                           "cell): low values point at a type whose signature the batch/covariate model changed a "
                           "lot, or at too few cells.",
            "pconfig": {"id": "c2l_signature_agreement_plot", "title": "Signature agreement", "ymax": 1, "ymin": 0,
                        "ylab": "Pearson r", "cpswitch": False},
            "data": {t: {"r": _clean(v)} for t, v in ref["signature_r"].items()}})
        order.append("c2l_signature_agreement")
    return order


def elbo_section(outdir: Path, runs: list[dict]) -> list[str]:
    """Training: the -ELBO curve of every model."""
    order = []
    curves = {}
    for run in runs:
        h = run["history"]
        if h is None or "elbo_train" not in h:
            continue
        parts = h.groupby("shard") if "shard" in h else [(None, h)]
        for shard, part in parts:
            y = part["elbo_train"].to_numpy(float)
            x = np.arange(1, len(y) + 1)
            skip = max(1, len(y) // 10)  # the first 10 %: the steep start hides the plateau
            step = max(1, (len(y) - skip) // 500)  # at most ~500 points a curve
            name = run["name"] if shard is None else f"{run['name']} shard {shard}"
            curves[name] = {int(a): float(b) for a, b in zip(x[skip::step], y[skip::step]) if math.isfinite(b)}
    if curves:
        _yaml(outdir / "c2l_elbo_mqc.yaml", {
            "id": "c2l_elbo", "section_name": "Training: -ELBO", "plot_type": "linegraph",
            "description": "-ELBO per epoch of every model (the first 10 % of epochs left out); it should flatten.",
            "pconfig": {"id": "c2l_elbo_plot", "title": "-ELBO per epoch", "xlab": "epoch", "ylab": "-ELBO",
                        "logswitch": True},
            "data": curves})
        order.append("c2l_elbo")
    return order


def training_section(outdir: Path, runs: list[dict]) -> list[str]:
    """Training: time, device and memory of every model."""
    order = []
    trows = {}
    for run in runs:
        s = run["summary"] or {}
        trows[run["name"]] = {k: _clean(s.get(k)) for k in ("epochs", "stopped_epoch", "train_seconds", "export_seconds",
                                                             "device", "peak_gpu_memory_gb", "memory_estimate_gb",
                                                             "n_shards")}
        trows[run["name"]]["stop_reason"] = s.get("stop_reason")
    if trows:
        _yaml(outdir / "c2l_training_mqc.yaml", {
            "id": "c2l_training", "section_name": "Training: time and device", "plot_type": "table",
            "description": "From each model's training JSON (train_reference/, map_cells/<run>/).",
            "pconfig": {"id": "c2l_training_table", "title": "Training", "col1_header": "Model"},
            "headers": {"epochs": {"title": "Epochs"}, "stopped_epoch": {"title": "Stopped at"},
                        "stop_reason": {"title": "Why"}, "train_seconds": {"title": "Training (s)"},
                        "export_seconds": {"title": "Export (s)"}, "device": {"title": "Device"},
                        "peak_gpu_memory_gb": {"title": "Peak GPU memory (GB)"},
                        "memory_estimate_gb": {"title": "Memory estimate (GB)"}, "n_shards": {"title": "Shards"}},
            "data": trows})
        order.append("c2l_training")
    return order


def detection_alpha_section(outdir: Path, alphas: pd.DataFrame) -> list[str]:
    """detection_alpha: which of the values fitted fits each model better."""
    order = []
    if not alphas.empty:
        _yaml(outdir / "c2l_detection_alpha_mqc.yaml", {
            "id": "c2l_detection_alpha", "section_name": "detection_alpha: which fits better",
            "plot_type": "table",
            "description": "Each model fitted once per --detection_alpha value. Criterion: the final -ELBO per "
                           "location (lower is better: the same data have the higher evidence lower bound under "
                           "that prior); reconstruction r alongside. With a joint model the answer holds for all its "
                           "sections; with --mapping_mode per_sample, per section. Both results are kept "
                           "(map_cells/<model>_alpha<value>/).",
            "pconfig": {"id": "c2l_detection_alpha_table", "title": "detection_alpha", "col1_header": "Run",
                        "no_violin": True},
            "headers": {"model": {"title": "Model"}, "sections": {"title": "Sections"},
                        "detection_alpha": {"title": "detection_alpha", "format": "{:,.0f}"},
                        "elbo_per_location": {"title": "-ELBO / location", "format": "{:,.1f}"},
                        "reconstruction_r_log1p": {"title": "Reconstruction r", "format": "{:,.3f}"},
                        "better": {"title": "Better"}},
            "data": _table(alphas)})
        order.append("c2l_detection_alpha")
    return order


def map_sections(outdir: Path, figures: Path | None) -> list[str]:
    """The maps (and regions' composition), one image section each."""
    order = []
    pngs = sorted(figures.rglob("*.png"), key=lambda p: (p.name, str(p))) if figures else []
    used: set[str] = set()

    def unique(sid: str) -> str:
        n, out = 1, sid
        while out in used:
            n += 1
            out = f"{sid}_{n}"
        used.add(out)
        return out

    titles = {"q05_abundance": "q05 abundance per cell type", "overlay": "cell types overlaid",
              "proportions": "proportions per spot", "regions": "tissue regions"}
    for kind, what in titles.items():  # maps, grouped by kind
        for png in pngs:
            if png.name.endswith(f".{kind}.png"):
                sample = png.name[: -len(f".{kind}.png")]
                sid = unique(_section_id(f"c2l_map_{sample}_{kind}"))
                shutil.copyfile(png, outdir / f"{sid}_mqc.png")
                order.append(sid)
                IMAGE_NAMES[sid] = f"Map: {sample}, {what}" + ("" if sid.endswith(kind) else f" ({sid.rsplit('_', 1)[-1]})")
    for png in pngs:
        if png.name == "regions_composition.png":
            sid = unique("c2l_regions_composition")
            shutil.copyfile(png, outdir / f"{sid}_mqc.png")
            order.append(sid)
            IMAGE_NAMES[sid] = "Tissue regions: composition" + ("" if sid.endswith("composition") else f" ({sid.rsplit('_', 1)[-1]})")
    return order


def params_section(outdir: Path, params: dict | None) -> list[str]:
    """Parameters: the run's parameters."""
    order = []
    if params:
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in sorted(params.items())
                if v is not None and not str(k).startswith("config_profile")}
        _yaml(outdir / "c2l_params_mqc.yaml", {
            "id": "c2l_params", "section_name": "Parameters", "plot_type": "table",
            "description": "The run's parameters (those given and the defaults).",
            "pconfig": {"id": "c2l_params_table", "title": "Parameters", "col1_header": "Parameter", "no_violin": True},
            "headers": {"value": {"title": "Value"}},
            "data": {str(k): {"value": str(v)} for k, v in flat.items()}})
        order.append("c2l_params")
    return order


def write_content(outdir: Path, qc: pd.DataFrame, overlap: pd.DataFrame, ref: dict, runs: list[dict],
                  verdicts: list[dict], figures: Path | None, versions: Path | None, params: dict | None,
                  expected_sections: list[str]) -> list[str]:
    """The custom-content files, one function per report section; returns the section ids in report order."""
    IMAGE_NAMES.clear()
    alphas = alpha_comparison(runs)
    summary = verdict_summary(qc, ref, verdicts, expected_sections, alphas)
    (outdir / "verdicts.json").write_text(json.dumps(summary, indent=2, default=_clean) + "\n")
    order = []
    order += verdicts_section(outdir, summary, verdicts)
    order += sections_section(outdir, qc)
    order += gene_overlap_section(outdir, overlap)
    order += reference_cells_section(outdir, ref)
    order += markers_section(outdir, ref)
    order += signature_agreement_section(outdir, ref)
    order += elbo_section(outdir, runs)
    order += training_section(outdir, runs)
    order += detection_alpha_section(outdir, alphas)
    order += map_sections(outdir, figures)
    order += params_section(outdir, params)
    if versions and versions.exists():
        shutil.copyfile(versions, outdir / "software_mqc_versions.yml")
    return order


def multiqc_config(outdir: Path, order: list[str], title: str) -> Path:
    path = outdir / "multiqc_config.yaml"
    _yaml(path, {
        "title": title,
        "subtitle": "cell2location-nf run report",
        "intro_text": "Per-section QC, the reference, every model's verdict, training curves and the maps of this run.",
        "no_version_check": True,
        "ai_summary": False,
        "show_analysis_paths": False,
        "show_analysis_time": False,
        "report_section_order": {sid: {"order": 1000 - i} for i, sid in enumerate(order)},
        "custom_content": {"order": order},
        "custom_data": {sid: {"section_name": name} for sid, name in IMAGE_NAMES.items()},
        "table_cond_formatting_colours": [{"pass": STATUS_COLOURS["PASS"]}, {"warn": STATUS_COLOURS["WARN"]},
                                          {"fail": STATUS_COLOURS["FAIL"]}],
        "table_cond_formatting_rules": {"all_columns": {"pass": [{"s_eq": "PASS"}], "warn": [{"s_eq": "WARN"}],
                                                        "fail": [{"s_eq": "FAIL"}, {"s_eq": "MISSING"}]}},
    })
    return path


def run(sections: Path | None, reference: Path | None, models: Path | None, figures: Path | None,
        versions: Path | None, params_json: Path | None, expected_sections: list[str], outdir: Path,
        title: str = "cell2location-nf") -> dict:
    """The step: gather, grade, write the custom content and the MultiQC config into `outdir`."""
    from .runtime import staged_outputs

    params = _read_json(params_json) if params_json and params_json.exists() else None
    qc = section_qc(sections)
    runs = training_runs(reference, models)
    overlap = gene_overlap(runs)
    ref = reference_qc(reference, runs)
    verdicts = model_verdicts(runs, ref)
    with staged_outputs(outdir) as out:
        stage = out.stage
        order = write_content(stage, qc, overlap, ref, runs, verdicts, figures, versions, params, expected_sections)
        multiqc_config(stage, order, title)
        for path in sorted(stage.iterdir()):
            out.path(path.name)  # commit everything written into the stage
    summary = json.loads((outdir / "verdicts.json").read_text())
    for v in verdicts:
        LOG.info("report: %s %s: %s (converged %s, reconstruction %s%s)", v["kind"], v["model"], v["verdict"],
                 v["converged"], v["reconstruction"],
                 f", signatures {v['signature_agreement']}" if "signature_agreement" in v else "")
        if v["verdict"] in ("WARN", "FAIL", "MISSING"):
            LOG.warning("report: model '%s' is %s (%s): %s", v["model"], v["verdict"], v["cause"], v["action"])
    for s, row in overlap.iterrows() if not overlap.empty else []:
        if row["status"] != "PASS":
            LOG.warning("report: section '%s' shares only %d genes with the signatures%s", s, row["shared_genes"],
                        f" ({row['hint']})" if row["hint"] else "")
    for model, alpha in (summary.get("detection_alpha") or {}).items():
        LOG.info("report: model '%s' fits better with detection_alpha %g (lower -ELBO per location)", model, alpha)
    LOG.info("report: run verdict %s", summary["run_verdict"])
    return summary
