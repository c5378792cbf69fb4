"""At scale on the CPU (issue 10): >= 50,000 locations end to end through Nextflow, sharded, peak RSS per task.

Draws tutorial-like synthetic spots and signatures (benchmarks/memory_model.py: draw; default 60,000 locations x
3,000 genes x 34 cell types), splits them into three sections by position, and runs the pipeline with the
signatures given (no reference training), few mapping epochs, and a memory budget (--gpu_memory_gb) small enough
that the memory model splits the joint model into shards. Reports every task's peak RSS and time (trace), each
shard's memory estimate against its measured peak, the merged outputs' layout and the ground-truth metrics (few
epochs: a check of the machinery, not of accuracy). Writes benchmarks/results/scale_run_<stamp>.json.

    .venv/bin/python benchmarks/scale_run.py [--n-locations 60000] [--genes 3000] [--types 34] [--gpu-memory-gb 4]
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

from common import REPO, log, machine, read_trace, timed_subprocess, versions  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    import anndata as ad

    from memory_model import draw

    ap = argparse.ArgumentParser(prog="make bench NAME=scale", description=__doc__.splitlines()[0])
    ap.add_argument("--n-locations", type=int, default=60000)
    ap.add_argument("--genes", type=int, default=3000)
    ap.add_argument("--types", type=int, default=34)
    ap.add_argument("--sections", type=int, default=3)
    ap.add_argument("--gpu-memory-gb", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-locations-per-model", type=int, default=None,
                    help="shard at this many locations instead of by the memory budget (smoke tests)")
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = (a.workdir / f"scale_{stamp}").resolve()
    data = work / "data"
    spots, sig = draw(data, a.n_locations, a.genes, a.types)
    whole = ad.read_h5ad(spots)
    x = np.asarray(whole.obsm["spatial"])[:, 0]
    cuts = np.quantile(x, np.linspace(0, 1, a.sections + 1))
    rows = ["sample,h5ad"]
    for i in range(a.sections):
        mask = (x >= cuts[i]) & ((x < cuts[i + 1]) if i < a.sections - 1 else (x <= cuts[i + 1]))
        name = f"section{i + 1}"
        whole[mask].copy().write_h5ad(data / f"{name}.h5ad")
        rows.append(f"{name},{data / f'{name}.h5ad'}")
    sheet = work / "samplesheet.csv"
    sheet.write_text("\n".join(rows) + "\n")
    del whole
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               NXF_ANSI_LOG="false", NXF_OFFLINE="true")
    out = work / "results"
    cmd = ["nextflow", "run", REPO / "main.nf", "-profile", "local", "-work-dir", work / "nf-work", "--input", sheet,
           "--signatures", sig, "--outdir", out, "--map_max_epochs", a.epochs, "--map_min_epochs", 1,
           "--gpu_memory_gb", a.gpu_memory_gb]
    if a.max_locations_per_model:
        cmd += ["--max_locations_per_model", a.max_locations_per_model]
    res = timed_subprocess(cmd, work, work / "pipeline.log", env)
    trace = read_trace(out)
    shards = {}
    for p in sorted((out / "map_cells" / "joint" / "shards").glob("*_training.json")):
        s = json.loads(p.read_text())
        shards[s["shard"]["index"]] = {"locations": s["model"]["n_locations"], "genes": s["model"]["n_shared_genes"],
                                       "estimate_gb": s["memory_estimate_gb"], "epochs": s["epochs"],
                                       "seconds_per_epoch": s["seconds_per_epoch"]}
    maps = [r for r in trace if r["process"] == "MAP_CELLS"]
    for r in maps:
        index = int(r["tag"].split("shard-")[1].split("-of-")[0])
        shards[index]["peak_rss_gb"] = r["peak_rss_gb"]
        shards[index]["realtime_s"] = r["realtime_s"]
    merged = json.loads((out / "map_cells" / "joint" / "joint_training.json").read_text())
    sections = {}
    for i in range(a.sections):
        name = f"section{i + 1}"
        h5 = ad.read_h5ad(out / "map_cells" / "joint" / f"{name}.cell2location.h5ad", backed="r")
        sections[name] = {"locations": int(h5.n_obs),
                          "per_shard": {int(k): int(v) for k, v in h5.obs["c2l_shard"].value_counts().items()}}
    figures = sorted(str(p.relative_to(out)) for p in (out / "plot_spatial").rglob("*.png"))
    tasks = [{k: r[k] for k in ("process", "tag", "status", "realtime_s", "peak_rss_gb")} for r in trace]
    result = {"run_id": f"scale_{stamp}", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "versions": versions(), "n_locations": a.n_locations, "genes": a.genes,
              "types": a.types, "gpu_memory_gb": a.gpu_memory_gb, "max_locations_per_model": a.max_locations_per_model,
              "epochs": a.epochs, "wall_s": res["wall_s"],
              "n_shards": merged["n_shards"], "shards": shards, "sections": sections, "tasks": tasks,
              "figures": figures, "workdir": str(work)}
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"scale_run_{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    print("| task | tag | time (s) | peak RSS (GB) |\n|---|---|---:|---:|")
    for t in tasks:
        print(f"| {t['process']} | {t['tag']} | {t['realtime_s']:.0f} | {t['peak_rss_gb']:.2f} |")
    print("\n| shard | locations | estimate (GB) | peak RSS (GB) |\n|---:|---:|---:|---:|")
    for i, s in sorted(shards.items()):
        print(f"| {i} | {s['locations']} | {s['estimate_gb']} | {s.get('peak_rss_gb')} |")
    log(f"{a.n_locations} locations in {merged['n_shards']} shards, {res['wall_s']:.0f} s; JSON: {path}")


if __name__ == "__main__":
    main()
