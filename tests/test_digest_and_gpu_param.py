"""The package digest that -resume relies on, and --require_gpu without a GPU profile."""

from __future__ import annotations

import subprocess
import sys

from nf_helpers import REPO, needs_testdata, nextflow_bin, nf_env, run_nf

sys.path.insert(0, str(REPO / "bin"))
from c2lnf.runtime import package_digest  # noqa: E402


def _config_digest() -> str:
    out = subprocess.run([nextflow_bin(), "config", str(REPO), "-flat"], cwd=REPO, env=nf_env(),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("process.ext.c2l_digest"))
    return line.split("=", 1)[1].strip().strip("'\"")


def test_config_stamps_the_package_digest_the_cli_computes():
    """nextflow.config and the CLI agree, so a container's stale copy of the package is detected."""
    assert _config_digest() == package_digest()


def test_digest_changes_with_the_package(tmp_path, monkeypatch):
    """Any change to a .py file of the package changes the digest (what makes -resume rerun a step)."""
    import shutil

    import c2lnf.runtime as runtime

    copy = tmp_path / "c2lnf"
    shutil.copytree(REPO / "bin" / "c2lnf", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runtime, "__file__", str(copy / "runtime.py"))
    before = runtime.package_digest()
    assert before == package_digest()
    (copy / "plot_spatial.py").write_text((copy / "plot_spatial.py").read_text() + "\n# changed\n")
    assert runtime.package_digest() != before


def test_stale_package_is_warned_about(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bin" / "c2l"), "--pipeline-digest", "0000000000000000",
                           "versions"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "is not the pipeline's bin/" in proc.stderr


@needs_testdata
def test_require_gpu_without_gpu_profile_is_rejected_before_any_task(tmp_path):
    run = run_nf(tmp_path / "launch", "--require_gpu", profile="test,local")
    assert run.returncode != 0, run.describe()
    assert "--require_gpu: only meaningful with -profile gpu" in run.output, run.describe()
    assert not (run.outdir / "read_visium").exists()
