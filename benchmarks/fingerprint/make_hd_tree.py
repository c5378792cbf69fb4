"""A Visium HD Space Ranger output tree of realistic file names and sizes, to time the samplesheet's folder
fingerprint (issue 31). Files over 1 MiB are sparse (`truncate`): they take no disk and the fingerprint only
stats them; files up to 1 MiB hold random bytes (the fingerprint reads those).

    python benchmarks/fingerprint/make_hd_tree.py /tmp/hd_tree      # then: nextflow run benchmarks/fingerprint
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KB, MB, GB = 1024, 1024**2, 1024**3


def put(path: Path, size: int, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if size > MB:
        with open(path, "wb") as handle:
            handle.truncate(size)
    else:
        path.write_bytes(rng(size))


def main(root: Path) -> None:
    rng = os.urandom
    outs = root / "outs"
    # sizes of a 6.5 x 6.5 mm Visium HD run (Space Ranger 3.x outs), rounded
    for name, size in {"molecule_info.h5": 12 * GB, "feature_slice.h5": 6 * GB, "cloupe_008um.cloupe": 2 * GB,
                       "web_summary.html": 6 * MB, "metrics_summary.csv": 3 * KB, "probe_set.csv": 900 * KB}.items():
        put(outs / name, size, rng)
    for name, size in {"tissue_hires_image.png": 6 * MB, "tissue_lowres_image.png": 600 * KB,
                       "aligned_fiducials.jpg": 2 * MB, "detected_tissue_image.jpg": 900 * KB,
                       "cytassist_image.tiff": 12 * MB, "aligned_tissue_image.jpg": 3 * MB,
                       "scalefactors_json.json": 400}.items():
        put(outs / "spatial" / name, size, rng)
    for um, scale in ((2, 16.0), (8, 1.0), (16, 0.25)):
        b = outs / "binned_outputs" / f"square_{um:03d}um"
        for kind in ("filtered", "raw"):
            put(b / f"{kind}_feature_bc_matrix.h5", int((2.2 if kind == "raw" else 1.6) * scale * 400 * MB), rng)
            put(b / f"{kind}_feature_bc_matrix" / "matrix.mtx.gz", int(scale * 700 * MB), rng)
            put(b / f"{kind}_feature_bc_matrix" / "barcodes.tsv.gz", int(scale * 4 * MB), rng)
            put(b / f"{kind}_feature_bc_matrix" / "features.tsv.gz", 330 * KB, rng)
        put(b / "spatial" / "tissue_positions.parquet", int(scale * 25 * MB), rng)
        put(b / "spatial" / "scalefactors_json.json", 400, rng)
        for image in ("tissue_hires_image.png", "tissue_lowres_image.png", "aligned_fiducials.jpg",
                      "detected_tissue_image.jpg", "cytassist_image.tiff", "aligned_tissue_image.jpg"):
            put(b / "spatial" / image, 6 * MB if "hires" in image or "tiff" in image else 700 * KB, rng)
        if um == 2:
            continue
        a = b / "analysis"
        clusterings = ["gene_expression_graphclust"] + [f"gene_expression_kmeans_{k}_clusters" for k in range(2, 11)]
        for c in clusterings:
            put(a / "clustering" / c / "clusters.csv", int(scale * 12 * MB), rng)
            put(a / "diffexp" / c / "differential_expression.csv", int(scale * 3 * MB) if um == 8 else 700 * KB, rng)
        for red, files in (("pca", ["components.csv", "dispersion.csv", "features_selected.csv", "projection.csv",
                                    "variance.csv"]), ("umap", ["projection.csv"]), ("tsne", ["projection.csv"])):
            for f in files:
                big = f == "projection.csv" or f == "components.csv"
                put(a / red / "gene_expression_10_components" / f, int(scale * 20 * MB) if big else 200 * KB, rng)
    files = [p for p in root.rglob("*") if p.is_file()]
    small = [p for p in files if p.stat().st_size <= MB]
    print(f"{root}: {len(files)} files, {sum(p.stat().st_size for p in files) / GB:.1f} GB apparent; "
          f"{len(small)} files <= 1 MiB, {sum(p.stat().st_size for p in small) / MB:.1f} MB of them")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
