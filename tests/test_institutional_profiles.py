"""Institutional profiles (nf-core/configs) through real Nextflow: `-profile <institution>` from a local
`--custom_config_base` folder runs the test profile under that profile's settings; the default remote base is
silent offline (one line of log) and when it cannot be reached (no error).
"""

from __future__ import annotations

import subprocess

import pytest

from nf_helpers import REPO, assert_ok, needs_testdata, nextflow_bin, nf_env, run_nf, stub_run

pytestmark = needs_testdata

OFFLINE_LINE = "Institutional profiles (nf-core/configs) not loaded: NXF_OFFLINE is set"

# the shape of nf-core/configs' nfcore_custom.config: one profile per institution, each including its conf
CUSTOM = """
profiles {
    myinst { includeConfig "${params.custom_config_base}/conf/myinst.config" }
}
"""
MYINST = """
params {
    config_profile_description = 'My institution (test cluster)'
    config_profile_contact     = 'hpc@myinst.test'
}
process {
    executor = 'local'
    queue    = 'myqueue'
}
"""


def institution(folder):
    (folder / "conf").mkdir(parents=True)
    (folder / "nfcore_custom.config").write_text(CUSTOM)
    (folder / "conf" / "myinst.config").write_text(MYINST)
    return folder


def test_institutional_profile_from_local_folder(tmp_path):
    base = institution(tmp_path / "configs")
    # the trace gains the queue column, so that each task's queue can be read back
    extra = tmp_path / "trace_queue.config"
    extra.write_text("trace.fields = 'task_id,hash,process,tag,name,status,exit,queue'\n")
    run = assert_ok(run_nf(tmp_path / "run", "-stub", "--custom_config_base", base, "-c", extra,
                           profile="test,local,myinst"))
    rows = run.trace()
    assert rows, run.describe()
    assert {r["queue"] for r in rows} == {"myqueue"}, rows
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert "Config profile: My institution (test cluster)" in run.output, run.describe()
    assert OFFLINE_LINE not in run.output


def test_offline_default_base_is_silent_but_for_one_line(tmp_path_factory):
    """The test suite runs with NXF_OFFLINE=true (nf_helpers.nf_env): the default remote base is not read, the
    run succeeds and says so once."""
    run = stub_run(tmp_path_factory)
    assert run.returncode == 0
    assert run.output.count(OFFLINE_LINE) == 1, run.describe()
    assert "Config profile: Lymph node test data" in run.output  # the test profile's own description


def _config(*args, offline: bool) -> subprocess.CompletedProcess:
    env = nf_env()
    if not offline:
        env.pop("NXF_OFFLINE", None)
    return subprocess.run([nextflow_bin(), "-q", "config", str(REPO), *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_default_base_never_fails_the_config(offline):
    """Offline, the remote base is not tried; online but unreachable (this machine reaches no GitHub), Nextflow
    reads it as empty. Either way the configuration resolves; an institution that was not loaded is an unknown
    profile, named as such."""
    res = _config("-profile", "test,local", offline=offline)
    assert res.returncode == 0, res.stderr
    assert "custom_config_base = 'https://raw.githubusercontent.com/nf-core/configs/master'" in res.stdout
    res = _config("-profile", "test,local,myinst_that_does_not_exist", offline=offline)
    assert res.returncode != 0
    assert "Unknown configuration profile: 'myinst_that_does_not_exist'" in res.stdout + res.stderr
