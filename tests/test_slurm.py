"""The pipeline under SLURM: a real one-node cluster (.ci/slurm.sh: slurm-wlm + munge from Debian's packages).

- the stub pipeline with `-profile test,local,gpu -process.executor slurm --gpu_queue gpu`: every task is a SLURM
  job (its trace native_id is a job that slurmctld recorded as COMPLETED), the two training jobs' sbatch headers
  ask for the GPU in the GPU partition and no other job's does, and the outputs equal the local stub run's;
- the test profile (tiny epochs) through SLURM gives the local run's outputs (benchmarks/compare_outputs.py);
- a run killed (SIGTERM to Nextflow, as scancel of a head job or a time limit) while MAP_CELLS trains under
  `-profile gpu --gpu_request gpus`: its last console line names the signal, no job is left in squeue, and
  `-resume` reruns only what had not finished.

Without slurm-wlm/munge these tests are skipped, except in CI (CI=true), where they fail: .ci/run installs them.
The cheap checks of the same configuration without a cluster are in tests/test_nf_resources.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nf_helpers import (REPO, TINY, assert_ok, kill_group, last_pipeline_line, needs_testdata, real_run, run_nf,
                        start_nf, stub_run, wait_for, with_param)

pytestmark = needs_testdata

SLURM_SH = REPO / ".ci" / "slurm.sh"
DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TRAINING = {"TRAIN_REFERENCE", "MAP_CELLS"}
# Nextflow polls the queue every 5 s / 1 min by default; a test cluster answers at once
POLL_CONFIG = "executor {\n    pollInterval = '1 sec'\n    queueStatInterval = '2 sec'\n}\n"


@dataclass
class Cluster:
    folder: Path
    env: dict

    def squeue(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], env={**os.environ, **self.env},
                             capture_output=True, text=True, check=True)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def jobs(self) -> dict[str, dict]:
        """jobcomp/filetxt's record of every finished job: JobId -> its fields."""
        path = self.folder / "jobcomp.txt"
        records = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                records[fields["JobId"]] = fields
        return records


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [name for name in DAEMONS if not shutil.which(name)]
    if missing:
        if IN_CI:
            pytest.fail(f"CI: {', '.join(missing)} not installed (.ci/run installs them: .ci/slurm.sh install)")
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing; `.ci/slurm.sh install` installs it)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "C2L_SLURM_PORT0": os.environ.get("C2L_SLURM_PORT0", "16837")}
    started = subprocess.run(["bash", str(SLURM_SH), "start", str(folder)], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield Cluster(folder, {"SLURM_CONF": str(folder / "slurm.conf")})
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(folder)], env=env, check=False)


@pytest.fixture(scope="module")
def poll_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slurm_cfg") / "poll.config"
    path.write_text(POLL_CONFIG)
    return path


def compare(local: Path, other: Path, rtol: str | None = None):
    cmd = [sys.executable, str(REPO / "benchmarks" / "compare_outputs.py"), str(local), str(other)]
    if rtol:
        cmd += ["--rtol", rtol]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def sbatch_headers(task_dir: Path) -> list[str]:
    return [line for line in (task_dir / ".command.run").read_text().splitlines() if line.startswith("#SBATCH")]


def assert_all_tasks_were_jobs(run, cluster: Cluster):
    rows = run.trace()
    assert rows, run.describe()
    jobs = cluster.jobs()
    for row in rows:
        if row["status"] == "CACHED":
            continue
        assert re.fullmatch(r"\d+", row["native_id"]), f"{row['process']} was not a SLURM job: {row}"
        record = jobs.get(row["native_id"])
        assert record, f"job {row['native_id']} ({row['process']}) not in slurmctld's records"
        if row["status"] == "COMPLETED":
            assert record["JobState"] == "COMPLETED", record


# ---------------------------------------------------------------------------------------------------------
# the stub pipeline, -profile gpu: every task a job, the GPU request on the training jobs only
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub_slurm(cluster, poll_config, tmp_path_factory):
    launch = tmp_path_factory.mktemp("stub_slurm")
    return assert_ok(run_nf(launch, "-stub", "-process.executor", "slurm", "-c", poll_config, "--gpu_queue", "gpu",
                            profile="test,local,gpu", env=cluster.env, timeout=900))


def test_stub_every_task_is_a_slurm_job(stub_slurm, cluster):
    assert_all_tasks_were_jobs(stub_slurm, cluster)
    assert {row["process"].split(":")[-1] for row in stub_slurm.trace()} >= TRAINING | {"READ_VISIUM", "PLOT_SPATIAL"}
    assert not cluster.squeue()


def test_stub_training_jobs_ask_for_a_gpu_in_the_gpu_partition(stub_slurm, cluster):
    jobs = cluster.jobs()
    for row in stub_slurm.trace():
        step = row["process"].split(":")[-1]
        headers = sbatch_headers(stub_slurm.task_dir(step, row["tag"]))
        gpu_lines = [h for h in headers if "--gres" in h or "--gpus" in h or "--partition" in h or h.startswith("#SBATCH -p")]
        if step in TRAINING:
            assert gpu_lines == ["#SBATCH --partition=gpu --gres=gpu:1"], headers
            assert jobs[row["native_id"]]["Partition"] == "gpu"
        else:
            assert gpu_lines == [], (step, headers)
            assert jobs[row["native_id"]]["Partition"] == "cpu"


def test_stub_outputs_equal_the_local_stub_run(stub_slurm, tmp_path_factory):
    """Stub outputs are placeholders (not h5ad/CSV that compare_outputs.py reads): the same files, the same bytes
    (pipeline_info/ and the MultiQC data, which hold the run's own paths and times: by name)."""
    def tree(root: Path) -> dict[str, bytes | None]:
        out = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = re.sub(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", "<stamp>", str(path.relative_to(root)))
            by_name = rel.startswith(("pipeline_info/", "multiqc/"))
            out[rel] = None if by_name else path.read_bytes()
        return out

    local, slurm = tree(stub_run(tmp_path_factory).outdir), tree(stub_slurm.outdir)
    assert sorted(local) == sorted(slurm)
    assert [name for name in local if local[name] != slurm[name]] == []
    assert len(local) > 20


# ---------------------------------------------------------------------------------------------------------
# the test profile (tiny epochs): the local run's outputs
# ---------------------------------------------------------------------------------------------------------
def test_test_profile_under_slurm_equals_local_run(cluster, poll_config, tmp_path_factory):
    launch = tmp_path_factory.mktemp("real_slurm")
    run = assert_ok(run_nf(launch, *TINY, "-process.executor", "slurm", "-c", poll_config,
                           env=cluster.env, timeout=1800))
    assert_all_tasks_were_jobs(run, cluster)
    assert all(row["status"] == "COMPLETED" for row in run.trace())
    # the test profile's caps, not this machine's, size the jobs
    headers = sbatch_headers(run.task_dir("MAP_CELLS"))
    assert "#SBATCH -c 2" in headers and "#SBATCH -t 01:00:00" in headers, headers
    compare(real_run(tmp_path_factory).outdir, run.outdir, rtol="1e-5")
    assert not cluster.squeue()


# ---------------------------------------------------------------------------------------------------------
# killed while mapping: the signal on the last line, an empty queue, -resume
# ---------------------------------------------------------------------------------------------------------
GPUS = ["-profile", "test,local,gpu"]


@pytest.fixture(scope="module")
def killed_slurm(cluster, poll_config, tmp_path_factory):
    launch = tmp_path_factory.mktemp("killed_slurm")
    long_args = with_param(TINY, "--map_max_epochs", 3000)
    common = ["-process.executor", "slurm", "-c", str(poll_config), "--gpu_queue", "gpu", "--gpu_request", "gpus"]
    proc = start_nf(launch, *common, *long_args, profile="test,local,gpu", env=cluster.env)

    def mapping_running():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before MAP_CELLS ran: "
                                 + (launch / "background.stdout").read_text()[-3000:])
        running = [job for job in cluster.squeue() if "MAP_CELLS" in job and job.endswith("RUNNING")]
        if not running:
            return None
        logs = [p for p in launch.glob("work/*/*/.command.log") if "c2l.map_cells: mapping" in p.read_text(errors="replace")]
        return logs[0].parent if logs else None

    try:
        task = wait_for(mapping_running, timeout=900, interval=2, what="the MAP_CELLS job to start training")
        time.sleep(3)
    finally:
        code = kill_group(proc, grace=60)
    return launch, task, code, common


def test_killed_run_names_the_signal_and_leaves_no_job(killed_slurm, cluster):
    launch, task, code, _ = killed_slurm
    assert code != 0
    console = (launch / "background.stdout").read_text()
    last = last_pipeline_line(console)
    assert "cell2location-nf was killed (SIGTERM)" in last, console[-3000:]
    assert re.search(r"\d+ task\(s\) finished", last), last
    wait_for(lambda: not cluster.squeue(), timeout=60, interval=2, what="an empty squeue")
    status = json.loads((launch / "results" / "pipeline_info" / "run_status.json").read_text())
    assert status["status"] == "failed" and "SIGTERM" in status["error_message"]
    # the killed job asked for its GPU with --gpus (--gpu_request gpus), in the GPU partition
    assert "#SBATCH --partition=gpu --gpus=1" in sbatch_headers(task)
    assert not list(task.glob("*.cell2location.h5ad"))


def test_killed_run_resumes_with_finished_tasks_cached(killed_slurm, cluster):
    launch, _, _, common = killed_slurm
    run = assert_ok(run_nf(launch, "-resume", *common, *with_param(TINY, "--map_max_epochs", 10), outdir="resumed",
                           profile="test,local,gpu", env=cluster.env, timeout=1800))
    status = {row["process"].split(":")[-1]: row["status"] for row in run.trace()}
    for step in ("READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE"):
        assert status[step] == "CACHED", run.trace()
    assert status["MAP_CELLS"] == "COMPLETED" and status["PLOT_SPATIAL"] == "COMPLETED"
    assert_all_tasks_were_jobs(run, cluster)
    assert not cluster.squeue()
