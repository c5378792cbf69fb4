"""Peak memory of MAP_CELLS against its size, and the fit that the pipeline uses to plan shards (issue 10).

For each size (locations N x shared genes G x cell types T) this draws tutorial-like synthetic spots and
signatures (benchmarks/tutorial_scale.py's gene profiles), runs `c2l map-cells` as its own process for a few
epochs on the CPU (one thread, fixed epochs, analytic export, outputs written as in the pipeline), and records the
peak RSS of that process (os.wait4's ru_maxrss). It then fits, by least squares,

    peak_gb = base_gb + per_location_gene * N * G + per_location_type * N * T

and writes the measurements and the fit to assets/memory_model.json (read by the workflow, to size shards, and by
map-cells, to log its estimate and write it into <prefix>_training.json).

    .venv/bin/python benchmarks/memory_model.py [--sizes 1000x2000x20,...] [--epochs 10] [--write-asset]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPO, log, machine, timed_subprocess, versions  # noqa: E402

SIZES = "1000x2000x20,4000x2000x20,2000x8000x20,8000x3000x34,4000x6000x50,12000x3000x20"
ASSET = REPO / "assets" / "memory_model.json"


def draw(outdir: Path, n: int, g: int, t: int, seed: int = 0) -> tuple[Path, Path]:
    """spots.h5ad (N x G counts, positions) and signatures.csv (G x T) like tutorial_scale's, small and fast."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from simulate import simulate_composition
    from tutorial_scale import MEAN_LIBRARY, _nb

    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.3, 1.0, size=g)
    prof = np.tile(base / base.sum(), (t, 1)) * np.exp(rng.normal(0, 0.2, size=(t, g)))
    for k in range(t):
        markers = rng.choice(g, size=max(1, int(0.05 * g)), replace=False)
        prof[k, markers] *= np.exp(rng.normal(1.5, 0.5, size=len(markers)))
    prof /= prof.sum(axis=1, keepdims=True)
    genes = [f"gene{i:05d}" for i in range(g)]
    types = [f"type_{k:02d}" for k in range(t)]
    comp = simulate_composition(types, n, seed, n_zones=8, n_uniform=min(6, t - 1))
    blocks = []
    counts = comp.counts.to_numpy(float)
    for start in range(0, n, 2000):
        sl = slice(start, min(n, start + 2000))
        mu = rng.gamma(20.0, 1.0 / 20.0, size=(sl.stop - sl.start, 1)) * (counts[sl] @ (MEAN_LIBRARY * prof))
        blocks.append(sp.csr_matrix(_nb(rng, mu)))
    spots = ad.AnnData(X=sp.vstack(blocks).tocsr(), obs=pd.DataFrame(index=comp.counts.index.astype(str)),
                       var=pd.DataFrame(index=genes))
    spots.obsm["spatial"] = comp.coords
    spots.write_h5ad(outdir / "spots.h5ad")
    pd.DataFrame((MEAN_LIBRARY / 10) * prof.T, index=genes, columns=types).to_csv(outdir / "signatures.csv")
    return outdir / "spots.h5ad", outdir / "signatures.csv"


def fit(points: list[dict]) -> dict:
    """Least squares of peak_gb on [1, N*G, N*T], with non-negative slopes (the smallest model is all base)."""
    A = np.array([[1.0, p["n_locations"] * p["n_genes"], p["n_locations"] * p["n_types"]] for p in points])
    y = np.array([p["peak_rss_gb"] for p in points])
    scale = A.max(axis=0)
    coef, *_ = np.linalg.lstsq(A / scale, y, rcond=None)
    coef = coef / scale
    if coef[2] < 0:  # N*T adds nothing measurable: refit without it
        c2, *_ = np.linalg.lstsq(A[:, :2] / scale[:2], y, rcond=None)
        coef = np.array([*(c2 / scale[:2]), 0.0])
    pred = A @ coef
    return {"base_gb": float(coef[0]), "gb_per_location_gene": float(coef[1]), "gb_per_location_type": float(coef[2]),
            "max_relative_error": float(np.max(np.abs(pred - y) / y)),
            "predicted_gb": [round(float(v), 3) for v in pred]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="make bench NAME=memory", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=SIZES, help="comma-separated NxGxT")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--write-asset", action="store_true", help=f"write the fit to {ASSET.relative_to(REPO)}")
    a = ap.parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = (a.workdir / f"memory_{stamp}").resolve()
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONWARNINGS="ignore::FutureWarning")
    points = []
    for size in a.sizes.split(","):
        n, g, t = (int(x) for x in size.split("x"))
        d = work / size
        spots, sig = draw(d / "data", n, g, t)
        cmd = [REPO / "bin" / "c2l", "map-cells", "--section", f"sim={spots}", "--signatures", sig,
               "--max-epochs", a.epochs, "--min-epochs", 1, "--no-early-stop", "--threads", 1, "--device", "cpu",
               "--outdir", d / "out", "--prefix", "m"]
        res = timed_subprocess(cmd, d, d / "map_cells.log", env)
        summary = json.loads((d / "out" / "m_training.json").read_text())
        points.append({"n_locations": n, "n_genes": g, "n_types": t, "peak_rss_gb": res["peak_rss_gb"],
                       "wall_s": res["wall_s"], "epochs": summary.get("epochs"),
                       "estimate_before_fit": summary.get("memory_estimate_gb")})
        log(f"{size}: peak RSS {res['peak_rss_gb']:.2f} GB, {res['wall_s']:.0f} s")
    model = fit(points)
    out = {"run_id": f"memory_{stamp}", "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(), "epochs": a.epochs, "measurements": points, "fit": model}
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"memory_model_{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print("| N locations | G genes | T types | N x G (1e6) | peak RSS (GB) | fit (GB) |\n|---:|---:|---:|---:|---:|---:|")
    for p, f in zip(points, model["predicted_gb"]):
        print(f"| {p['n_locations']} | {p['n_genes']} | {p['n_types']} | {p['n_locations'] * p['n_genes'] / 1e6:.1f} "
              f"| {p['peak_rss_gb']:.2f} | {f:.2f} |")
    print(f"fit: {model}\nJSON: {path}")
    if a.write_asset:
        asset = {"source": f"benchmarks/results/{path.name}",
                 "formula": "peak_gb = base_gb + gb_per_location_gene * N * G + gb_per_location_type * N * T",
                 "measured_on": f"CPU (peak RSS of the whole map-cells process), {a.epochs} epochs, analytic export",
                 **{k: model[k] for k in ("base_gb", "gb_per_location_gene", "gb_per_location_type")}}
        ASSET.write_text(json.dumps(asset, indent=2) + "\n")
        print(f"wrote {ASSET}")


if __name__ == "__main__":
    main()
