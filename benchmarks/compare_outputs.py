"""Compare two --outdir trees of the pipeline file by file: the same names, and the same numbers.

For a change that must not change results (a refactor): run the same profile with the same seed before and
after, then

    .venv/bin/python benchmarks/compare_outputs.py BEFORE_OUTDIR AFTER_OUTDIR

CSV: same shape, index and columns, values within --rtol; h5ad: X, obs columns, obsm tables and var names;
JSON: same keys, numbers within --rtol except timings; PNG: same pixel size. pipeline_info/ and
multiqc/multiqc_report_data/ (timestamps, the run's paths) are compared by name only. Prints one line per difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TIMING = re.compile(r"seconds|_s$|elapsed|date|time", re.I)


def files(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            rel = str(p.relative_to(root))
            if rel.startswith("pipeline_info/"):
                rel = re.sub(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", "<stamp>", rel)
            out[rel] = p
    return out


def close(a, b, rtol: float) -> bool:
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=1e-8, equal_nan=True)


def compare_json(a, b, rtol: float, where: str, diffs: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            diffs.append(f"{where}: keys differ: {sorted(set(a) ^ set(b))}")
        for k in set(a) & set(b):
            if not TIMING.search(str(k)):
                compare_json(a[k], b[k], rtol, f"{where}.{k}", diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_json(x, y, rtol, f"{where}[{i}]", diffs)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not close(a, b, rtol):
            diffs.append(f"{where}: {a} != {b}")
    elif a != b:
        diffs.append(f"{where}: {a!r} != {b!r}")


def compare_file(name: str, a: Path, b: Path, rtol: float, diffs: list[str]) -> None:
    if name.startswith(("pipeline_info/", "multiqc/multiqc_report_data/")):  # timestamps, paths of the run
        return
    if name.endswith(".csv"):
        x, y = pd.read_csv(a, index_col=0), pd.read_csv(b, index_col=0)
        if x.shape != y.shape or list(x.columns) != list(y.columns) or list(x.index) != list(y.index):
            diffs.append(f"{name}: shape/labels {x.shape} vs {y.shape}")
            return
        num = x.select_dtypes("number").columns
        if len(num) and not close(x[num], y[num], rtol):
            diffs.append(f"{name}: values differ (max abs {np.nanmax(np.abs(x[num].to_numpy(float) - y[num].to_numpy(float))):.3g})")
        other = [c for c in x.columns if c not in num]
        if other and not x[other].astype(str).equals(y[other].astype(str)):
            diffs.append(f"{name}: text columns differ")
    elif name.endswith(".h5ad"):
        import anndata as ad

        x, y = ad.read_h5ad(a), ad.read_h5ad(b)
        if x.shape != y.shape or list(x.var_names) != list(y.var_names) or list(x.obs_names) != list(y.obs_names):
            diffs.append(f"{name}: shape/names {x.shape} vs {y.shape}")
            return
        xa = x.X.toarray() if hasattr(x.X, "toarray") else np.asarray(x.X)
        ya = y.X.toarray() if hasattr(y.X, "toarray") else np.asarray(y.X)
        if not close(xa, ya, rtol):
            diffs.append(f"{name}: X differs")
        if sorted(x.obs.columns) != sorted(y.obs.columns):
            diffs.append(f"{name}: obs columns {sorted(x.obs.columns)} vs {sorted(y.obs.columns)}")
        if sorted(x.obsm) != sorted(y.obsm):
            diffs.append(f"{name}: obsm keys {sorted(x.obsm)} vs {sorted(y.obsm)}")
        for k in set(x.obsm) & set(y.obsm):
            if not close(pd.DataFrame(x.obsm[k]).to_numpy(float), pd.DataFrame(y.obsm[k]).to_numpy(float), rtol):
                diffs.append(f"{name}: obsm['{k}'] differs")
    elif name.endswith(".json"):
        compare_json(json.loads(a.read_text()), json.loads(b.read_text()), rtol, name, diffs)
    elif name.endswith(".png"):
        if a.read_bytes()[16:24] != b.read_bytes()[16:24]:
            diffs.append(f"{name}: image size differs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-5)
    a = ap.parse_args()
    fa, fb = files(a.before), files(a.after)
    diffs = [f"only in {a.before}: {n}" for n in sorted(set(fa) - set(fb))]
    diffs += [f"only in {a.after}: {n}" for n in sorted(set(fb) - set(fa))]
    compared = 0
    for name in sorted(set(fa) & set(fb)):
        if "_model/" in name or name.endswith((".pt", ".html", ".txt")):
            continue
        compare_file(name, fa[name], fb[name], a.rtol, diffs)
        compared += 1
    for d in diffs:
        print(d)
    print(f"{compared} files compared, {len(set(fa) & set(fb))} in both, {len(diffs)} difference(s)")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
