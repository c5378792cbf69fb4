"""-profile local uses the project's environment (.venv/bin first on every task's PATH), whatever PATH the run
is launched with: a run launched with only the system's /usr/bin:/bin on PATH (whose python3 has none of the
pipeline's packages) still runs every step with .venv's interpreter."""

from __future__ import annotations

import shutil

import pytest

from nf_helpers import VENV_BIN, assert_ok, needs_testdata, run_nf

pytestmark = needs_testdata


@pytest.mark.skipif(shutil.which("java", path="/usr/bin:/bin") is None, reason="needs java in /usr/bin or /bin")
def test_local_profile_without_the_venv_on_path(tmp_path):
    if not (VENV_BIN / "python3").exists():
        pytest.skip("no .venv (make setup)")
    run = assert_ok(run_nf(tmp_path / "launch", "-stub", env={"PATH": "/usr/bin:/bin"}))
    for step in ("READ_VISIUM", "MAP_CELLS", "MULTIQC"):
        task = run.task_dir(step)
        assert f"{VENV_BIN}:" in (task / ".command.run").read_text(), step   # exported by the local profile
        assert (task / "versions.yml").read_text().startswith('"'), step       # `c2l versions` ran (click, numpy, ...)
