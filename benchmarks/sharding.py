"""Sharded against unsharded mapping on simulated data (issue 10): same answer, less memory per task.

One simulated data set (benchmarks/simulate.py: spots drawn from real lymph node cells with known composition),
split into two sections by position; the pipeline at its defaults (training stops at convergence) run three
times in one launch folder with -resume (so READ_VISIUM and the reference are trained once and shared): one joint
model, then --max_locations_per_model N/2 and N/4 (2 and 4 shards, stratified by section). Reports for each
sharded run the per-cell-type Pearson r of q05 with the unsharded run, both sets of ground-truth metrics, and the
peak RSS and time of every MAP_CELLS task (from the trace). Writes benchmarks/results/sharding_<stamp>.json.

    .venv/bin/python benchmarks/sharding.py [--n-spots 1200] [--seed 2]
    .venv/bin/python benchmarks/sharding.py --memory 20000x3000x34   # peak RSS per task at 1, 2, 4 shards
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPO, TESTDATA, fmt, log, machine, read_trace, timed_subprocess, versions  # noqa: E402

METRICS = ("prop_pearson_spot", "prop_rmse", "abundance_pearson", "aupr")
BAR = {"q05_pearson_median_min": 0.98, "metric_tolerance": 0.01}
SECTIONS = ("left", "right")  # the two sections split_sections cuts by x


def split_sections(spots: Path, out: Path) -> list[str]:
    """Two sections (left / right half by x) as h5ad files; returns their ids."""
    import anndata as ad

    adata = ad.read_h5ad(spots)
    x = np.asarray(adata.obsm["spatial"])[:, 0]
    ids = []
    for name, mask in zip(SECTIONS, (x <= np.median(x), x > np.median(x))):
        part = adata[mask].copy()
        part.obs["sample"] = name
        part.write_h5ad(out / f"{name}.h5ad")
        ids.append(name)
    return ids


def map_summary(outdir: Path, tag: str | None) -> dict:
    """Epochs, rate steps and the location weight of one MAP_CELLS task, from its training JSON."""
    joint = outdir / "map_cells" / "joint"
    shard = (tag or "").split(" ")[-1]
    path = joint / "shards" / f"joint.{shard}_training.json" if shard.startswith("shard-") else joint / "joint_training.json"
    if not path.exists():
        return {}
    j = json.loads(path.read_text())
    return {"epochs": j.get("epochs"), "lr_steps_at": [e["epoch"] for e in j.get("lr_events", [])],
            "location_weight": j.get("model", {}).get("location_weight"),
            "train_seconds": j.get("train_seconds")}


def q05_of(outdir: Path, ids: list[str]) -> pd.DataFrame:
    tables = []
    for s in ids:
        t = pd.read_csv(outdir / "map_cells" / "joint" / f"{s}.q05_cell_abundance_w_sf.csv", index_col=0)
        tables.append(t)
    return pd.concat(tables)


def memory_per_task(size: str, counts: list[int], epochs: int, work: Path) -> list[dict]:
    """Peak RSS of one map-cells task (the first shard) at each shard count, on synthetic data of `size` (NxGxT)."""
    from memory_model import draw

    n, g, t = (int(x) for x in size.split("x"))
    spots, sig = draw(work / "data", n, g, t)
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONWARNINGS="ignore::FutureWarning")
    rows = []
    for count in counts:
        out = work / f"shards_{count}"
        shard = [] if count == 1 else ["--shard", f"1/{count}"]
        cmd = [REPO / "bin" / "c2l", "map-cells", "--section", f"sim={spots}", "--signatures", sig, *shard,
               "--max-epochs", epochs, "--min-epochs", 1, "--no-early-stop", "--threads", 1, "--device", "cpu",
               "--outdir", out, "--prefix", "m"]
        res = timed_subprocess(cmd, work, work / f"shards_{count}.log", env)
        summary = json.loads((out / "m_training.json").read_text())
        rows.append({"shards": count, "locations": summary["model"]["n_locations"], "peak_rss_gb": res["peak_rss_gb"],
                     "estimate_gb": summary["memory_estimate_gb"], "seconds_per_epoch": summary["seconds_per_epoch"]})
        log(f"{count} shard(s): {rows[-1]}")
    return rows


def main(argv: list[str] | None = None) -> None:
    import simulate
    from metrics import evaluate, per_type_pearson

    ap = argparse.ArgumentParser(prog="make bench NAME=sharding", description=__doc__.splitlines()[0])
    ap.add_argument("--memory", metavar="NxGxT", default=None,
                    help="only measure the peak RSS of one map-cells task at 1, 2, 4 shards on synthetic data of "
                         "this size (no Nextflow); e.g. 20000x3000x34")
    ap.add_argument("--n-spots", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--shards", default="2,4", help="shard counts to compare with the unsharded run")
    ap.add_argument("--repeat-seed", type=int, default=None,
                    help="also the unsharded run with this training seed (same data): how far another seed moves the "
                         "answer, the scale for the shards' agreement")
    ap.add_argument("--same-path", type=int, default=None, metavar="N",
                    help="also the unsharded model with --map_level_epochs N (the default is every run's path: "
                         "0 shows how far the plateau-driven path lands from it)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier run's work folder: its data, its Nextflow cache, and the results of the runs that "
                         "finished there (taken as they are, not rerun)")
    ap.add_argument("--pipeline-args", default="", help="options added to every pipeline run (smoke tests: fewer epochs)")
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = a.reuse.resolve() if a.reuse else (a.workdir / f"sharding_{stamp}").resolve()
    work.mkdir(parents=True, exist_ok=bool(a.reuse))
    if a.memory:
        rows = memory_per_task(a.memory, [1, 2, 4], 5, work)
        a.results.mkdir(parents=True, exist_ok=True)
        path = a.results / f"sharding_memory_{stamp}.json"
        path.write_text(json.dumps({"run_id": f"sharding_memory_{stamp}", "size": a.memory, "machine": machine(),
                                    "versions": versions(), "epochs": 5, "tasks": rows}, indent=2))
        print("| shards | locations per task | peak RSS (GB) | estimate (GB) |\n|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['shards']} | {r['locations']} | {r['peak_rss_gb']:.2f} | {r['estimate_gb']} |")
        print(f"JSON: {path}")
        return
    panel = str(TESTDATA / "lymph_node" / "visium" / "filtered_feature_bc_matrix.h5")
    d = work / "data"
    if a.reuse and (d / "design.json").exists():  # as written: rewriting them would change their dates (a cache miss)
        data = {"reference": str(d / "reference_half.h5ad"), "spots": str(d / "spots.h5ad"),
                "truth": str(d / "true_counts.csv"), "design": str(d / "design.json"),
                "design_summary": json.loads((d / "design.json").read_text())}
        ids = list(SECTIONS)
    else:
        data = simulate.build(TESTDATA / "lymph_node" / "reference.h5ad", d, a.n_spots, a.seed, panel=panel)
        ids = split_sections(Path(data["spots"]), d)
    truth = pd.read_csv(data["truth"], index_col=0)
    sheet = work / "samplesheet.csv"
    sheet.write_text("sample,h5ad\n" + "".join(f"{s},{work / 'data' / f'{s}.h5ad'}\n" for s in ids))
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               NXF_ANSI_LOG="false", NXF_OFFLINE="true")
    runs = {}
    plan = [(1, a.seed, None)] + [(int(k), a.seed, None) for k in a.shards.split(",")]
    if a.repeat_seed is not None:
        plan.append((1, a.repeat_seed, None))
    if a.same_path is not None:
        plan.append((1, a.seed, a.same_path))
    for count, seed, level in plan:
        name = ("unsharded" if count == 1 else f"{count}_shards") + ("" if seed == a.seed else f"_seed{seed}") + \
            ("" if level is None else f"_level{level}")
        extra = [] if count == 1 else ["--max_locations_per_model", str(-(-a.n_spots // count))]
        if level is not None:
            extra += ["--map_level_epochs", str(level)]
        out = work / name
        cmd = ["nextflow", "run", REPO / "main.nf", "-profile", "local", "-resume", "-work-dir", work / "nf-work",
               "--input", sheet, "--reference", data["reference"], "--labels_key", "cell_type", "--batch_key",
               "sample", "--outdir", out, "--seed", seed, *extra, *shlex.split(a.pipeline_args)]
        if a.reuse and (out / "map_cells").is_dir() and (work / f"{name}.json").exists():
            res = json.loads((work / f"{name}.json").read_text())  # finished in the earlier run: as it was
            log(f"{name}: reused from {out}")
        else:
            res = timed_subprocess(cmd, work, work / f"{name}.log", env)
            (work / f"{name}.json").write_text(json.dumps({"wall_s": res["wall_s"]}))
        trace = read_trace(out)
        maps = [{"tag": r.get("tag"), "status": r.get("status"), "realtime_s": r.get("realtime_s"),
                 "peak_rss_gb": r.get("peak_rss_gb"), **map_summary(out, r.get("tag"))}
                for r in trace if r["process"] == "MAP_CELLS"]
        merge = [r for r in trace if r["process"] == "MERGE_SHARDS"]
        q05 = q05_of(out, ids)
        q05.index = [str(i) for i in q05.index]
        runs[name] = {"shards": count, "seed": seed, "wall_s": res["wall_s"], "map_cells_tasks": maps,
                      "merge_realtime_s": merge[0]["realtime_s"] if merge else None,
                      "metrics": evaluate(truth, q05)["overall"], "_q05": q05}
        log(f"{name}: {len(maps)} MAP_CELLS task(s), peak RSS {[m['peak_rss_gb'] for m in maps]} GB")
    repeat = next((r for n, r in runs.items() if n.startswith("unsharded_seed")), None)
    same = next((r for n, r in runs.items() if n.startswith("unsharded_level")), None)

    def agreement(reference: dict, q: pd.DataFrame, metrics: dict) -> dict:
        """A run's q05 and metrics against a reference run's (an unsharded one), and whether the bar is met."""
        per_type = per_type_pearson(reference["_q05"], q)
        out = {"q05_pearson_with_unsharded": per_type, "q05_pearson_median": float(np.median(list(per_type.values()))),
               "q05_pearson_min": float(min(per_type.values())),
               "metric_differences": {m: metrics[m] - reference["metrics"][m] for m in METRICS}}
        out["bar_met"] = bool(out["q05_pearson_median"] >= BAR["q05_pearson_median_min"] and all(
            abs(d) <= BAR["metric_tolerance"] for d in out["metric_differences"].values()))
        return out

    for name, r in runs.items():
        if name == "unsharded":
            continue
        q = r["_q05"]
        if repeat is not None and not name.startswith("unsharded_seed"):
            other = per_type_pearson(repeat["_q05"], q)
            r["q05_pearson_with_unsharded_other_seed"] = other
            r["q05_pearson_median_other_seed"] = float(np.median(list(other.values())))
        r.update(agreement(runs["unsharded"], q, r["metrics"]))
        if same is not None and not name.startswith("unsharded"):  # against the unsharded model on the same path
            r["same_path"] = agreement(same, q, r["metrics"])
    for r in runs.values():
        del r["_q05"]
    lines = ["| run | MAP_CELLS tasks | locations per task | peak RSS per task (GB) | prop. r | RMSE | abundance r | "
             "AUPR | q05 r with unsharded (median / min) |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        m = r["metrics"]
        rss = ", ".join(fmt(t["peak_rss_gb"], 2) for t in r["map_cells_tasks"])
        qr = "" if name == "unsharded" else f"{r['q05_pearson_median']:.3f} / {r['q05_pearson_min']:.3f}"
        if "q05_pearson_median_other_seed" in r:
            qr += f" (other seed: {r['q05_pearson_median_other_seed']:.3f})"
        if "same_path" in r:
            sp = r["same_path"]
            qr += (f"; same path: {sp['q05_pearson_median']:.3f} / {sp['q05_pearson_min']:.3f}, metrics within "
                   f"{max(abs(d) for d in sp['metric_differences'].values()):.3f}")
        lines.append(f"| {name} | {len(r['map_cells_tasks'])} | ~{a.n_spots // r['shards']} | {rss} | "
                     + " | ".join(fmt(m[k]) for k in METRICS) + f" | {qr} |")
    md = "\n".join(lines)
    out = {"run_id": f"sharding_{stamp}", "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(), "n_spots": a.n_spots, "seed": a.seed, "sections": ids,
           "design": data["design_summary"], "bar": BAR, "runs": runs, "table_markdown": md, "workdir": str(work)}
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"sharding_{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print(md)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
