"""The pipeline's Nextflow files against Nextflow's strict parser (`make lint`: assets/nf-lang/lint.sh).

Nextflow >= 26.04 parses scripts and configs with the strict parser by default; nf-lang 25.04.0 (from Maven
Central) is that parser. Every .nf and .config file must pass with no error and no "future error" (a construct
the parser says will not be supported in a future version); and the check itself must catch a broken file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = REPO / "assets" / "nf-lang" / "lint.sh"

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="the strict parser needs java (CI has it)")


def _lint(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(LINT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), f"lint.sh could not run (exit {result.returncode}):\n{result.stderr}"
    return result


def _summary(out: str) -> tuple[int, int, int, int]:
    m = re.search(r"(\d+) file\(s\), (\d+) error\(s\), (\d+) future error\(s\), (\d+) warning\(s\)", out)
    assert m, out
    return tuple(int(g) for g in m.groups())


def test_every_pipeline_file_passes_the_strict_parser():
    result = _lint()
    files, errors, future, warnings = _summary(result.stdout)
    assert (errors, future) == (0, 0), result.stdout
    assert warnings == 0, result.stdout
    assert result.returncode == 0
    # every file of the pipeline was read: main, workflow, subworkflow, the nine modules, the configs
    expected = ({"main.nf", "workflows/cell2location.nf", "subworkflows/local/samplesheet/main.nf", "nextflow.config"}
                | {str(p.relative_to(REPO)) for p in REPO.glob("modules/local/*/main.nf")}
                | {str(p.relative_to(REPO)) for p in REPO.glob("conf/*.config")})
    assert files >= len(expected), (files, sorted(expected))


def _broken_copy(tmp_path: Path, name: str, text: str) -> Path:
    """A copy of the pipeline's lib/ (the parser resolves its classes) and one file to check."""
    shutil.copytree(REPO / "lib", tmp_path / "lib")
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def test_a_script_with_an_import_is_an_error_with_its_line(tmp_path):
    source = (REPO / "modules" / "local" / "plot_spatial" / "main.nf").read_text()
    _broken_copy(tmp_path, "modules/local/plot_spatial/main.nf", "import groovy.json.JsonOutput\n\n" + source)
    result = _lint("--root", str(tmp_path), "modules/local/plot_spatial/main.nf")
    assert result.returncode == 1, result.stdout
    assert re.search(r"^modules/local/plot_spatial/main\.nf:1:\d+: error: ", result.stdout, re.M), result.stdout
    assert _summary(result.stdout)[1] >= 1


def test_a_config_function_is_an_error_with_its_line(tmp_path):
    source = (REPO / "conf" / "test.config").read_text()
    _broken_copy(tmp_path, "conf/test.config", source + "\ndef twice(x) { x * 2 }\nparams.seed = twice(1)\n")
    result = _lint("--root", str(tmp_path), "conf/test.config")
    assert result.returncode == 1, result.stdout
    line = source.count("\n") + 2
    assert re.search(rf"^conf/test\.config:{line}:\d+: error: ", result.stdout, re.M), result.stdout


def test_an_implicit_closure_parameter_is_a_future_error(tmp_path):
    _broken_copy(tmp_path, "main.nf", "workflow {\n    channel.of(1, 2).map { it * 2 }.view()\n}\n")
    result = _lint("--root", str(tmp_path), "main.nf")
    assert result.returncode == 1, result.stdout
    assert re.search(r"^main\.nf:2:\d+: error \(future\): Implicit closure parameter `it`", result.stdout, re.M), result.stdout
    assert _summary(result.stdout)[1:3] == (0, 1)


def test_the_default_file_set_skips_work_and_build_folders(tmp_path):
    _broken_copy(tmp_path, "main.nf", "workflow {\n    channel.of(1).view()\n}\n")
    (tmp_path / "work" / "ab").mkdir(parents=True)
    (tmp_path / "work" / "ab" / "bad.nf").write_text("import x.Y\n")
    (tmp_path / "results" ).mkdir()
    (tmp_path / "results" / "bad.config").write_text("def f() { 1 }\n")
    result = _lint("--root", str(tmp_path))
    assert result.returncode == 0, result.stdout
    assert _summary(result.stdout)[:2] == (1, 0), result.stdout
