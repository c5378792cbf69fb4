"""The benchmark suite's one entry point: `make bench` (lists them), `make bench NAME=<name> BENCH_ARGS="..."`,
or from the repository root `python -m benchmarks [<name> [options]]` (`<name> --help` for a benchmark's options).

Each benchmark is one script in this folder, run as its own process with the project's Python; it writes one
result file under benchmarks/results/ (named after the benchmark and a time stamp) and prints markdown tables.
`TINY` holds the options that make each of them a smoke test of a few minutes on 2 CPU cores
(benchmarks/test_suite.py runs them all that way). What each measures, and the recorded results, are in
docs/benchmarks.md; benchmarks/README.md is for whoever works on speed or accuracy next.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (script, what it measures)
BENCHMARKS = {
    "accuracy": ("accuracy.py", "the pipeline vs the tutorial by hand vs NNLS on simulated spots with known cell "
                 "counts: metrics, wall time, peak memory per step (--mode quick|full|tiny, --scale lymph|tutorial)"),
    "bar": ("bar.py", "the accuracy and wall-time bar: the pipeline's defaults vs the full tutorial (30,000 "
            "epochs) on two simulated designs"),
    "seeds": ("seed_spread.py", "the seed spread of both methods on the bar's designs (the bar is judged on "
              "seed means); needs a bar result (--bar-json)"),
    "epoch": ("likelihood_costs.py", "time per training epoch of both models at the tutorial's shapes, dense vs "
              "nonzero-count likelihood, and where each millisecond goes"),
    "loop": ("loop_costs.py", "time per full-batch mapping epoch at the bar's shapes: Lightning's loop vs the "
             "plain loop, per-tensor vs foreach Adam (and that all train the same model bit for bit)"),
    "memory": ("memory_model.py", "peak memory of map-cells against locations x genes x types, and the fit "
               "used to plan shards (assets/memory_model.json)"),
    "sharding": ("sharding.py", "sharded vs unsharded mapping: same answer, memory per task"),
    "scale": ("scale_run.py", "a many-location, several-section run through the whole pipeline with sharding"),
    "demo": ("her2st.py", "the demo's abundances against the pathologist's regions, stereoscope and NNLS "
             "(after make demo)"),
    "gpu": ("gpu_check.sh", "both training steps on a GPU at the tutorial's shapes, pipeline vs tutorial "
            "settings (made for the lent GPU machine; GPU_CHECK_DEVICE=cpu for a dry run)"),
}

# options that make each benchmark a few-minute smoke test (benchmarks/test_suite.py); `seeds` and `demo` read
# another run's output, so their tests prepare it first
TINY = {
    "accuracy": ["--mode", "tiny"],
    "bar": ["--designs", "lymph200_random1000_seed1", "--n-spots", "40", "--map-epochs", "60", "--ref-epochs", "6",
            "--samples", "10", "--pipeline-args", "--map_max_epochs 60 --ref_max_epochs 6"],
    "seeds": ["--pipeline-seeds", "5", "--tutorial-seeds", "", "--parallel", "1"],
    "epoch": ["--ref-cells", "600", "--spots", "120", "--genes", "400", "--epochs", "3", "--ref-epochs", "2",
              "--rounds", "1"],
    "loop": ["--designs", "lymph200_random1000_seed1", "--n-spots", "40", "--epochs", "12", "--warmup", "2",
             "--rounds", "1"],
    "memory": ["--sizes", "200x300x6,400x300x6,200x600x6,200x300x12", "--epochs", "3"],
    "sharding": ["--n-spots", "120", "--shards", "2", "--pipeline-args", "--map_max_epochs 60 --ref_max_epochs 6"],
    "scale": ["--n-locations", "600", "--genes", "300", "--types", "6", "--sections", "2",
              "--max-locations-per-model", "300", "--epochs", "3"],
    "demo": [],
    "gpu": [],
}
GPU_TINY_ENV = {"GPU_CHECK_SKIP_INSTALL": "1", "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_CELLS": "600",
                "GPU_CHECK_GENES": "300", "GPU_CHECK_SPOTS": "80", "GPU_CHECK_TYPES": "5", "GPU_CHECK_BATCHES": "2",
                "GPU_CHECK_REF_EPOCHS": "2", "GPU_CHECK_MAP_EPOCHS": "20", "GPU_CHECK_MEMORY_SHARDS": "2",
                "GPU_CHECK_MEMORY_EPOCHS": "3", "GPU_CHECK_BUDGET_S": "400"}


def command(name: str, args: list[str]) -> list[str]:
    """The command line that runs benchmark `name` with `args`."""
    script = HERE / BENCHMARKS[name][0]
    if script.suffix == ".sh":
        return ["bash", str(script), *args]
    return [sys.executable, str(script), *args]


def listing() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["Benchmarks (make bench NAME=<name> BENCH_ARGS=\"...\", or python -m benchmarks <name> ...; "
             "<name> --help for its options):", ""]
    for name, (script, what) in BENCHMARKS.items():
        lines.append(f"  {name:<{width}}  {what} [benchmarks/{script}]")
    lines += ["", "Results: benchmarks/results/; what they showed: docs/benchmarks.md."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name, args = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"bench: no benchmark named '{name}'.\n\n{listing()}", file=sys.stderr)
        return 2
    cmd = command(name, args)
    if name == "gpu" and args:
        print("bench: the gpu check takes its settings from GPU_CHECK_* environment variables, not options "
              "(see benchmarks/gpu_check.py)", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # the interpreter by path, bash from PATH
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
