"""The demo checked against an independent truth: HER2+ breast tumour section H1 and its pathologist's regions.

Inputs: a `make demo` (or `-profile demo`) output folder and the demo data folder (`her2st/` from
`tests/build_her2st.py`). Three methods on the same 613 spots:

- **cell2location**: the pipeline's `means_cell_abundance_w_sf` (and `q05_…`) per spot;
- **stereoscope**: the study's own proportions (Andersson et al. 2021, `res/ST-deconv/props/major.zip`), fitted
  with their own reference (Wu et al. breast-cancer atlas, more patients) at 8 major types, epithelial cells in one;
- **NNLS**: `scipy.optimize.nnls` per spot on the pipeline's `signatures.csv` over the genes shared with H1.

Scores, per method:

- per pathologist region, the mean estimated **proportion** of each cell type (abundance / spot total);
- for the expected pairs (`EXPECTED`), the **AUROC** (`sklearn.metrics.roc_auc_score`) of the type's score for
  the spots of that region against all other spots (undetermined spots included among the others). The score is
  the abundance for cell2location and NNLS and, since stereoscope reports proportions only, the proportion for
  stereoscope; cell2location's and NNLS' proportions are scored too (`*_prop` rows).

Cell types are compared at stereoscope's level: `Epithelial` = Cancer + Normal Epithelial, `Plasma Cells` =
Plasmablasts. Output: a JSON (`--json`) and the markdown tables of docs/benchmarks.md (stdout).

    python benchmarks/her2st.py --results results --data testdata_build/her2st \
        --json benchmarks/results/her2st_demo.json
    python benchmarks/her2st.py --section G2 --results results_G2   # data in testdata_build/her2st_G2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "H1"  # the default; --section NAME for another section built by tests/build_her2st.py --section NAME

#: region -> the cell types (stereoscope's names) expected to be enriched there
EXPECTED: dict[str, list[str]] = {
    "cancer in situ": ["Epithelial"],
    "invasive cancer": ["Epithelial"],
    "immune infiltrate": ["T-cells", "B-cells", "Plasma Cells"],
    "connective tissue": ["CAFs", "PVL", "Endothelial"],
}

#: the reference's celltype_major -> stereoscope's major types
TO_COMMON = {
    "Cancer Epithelial": "Epithelial",
    "Normal Epithelial": "Epithelial",
    "Plasmablasts": "Plasma Cells",
}

COMMON_TYPES = ["Epithelial", "T-cells", "B-cells", "Plasma Cells", "Myeloid", "CAFs", "PVL", "Endothelial"]
REGION_ORDER = ["cancer in situ", "invasive cancer", "immune infiltrate", "connective tissue", "breast glands",
                "adipose tissue", "undetermined"]


def to_common(table: pd.DataFrame) -> pd.DataFrame:
    """Sum columns into stereoscope's major types (unknown names kept as they are)."""
    grouped = table.T.groupby(lambda c: TO_COMMON.get(c, c)).sum().T
    return grouped


def proportions(table: pd.DataFrame) -> pd.DataFrame:
    tot = table.sum(axis=1)
    return table.div(tot.where(tot > 0), axis=0).fillna(1.0 / table.shape[1])


def auroc(score: pd.Series, in_region: pd.Series) -> float:
    """AUROC of `score` for the spots with `in_region` True against the rest; NaN if either group is empty."""
    y = in_region.loc[score.index].to_numpy(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score.to_numpy(float)))


def expected_pair_aurocs(scores: pd.DataFrame, regions: pd.Series) -> dict[str, float]:
    """{'region / type': AUROC} for every pair of EXPECTED that `scores` (spots x common types) holds."""
    out = {}
    for region, types in EXPECTED.items():
        for ct in types:
            if ct in scores.columns:
                out[f"{region} / {ct}"] = auroc(scores[ct], regions == region)
    return out


def region_means(props: pd.DataFrame, regions: pd.Series) -> pd.DataFrame:
    """Regions (rows, REGION_ORDER) x cell types: mean proportion over the region's spots."""
    means = props.groupby(regions.loc[props.index].to_numpy()).mean()
    return means.reindex([r for r in REGION_ORDER if r in means.index])


def read_c2l(results: Path, stat: str, section: str = SECTION) -> pd.DataFrame:
    path = results / "map_cells" / "joint" / f"{section}.{stat}_cell_abundance_w_sf.csv"
    if not path.is_file():
        hits = sorted(results.glob(f"map_cells/**/{section}.{stat}_cell_abundance_w_sf.csv"))
        if not hits:
            raise SystemExit(f"her2st: no {section}.{stat}_cell_abundance_w_sf.csv under {results}/map_cells")
        path = hits[0]
    table = pd.read_csv(path, index_col=0)
    table.index = table.index.astype(str)
    table.columns = [c.replace(f"{stat}cell_abundance_w_sf_", "") for c in table.columns]
    return table


def nnls(results: Path, data: Path, section: str = SECTION) -> pd.DataFrame:
    import anndata as ad

    from metrics import nnls_abundance

    sig = pd.read_csv(results / "train_reference" / "signatures.csv", index_col=0)
    spots = ad.read_h5ad(data / f"{section}.h5ad")
    return nnls_abundance(spots.X, spots.var_names, sig, spots.obs_names)


def read_regions(data: Path, section: str = SECTION) -> tuple[pd.Series, int]:
    """The pathologist's region per spot, and how many spots have none (left out of the scores)."""
    regions = pd.read_csv(data / f"{section}_regions.csv", index_col=0)["region"]
    regions.index = regions.index.astype(str)
    unlabelled = int(regions.isna().sum())
    return regions.dropna(), unlabelled


def evaluate(results: Path, data: Path, section: str = SECTION) -> dict:
    regions, unlabelled = read_regions(data, section)
    if unlabelled:
        print(f"her2st: {unlabelled} spot(s) of {section} without a region left out of the scores", file=sys.stderr)
    stereo = pd.read_csv(data / f"{section}_stereoscope_major.csv", index_col=0)
    stereo.index = stereo.index.astype(str)
    c2l_means = read_c2l(results, "means", section)
    c2l_q05 = read_c2l(results, "q05", section)
    nn = nnls(results, data, section)
    for name, t in (("cell2location", c2l_means), ("NNLS", nn), ("stereoscope", stereo)):
        if not set(regions.index) <= set(t.index):
            raise SystemExit(f"her2st: {name} covers {len(t)} spots, not all {len(regions)} spots with a region")
    c2l_means, c2l_q05, nn, stereo = (t.loc[regions.index] for t in (c2l_means, c2l_q05, nn, stereo))

    methods = {
        # name: (score table for the AUROC, proportions)
        "cell2location": to_common(c2l_means),
        "cell2location_q05": to_common(c2l_q05),
        "cell2location_prop": proportions(to_common(c2l_means)),
        "stereoscope": proportions(stereo),
        "NNLS": to_common(nn),
        "NNLS_prop": proportions(to_common(nn)),
    }
    out: dict = {"section": section, "n_spots": int(len(regions)), "n_spots_without_region": unlabelled,
                 "regions": regions.value_counts().to_dict(), "aurocs": {}, "region_means": {},
                 "region_means_fine": {}}
    for name, scores in methods.items():
        out["aurocs"][name] = expected_pair_aurocs(scores.loc[regions.index], regions)
    for name, table in (("cell2location", c2l_means), ("stereoscope", stereo), ("NNLS", nn)):
        props = proportions(to_common(table)).reindex(columns=COMMON_TYPES)
        out["region_means"][name] = region_means(props, regions).round(4).to_dict(orient="index")
    out["region_means_fine"]["cell2location"] = region_means(proportions(c2l_means), regions).round(4) \
        .to_dict(orient="index")
    # cancer epithelial alone (cell2location and NNLS resolve it; stereoscope does not)
    for name, table in (("cell2location", c2l_means), ("NNLS", nn)):
        if "Cancer Epithelial" in table.columns:
            for region in ("cancer in situ", "invasive cancer"):
                out["aurocs"][name][f"{region} / Cancer Epithelial"] = auroc(table["Cancer Epithelial"],
                                                                           regions == region)
    training = sorted(results.glob("map_cells/**/*training*.json"))
    if training:
        out["map_training"] = json.loads(training[0].read_text())
    return out


def markdown(res: dict) -> str:
    lines = []
    pairs = list(res["aurocs"]["cell2location"])
    cols = ["cell2location", "cell2location_prop", "stereoscope", "NNLS", "NNLS_prop"]
    lines.append("| region / cell type | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for pair in pairs:
        vals = [res["aurocs"][c].get(pair, float("nan")) for c in cols]
        lines.append(f"| {pair} | " + " | ".join("–" if np.isnan(v) else f"{v:.3f}" for v in vals) + " |")
    lines.append("")
    for name in ("cell2location", "stereoscope", "NNLS"):
        table = pd.DataFrame(res["region_means"][name]).T
        lines.append(f"Mean proportion per region, {name}:")
        lines.append("")
        lines.append("| region (spots) | " + " | ".join(table.columns) + " |")
        lines.append("|---|" + "---:|" * table.shape[1])
        for region, row in table.iterrows():
            lines.append(f"| {region} ({res['regions'][region]}) | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


FIGURE_TYPES = ("Cancer Epithelial", "T-cells", "B-cells", "Myeloid", "CAFs")
REGION_COLOURS = {"cancer in situ": "#d62728", "invasive cancer": "#ff7f0e", "immune infiltrate": "#1f77b4",
                  "connective tissue": "#8c564b", "breast glands": "#e377c2", "adipose tissue": "#bcbd22",
                  "undetermined": "#c7c7c7"}


def figure(results: Path, data: Path, path: Path, section: str = SECTION) -> Path:
    """The pathologist's regions next to cell2location's q05 abundance of a few types, spot by spot (README)."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spots_h5ad = ad.read_h5ad(data / f"{section}.h5ad", backed="r")
    xy = pd.DataFrame(np.asarray(spots_h5ad.obsm["spatial"]), index=spots_h5ad.obs_names.astype(str),
                      columns=["x", "y"])
    regions, _ = read_regions(data, section)
    q05 = read_c2l(results, "q05", section)
    spots = xy.index.intersection(q05.index).intersection(regions.index)
    xy, q05, regions = xy.loc[spots], q05.loc[spots], regions.loc[spots]
    fig, grid = plt.subplots(2, 3, figsize=(12.5, 8.6))
    axes = grid.ravel()
    size = 34
    ax = axes[0]
    for name, colour in REGION_COLOURS.items():
        sel = regions == name
        if sel.any():
            ax.scatter(xy.x[sel], xy.y[sel], s=size, c=colour, label=f"{name} ({int(sel.sum())})", linewidths=0)
    ax.set_title("pathologist's regions", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8, frameon=False,
              markerscale=0.9, handletextpad=0.2, columnspacing=0.8)
    for ax, cell_type in zip(axes[1:], FIGURE_TYPES):
        values = q05[cell_type]
        points = ax.scatter(xy.x, xy.y, s=size, c=values, cmap="magma", vmin=0,
                            vmax=float(np.quantile(values, 0.992)), linewidths=0)
        ax.set_facecolor("black")
        ax.set_title(f"{cell_type} (q05 cells)", fontsize=10)
        fig.colorbar(points, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=8)
    for ax in axes:
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"her2st section {section}: the pathologist's regions and cell2location's maps (make demo)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make bench NAME=demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="the demo's --outdir")
    ap.add_argument("--data", type=Path, default=None,
                    help="the data folder (default testdata_build/her2st for H1, testdata_build/her2st_<SECTION>)")
    ap.add_argument("--section", default=SECTION, help="her2st section (default H1): tests/build_her2st.py --section")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--figure", type=Path, default=None,
                    help="also draw the regions next to a few q05 maps into this PNG (the README's picture)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = args.data or Path("testdata_build") / ("her2st" if args.section == SECTION else f"her2st_{args.section}")
    res = evaluate(args.results, data, args.section)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(markdown(res))
    if args.figure:
        print(f"figure: {figure(args.results, data, args.figure, args.section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
