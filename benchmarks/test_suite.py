"""The benchmark suite through its entry point (`python -m benchmarks NAME`), each benchmark at the tiny size of
`__main__.TINY`: they run from a clean clone and write their result file. The numbers are not checked here (a
few epochs measure nothing); the shape of what they write is. The demo's scoring runs on a small her2st run in
tests/test_demo_her2st.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_spec = importlib.util.spec_from_file_location("benchmarks_entry", HERE / "__main__.py")
_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_entry)
BENCHMARKS, GPU_TINY_ENV, TINY = _entry.BENCHMARKS, _entry.GPU_TINY_ENV, _entry.TINY

TESTDATA = Path(os.environ.get("TESTDATA", REPO.parent / "shared" / "testdata"))
ENV = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
           NXF_ANSI_LOG="false", NXF_OFFLINE="true", PYTHONWARNINGS="ignore::FutureWarning")


def bench(name: str, *args, env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", name, *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def one_result(folder: Path, pattern: str) -> dict:
    files = sorted(folder.glob(pattern))
    assert len(files) == 1, f"{pattern} under {folder}: {files}"
    return json.loads(files[0].read_text())


def no_unknown_parameters(work: Path) -> None:
    """The smoke options reached the pipeline (Nextflow only warns about a parameter it does not know)."""
    logs = [p for p in work.rglob("*.log") if p.name in ("pipeline.log",) or p.name.endswith("_shards.log")
            or p.name == "unsharded.log"]
    assert logs, f"no pipeline log under {work}"
    for log in logs:
        assert "Unknown parameter" not in log.read_text(errors="replace"), log


def need_lymph_node():
    if not (TESTDATA / "lymph_node" / "reference.h5ad").is_file():
        pytest.skip(f"no lymph node test set under {TESTDATA}")


def test_the_list_names_every_benchmark_and_its_script_exists():
    proc = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    for name, (script, _) in BENCHMARKS.items():
        assert (HERE / script).is_file(), script
        assert f"  {name} " in proc.stdout and f"benchmarks/{script}" in proc.stdout
    assert set(TINY) == set(BENCHMARKS)
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "no_such"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "no benchmark named 'no_such'" in bad.stderr
    helps = subprocess.run([sys.executable, "-m", "benchmarks", "memory", "--help"], cwd=REPO, capture_output=True,
                           text=True)
    assert helps.returncode == 0 and "make bench NAME=memory" in helps.stdout


def local_imports(path: Path, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & names


def test_no_import_circles_and_common_imports_no_benchmark():
    modules = {p.stem: p for p in HERE.glob("*.py") if not p.stem.startswith("test_") and p.stem != "__main__"}
    graph = {m: local_imports(p, set(modules)) - {m} for m, p in modules.items()}
    assert graph["common"] == set()

    def reach(start, seen=None):
        seen = set() if seen is None else seen
        for nxt in graph[start]:
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert not circles, f"import circles through {circles}: {graph}"


def test_accuracy_tiny(tmp_path):
    need_lymph_node()
    bench("accuracy", *TINY["accuracy"], "--workdir", tmp_path / "work", "--results", tmp_path)
    out = one_result(tmp_path, "bench_lymph_tiny_*.json")
    assert set(out["results"]) == {"pipeline", "tutorial_by_hand", "nnls"}
    assert 0 < out["ratio_pipeline_over_tutorial"]["total_wall"]


@pytest.fixture(scope="module")
def bar_run(tmp_path_factory) -> Path:
    need_lymph_node()
    folder = tmp_path_factory.mktemp("bar")
    proc = bench("bar", *TINY["bar"], "--workdir", folder / "work", "--results", folder)
    assert "## The bar" in proc.stdout
    return folder


def test_bar_tiny(bar_run):
    out = one_result(bar_run, "bench_bar_*.json")
    no_unknown_parameters(bar_run / "work")
    (design,) = out["designs"]
    assert design["design"]["name"] == "lymph200_random1000_seed1" and out["n_spots"] == 40
    assert set(design["bar"]) == {"wall_ratio", "metrics_not_worse", "q05_pearson_median"}
    assert set(design["metric_differences"]) == {"prop_pearson_spot", "prop_rmse", "abundance_pearson", "aupr"}


def test_seeds_tiny(bar_run, tmp_path):
    bar_json = next(bar_run.glob("bench_bar_*.json"))
    proc = bench("seeds", "--bar-json", bar_json, *TINY["seeds"], "--workdir", tmp_path / "work", "--results", tmp_path)
    out = one_result(tmp_path, "seed_spread_*.json")
    no_unknown_parameters(tmp_path / "work")
    (design,) = out["designs"]
    assert set(design["runs"]["pipeline"]) == {"1", "5"} and set(design["runs"]["tutorial"]) == {"1"}
    assert isinstance(design["summary"]["not_worse_on_seed_means"], bool)
    assert "on seed means" in proc.stdout


def test_epoch_tiny(tmp_path):
    bench("epoch", *TINY["epoch"], "--data", tmp_path / "data", "--results", tmp_path)
    out = one_result(tmp_path, "likelihood_costs_*.json")
    assert {"runs", "summary", "profiles", "table_markdown"} <= set(out)


def test_loop_tiny(tmp_path):
    need_lymph_node()
    bench("loop", *TINY["loop"], "--data", tmp_path / "data", "--results", tmp_path)
    out = one_result(tmp_path, "loop_costs_*.json")
    (design,) = out["designs"]
    assert set(design["ms_per_epoch"]) == {"lightning", "plain", "plain+foreach"}
    assert all(design["same_elbo_every_epoch_as_lightning"].values()), design


def test_memory_tiny(tmp_path):
    bench("memory", *TINY["memory"], "--workdir", tmp_path / "work", "--results", tmp_path)
    out = one_result(tmp_path, "memory_model_*.json")
    assert len(out["measurements"]) == 4 and out["fit"]


def test_sharding_tiny(tmp_path):
    need_lymph_node()
    bench("sharding", *TINY["sharding"], "--workdir", tmp_path / "work", "--results", tmp_path)
    out = one_result(tmp_path, "sharding_*.json")
    no_unknown_parameters(tmp_path / "work")
    assert set(out["runs"]) == {"unsharded", "2_shards"}


def test_scale_tiny(tmp_path):
    bench("scale", *TINY["scale"], "--workdir", tmp_path / "work", "--results", tmp_path)
    out = one_result(tmp_path, "scale_run_*.json")
    assert len(out["shards"]) == 2, out["shards"]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = dict(ENV, **GPU_TINY_ENV, GPU_CHECK_PYTHON=str(REPO / ".venv" / "bin" / "python"), OUT=str(tmp_path / "out"),
               GPU_CHECK_WORK=str(tmp_path / "work"))
    bench("gpu", env=env)
    out = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert not out.get("errors"), out.get("errors")
    assert out
