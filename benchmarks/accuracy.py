"""`make bench NAME=accuracy`: accuracy, speed and memory of the pipeline vs the tutorial run by hand vs NNLS.

One run does, on one machine and with the same inputs, epochs and seed for both cell2location methods:

1. data with known truth: `--scale lymph` (default) simulates Visium-like spots from half of the real lymph
   node reference (benchmarks/simulate.py, the cell2location paper's design); `--scale tutorial` generates
   data of the tutorial's shapes (benchmarks/tutorial_scale.py);
2. (a) the pipeline, `nextflow run main.nf -profile local ...` with its defaults, the spots as one h5ad
   section; (b) benchmarks/tutorial_by_hand.py, the tutorial's calls in one Python process; (c) NNLS per
   spot on the pipeline's signatures (shared genes);
3. metrics (benchmarks/metrics.py) of q05 abundances (NNLS: its coefficients) against the true cell counts,
   wall time and peak RSS (os.wait4 on each subprocess; per pipeline step from the Nextflow trace);
4. prints one markdown table and writes benchmarks/results/bench_<scale>_<mode>_<timestamp>.json.

Modes: `quick` (default; fits in 30 min on 2 CPU cores), `full` (the tutorial's epochs and 1000 posterior
samples), `tiny` (a smoke test of the whole chain). Any setting can be overridden (--n-spots, --ref-epochs ...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HERE, REPO, STEP_MAP, TESTDATA, device, fmt, log, machine, pipeline_command,  # noqa: E402
                    read_trace, timed_subprocess, versions)

MODES = {
    # scale lymph: ~400 spots; quick settings measured to fit in 30 min on 2 cores (docs/benchmarks.md)
    "quick": {"n_spots": 400, "ref_epochs": 250, "map_epochs": 3000, "ref_samples": 200, "map_samples": 200},
    "full": {"n_spots": 2000, "ref_epochs": 250, "map_epochs": 30000, "ref_samples": 1000, "map_samples": 1000},
    "tiny": {"n_spots": 60, "ref_epochs": 10, "map_epochs": 100, "ref_samples": 10, "map_samples": 10},
}
# tutorial scale on a CPU: epochs cut so that a run finishes (said in the output and the JSON)
TUTORIAL_SCALE_CPU = {"ref_epochs": 2, "map_epochs": 30, "ref_samples": 10, "map_samples": 10}
def table(results: dict) -> str:
    head = ("| method | prop. r (per spot) | prop. RMSE | abundance r | AUPR | wall (s) | peak RSS (GB) "
            "| wall vs tutorial |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    tut_wall = results["tutorial_by_hand"]["wall_s"]
    for name, label in (("pipeline", "pipeline (nextflow, defaults)"), ("tutorial_by_hand", "tutorial by hand"),
                        ("nnls", "NNLS (pipeline signatures)")):
        r = results[name]
        m = r["metrics"]["overall"]
        ratio = f"{r['wall_s'] / tut_wall:.2f}x" if name != "nnls" else "n/a"
        lines.append(f"| {label} | {fmt(m['prop_pearson_spot'])} | {fmt(m['prop_rmse'])} | "
                     f"{fmt(m['abundance_pearson'])} | {fmt(m['aupr'])} | {fmt(r['wall_s'], 1)} | "
                     f"{fmt(r.get('peak_rss_gb'), 2)} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="make bench NAME=accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--scale", choices=["lymph", "tutorial"], default="lymph")
    ap.add_argument("--n-spots", type=int)
    ap.add_argument("--ref-epochs", type=int)
    ap.add_argument("--map-epochs", type=int)
    ap.add_argument("--ref-samples", type=int)
    ap.add_argument("--map-samples", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--panel", default="visium",
                    help="genes the simulated spots carry: 'visium' (the real lymph node section's 2000 genes), "
                         "'all', N random genes, or a gene-list file")
    ap.add_argument("--reference", type=Path, default=TESTDATA / "lymph_node" / "reference.h5ad")
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--tutorial-cells", type=int, default=None, help="--scale tutorial: fewer cells (debugging)")
    a = ap.parse_args(argv)

    settings = dict(MODES[a.mode])
    dev = device()
    reduced_note = None
    if a.scale == "tutorial":
        settings["n_spots"] = 4000
        if dev["accelerator"] == "cpu" and a.mode != "tiny":
            settings.update(TUTORIAL_SCALE_CPU)
            reduced_note = (f"tutorial scale on CPU: epochs reduced to ref {settings['ref_epochs']} / map "
                            f"{settings['map_epochs']}, {settings['ref_samples']}/{settings['map_samples']} posterior "
                            "samples; speed per epoch is what this measures, not accuracy")
    overridden = {}
    for key in ("n_spots", "ref_epochs", "map_epochs", "ref_samples", "map_samples"):
        if getattr(a, key) is not None and getattr(a, key) != settings[key]:
            overridden[key] = {"mode_default": settings[key], "used": getattr(a, key)}
            settings[key] = getattr(a, key)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{a.scale}_{a.mode}_{stamp}"
    work = (a.workdir / run_id).resolve()
    work.mkdir(parents=True, exist_ok=True)
    a.results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONWARNINGS="ignore::FutureWarning")
    mach = machine()  # load average at the start of the run
    log(f"run {run_id}: settings {settings}; device {dev['name']}; work {work}")
    if reduced_note:
        log(reduced_note)

    # 1. data with known truth
    t0 = time.perf_counter()
    if a.scale == "lymph":
        import simulate

        panel = str(TESTDATA / "lymph_node" / "visium" / "filtered_feature_bc_matrix.h5") if a.panel == "visium" else a.panel
        data = simulate.build(a.reference, work / "data", settings["n_spots"], a.seed, panel=panel)
    else:
        import tutorial_scale

        shape = dict(tutorial_scale.TUTORIAL_SHAPES, n_spots=settings["n_spots"])
        if a.tutorial_cells:
            shape["n_cells"] = a.tutorial_cells
        cache = a.workdir / ("tutorial_data_" + "_".join(f"{v}" for v in shape.values()) + f"_seed{a.seed}")
        data = tutorial_scale.generate(cache.resolve(), seed=a.seed, **shape)
    data_s = time.perf_counter() - t0
    log(f"data ready in {data_s:.0f} s: {data['design_summary'].get('cells_per_spot')}")
    truth = pd.read_csv(data["truth"], index_col=0)

    # 2a. the pipeline
    nf_cmd, nf_out = pipeline_command(work, data, dev, a.seed, [
        "--ref_max_epochs", settings["ref_epochs"], "--map_max_epochs", settings["map_epochs"],
        "--ref_num_samples", settings["ref_samples"], "--map_num_samples", settings["map_samples"]])
    pipe = timed_subprocess(nf_cmd, work, work / "pipeline.log", env)
    pipe["steps"] = read_trace(nf_out)
    pipe["peak_rss_gb_tasks"] = max(s["peak_rss_gb"] for s in pipe["steps"])
    log(f"pipeline: {pipe['wall_s']:.0f} s")
    pred_pipe = {s: pd.read_csv(nf_out / "map_cells" / "joint" / f"sim.{s}_cell_abundance_w_sf.csv", index_col=0)
                 for s in ("q05", "means")}

    # 2b. the tutorial by hand
    tut_out = work / "tutorial_out"
    tut_cmd = [sys.executable, HERE / "tutorial_by_hand.py", "--reference", data["reference"], "--spots", data["spots"],
               "--outdir", tut_out, "--ref-max-epochs", settings["ref_epochs"], "--map-max-epochs",
               settings["map_epochs"], "--ref-num-samples", settings["ref_samples"], "--map-num-samples",
               settings["map_samples"], "--accelerator", dev["accelerator"], "--seed", a.seed]
    tut = timed_subprocess(tut_cmd, work, work / "tutorial.log", env)
    tut.update(json.loads((tut_out / "timings.json").read_text()))
    log(f"tutorial by hand: {tut['wall_s']:.0f} s")
    pred_tut = {s: pd.read_csv(tut_out / f"{s}_cell_abundance_w_sf.csv", index_col=0) for s in ("q05", "means")}

    # 2c. NNLS on the pipeline's signatures
    import anndata as ad

    from metrics import evaluate, nnls_abundance

    spots = ad.read_h5ad(data["spots"])
    sig = pd.read_csv(nf_out / "train_reference" / "signatures.csv", index_col=0)
    t0 = time.perf_counter()
    pred_nnls = nnls_abundance(spots.X, spots.var_names, sig, spots.obs_names)
    nnls_res = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_gb": None,
                "n_genes": int(len(sig.index.intersection(spots.var_names)))}

    # 3. metrics
    pipe["metrics"] = evaluate(truth, pred_pipe["q05"])
    pipe["metrics_means"] = evaluate(truth, pred_pipe["means"])
    tut["metrics"] = evaluate(truth, pred_tut["q05"])
    tut["metrics_means"] = evaluate(truth, pred_tut["means"])
    nnls_res["metrics"] = evaluate(truth, pred_nnls)
    results = {"pipeline": pipe, "tutorial_by_hand": tut, "nnls": nnls_res}

    # per-step speed: pipeline task realtime vs the tutorial's wall for the same work
    tut_steps = {s["step"]: s["wall_s"] for s in tut["steps"]}
    per_step = []
    for s in pipe["steps"]:
        mapped = STEP_MAP.get(s["process"], [])
        t = sum(tut_steps.get(k, 0.0) for k in mapped) if mapped else None
        per_step.append({"step": s["process"], "pipeline_realtime_s": s["realtime_s"],
                         "pipeline_peak_rss_gb": s["peak_rss_gb"], "tutorial_steps": mapped, "tutorial_wall_s": t,
                         "ratio_pipeline_over_tutorial": round(s["realtime_s"] / t, 2) if t else None})
    per_step.append({"step": "import (tutorial: once; pipeline: inside every task)", "tutorial_wall_s": tut_steps.get("import")})
    ratios = {"total_wall": round(pipe["wall_s"] / tut["wall_s"], 3),
              "peak_rss": round(pipe["peak_rss_gb"] / tut["peak_rss_gb"], 3),
              "peak_rss_tasks_only": round(pipe["peak_rss_gb_tasks"] / tut["peak_rss_gb"], 3),
              "per_step": per_step}

    md = table(results)
    out = {
        "run_id": run_id, "date": dt.datetime.now().isoformat(timespec="seconds"), "scale": a.scale, "mode": a.mode,
        "settings": settings, "settings_overridden": overridden, "seed": a.seed, "reduced_epochs_note": reduced_note, "device": dev,
        "machine": {**mach, "load_avg_at_end": machine().get("load_avg")}, "versions": versions(), "data": {"seconds": round(data_s, 1), **data["design_summary"]},
        "results": results, "ratio_pipeline_over_tutorial": ratios, "table_markdown": md,
        "abundance_used": "q05_cell_abundance_w_sf (cell2location), NNLS coefficients; means in metrics_means",
        "workdir": str(work),
    }
    path = a.results / f"bench_{run_id}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=float))
    os.replace(tmp, path)

    print(f"\n## cell2location benchmark: {a.scale} scale, {a.mode} mode ({settings['n_spots']} spots, "
          f"ref {settings['ref_epochs']} / map {settings['map_epochs']} epochs, "
          f"{settings['ref_samples']}/{settings['map_samples']} posterior samples, seed {a.seed})\n")
    print(md)
    print(f"\nDevice: {dev['name']}" + ("" if dev["gpu_available"] else " (no GPU available: CPU only)")
          + f"; {out['machine'].get('cpus_usable')} CPU cores, {out['machine'].get('ram_gb')} GB RAM.")
    if reduced_note:
        print(f"NOTE: {reduced_note}.")
    if overridden:
        print("NOTE: settings changed from the " + a.mode + " defaults: " + ", ".join(
            f"{k} {v['mode_default']} -> {v['used']}" for k, v in overridden.items()) + ".")
    print("Per step, pipeline task realtime / tutorial wall: " + ", ".join(
        f"{p['step']} {p['pipeline_realtime_s']:.1f}/{p['tutorial_wall_s']:.1f} s"
        for p in per_step if p.get("tutorial_wall_s") is not None and "pipeline_realtime_s" in p)
        + f"; tutorial import {tut_steps.get('import', float('nan')):.1f} s.")
    print(f"Load average (1 min) before/after: pipeline {pipe['load_avg_before'][0]}/{pipe['load_avg_after'][0]}, "
          f"tutorial {tut['load_avg_before'][0]}/{tut['load_avg_after'][0]} (other jobs share this machine).")
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
