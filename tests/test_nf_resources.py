"""Task sizes and GPU requests as a scheduler sees them, without a cluster: a fake `sbatch` (it records the job
script's #SBATCH lines, then runs it in place) and an empty `squeue` first on PATH, and a two-process pipeline
run with the pipeline's own nextflow.config (-c), so that only the configuration is under test:

- `-profile gpu` under `-process.executor slurm`: the process_gpu job asks for `--gres=gpu:N` (`--gpus=N` with
  `--gpu_request gpus`) in `--gpu_queue`'s partition, with `--gpu_cluster_options` after; other jobs ask for
  nothing of the kind; the local executor gets no clusterOptions at all;
- tasks sent to SLURM are sized by their labels, capped only by --max_cpus / --max_memory / --max_time (from the
  command line or a -c file's params), never by the machine Nextflow runs on (-profile local caps only the
  tasks it runs itself);
- --gpu_max_forks from the command line or a -params-file, and `maxForks` in a -c file's
  `withLabel:process_gpu`, reach the training processes (docs/usage.md shows these, not a -c file's params).

The same on a real SLURM cluster: tests/test_slurm.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from nf_helpers import REPO, nextflow_bin, nf_env

PIPELINE = """
process GPU_STEP {
    label 'process_low'
    label 'process_gpu'
    output:
    stdout
    script:
    "echo GPU_STEP cpus=${task.cpus} memoryMB=${task.memory?.toMega()} time=${task.time} maxForks=${task.maxForks} clusterOptions=${task.clusterOptions}"
}

process BIG_STEP {
    label 'process_high'
    output:
    stdout
    script:
    "echo BIG_STEP cpus=${task.cpus} memoryMB=${task.memory?.toMega()} time=${task.time} maxForks=${task.maxForks} clusterOptions=${task.clusterOptions}"
}

workflow {
    GPU_STEP().view()
    BIG_STEP().view()
}
"""

FAKE_SBATCH = """#!/usr/bin/env bash
# fake sbatch: record the job's #SBATCH lines, run the job script here, say what sbatch says
script=${@: -1}
{ echo "JOB $PWD"; grep '^#SBATCH' "$script"; } >> "$FAKE_SLURM_LOG"
bash "$script" >/dev/null 2>&1 || true
echo "Submitted batch job $RANDOM"
"""


@pytest.fixture(scope="module")
def fake_slurm(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake_slurm")
    (folder / "bin").mkdir()
    (folder / "bin" / "sbatch").write_text(FAKE_SBATCH)
    (folder / "bin" / "squeue").write_text("#!/bin/sh\nexit 0\n")      # no job left in the queue: done
    (folder / "bin" / "scancel").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sbatch", "squeue", "scancel"):
        (folder / "bin" / name).chmod(0o755)
    (folder / "main.nf").write_text(PIPELINE)
    return folder


def run(fake_slurm: Path, tmp_path: Path, *args, profile="local,gpu") -> dict[str, dict]:
    """Run the two-process pipeline; returns per process what the task saw and (under SLURM) its #SBATCH lines."""
    log = tmp_path / "sbatch.log"
    env = nf_env({"FAKE_SLURM_LOG": str(log)})
    env["PATH"] = f"{fake_slurm / 'bin'}{os.pathsep}{env['PATH']}"
    cmd = [nextflow_bin(), "run", str(fake_slurm / "main.nf"), "-c", str(REPO / "nextflow.config"),
           "-profile", profile, "-work-dir", str(tmp_path / "work"), "--outdir", str(tmp_path / "results"), *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = {}
    for line in result.stdout.splitlines():
        found = re.match(r"^(GPU_STEP|BIG_STEP) (.*)$", line)
        if found:
            seen[found.group(1)] = dict(re.findall(r"(\w+)=(\S*)", found.group(2)))
    headers: dict[str, list[str]] = {}
    if log.exists():
        current = None
        for line in log.read_text().splitlines():
            if line.startswith("JOB "):
                current = None
            elif line.startswith("#SBATCH -J"):
                current = "GPU_STEP" if "GPU_STEP" in line else "BIG_STEP"
                headers[current] = []
            elif current:
                headers[current].append(line)
    for name in ("GPU_STEP", "BIG_STEP"):
        assert name in seen, result.stdout
        seen[name]["sbatch"] = headers.get(name, [])
    return seen


def gpu_lines(headers: list[str]) -> list[str]:
    return [h for h in headers if re.search(r"--gres|--gpus|--partition|^#SBATCH -p ", h)]


def test_slurm_gpu_request_gres_and_partition(fake_slurm, tmp_path):
    seen = run(fake_slurm, tmp_path, "-process.executor", "slurm", "--gpu_queue", "gpu_a100",
               "--max_cpus", "4", "--max_memory", "16.GB", "--max_time", "2.h")
    assert gpu_lines(seen["GPU_STEP"]["sbatch"]) == ["#SBATCH --partition=gpu_a100 --gres=gpu:1"]
    assert gpu_lines(seen["BIG_STEP"]["sbatch"]) == []


def test_slurm_gpu_request_gpus_and_extra_options(fake_slurm, tmp_path):
    seen = run(fake_slurm, tmp_path, "-process.executor", "slurm", "--gpu_request", "gpus",
               "--gpu_cluster_options=--account=lab --qos=high", "--max_cpus", "4", "--max_memory", "16.GB")
    # (the value after `=`: Nextflow would read a separate --account=lab as a parameter of its own)
    # no --gpu_queue: no partition (the job goes where process.queue or the site's default says)
    assert gpu_lines(seen["GPU_STEP"]["sbatch"]) == ["#SBATCH --gpus=1 --account=lab --qos=high"]
    assert gpu_lines(seen["BIG_STEP"]["sbatch"]) == []


def test_without_gpu_profile_no_gpu_request(fake_slurm, tmp_path):
    seen = run(fake_slurm, tmp_path, "-process.executor", "slurm", "--gpu_queue", "gpu", "--max_cpus", "4",
               "--max_memory", "16.GB", profile="local")
    assert gpu_lines(seen["GPU_STEP"]["sbatch"]) == []


def test_local_executor_gets_no_cluster_options(fake_slurm, tmp_path):
    seen = run(fake_slurm, tmp_path, "--gpu_queue", "gpu", "--max_memory", "4.GB")
    assert seen["GPU_STEP"]["clusterOptions"] == "null"
    assert seen["GPU_STEP"]["sbatch"] == []                # the local executor: no sbatch at all


def test_slurm_jobs_sized_by_labels_not_by_this_machine(fake_slurm, tmp_path):
    # -profile local caps the tasks it runs itself at this machine; a scheduler's jobs keep their labels' sizes
    seen = run(fake_slurm, tmp_path, "-process.executor", "slurm", profile="local")
    big = seen["BIG_STEP"]["sbatch"]
    assert "#SBATCH -c 12" in big and "#SBATCH --mem 73728M" in big and "#SBATCH -t 16:00:00" in big, big
    assert os.cpu_count() < 12  # (else this would not show that the machine's size is not used)


@pytest.mark.parametrize("where", ["command_line", "config_file"])
def test_slurm_jobs_capped_by_max_params(fake_slurm, tmp_path, where):
    caps = {"max_cpus": 4, "max_memory": "16.GB", "max_time": "2.h"}
    if where == "command_line":
        args = [a for k, v in caps.items() for a in (f"--{k}", str(v))]
    else:  # a -c file's params count too (resourceLimits is evaluated per task)
        site = tmp_path / "site.config"
        site.write_text("params {\n" + "".join(f"    {k} = {v!r}\n" for k, v in caps.items()).replace('"', "'") + "}\n")
        args = ["-c", str(site)]
    seen = run(fake_slurm, tmp_path, "-process.executor", "slurm", *args, profile="local")
    big = seen["BIG_STEP"]["sbatch"]
    assert "#SBATCH -c 4" in big and "#SBATCH --mem 16384M" in big and "#SBATCH -t 02:00:00" in big, big
    low = seen["GPU_STEP"]["sbatch"]                  # process_low: 2 CPUs, 12 GB, 4 h -> only the time capped
    assert "#SBATCH -c 2" in low and "#SBATCH --mem 12288M" in low and "#SBATCH -t 02:00:00" in low, low


def test_local_profile_caps_local_tasks_at_this_machine(fake_slurm, tmp_path):
    seen = run(fake_slurm, tmp_path, profile="local")
    assert int(seen["BIG_STEP"]["cpus"]) == min(12, os.cpu_count())
    seen = run(fake_slurm, tmp_path, "--max_cpus", "1", "--max_memory", "2.GB", profile="local")
    assert seen["BIG_STEP"]["cpus"] == "1" and seen["BIG_STEP"]["memoryMB"] == "2048"


@pytest.mark.parametrize("where", ["command_line", "params_file", "config_file_maxforks"])
def test_gpu_max_forks_reaches_the_training_steps(fake_slurm, tmp_path, where):
    if where == "command_line":
        args = ["--gpu_max_forks", "4"]
    elif where == "params_file":
        (tmp_path / "site.yml").write_text("gpu_max_forks: 4\n")
        args = ["-params-file", str(tmp_path / "site.yml")]
    else:
        (tmp_path / "site.config").write_text("process {\n    withLabel:process_gpu {\n        maxForks = 4\n    }\n}\n")
        args = ["-c", str(tmp_path / "site.config")]
    seen = run(fake_slurm, tmp_path, *args)
    assert seen["GPU_STEP"]["maxForks"] == "4"
    assert seen["BIG_STEP"]["maxForks"] == "null"


@pytest.mark.parametrize("name, value", [("max_memory", "lots"), ("max_time", "2 weeks"), ("gpu_request", "mig")])
def test_bad_resource_parameter_is_one_clear_error(tmp_path, name, value):
    from nf_helpers import run_nf

    run = run_nf(tmp_path, f"--{name}", value, "-stub", timeout=300)
    assert run.returncode != 0
    assert re.search(rf"--{name}: (must be one of gres, gpus, got|'{value}' is not of the form)", run.output), run.output[-3000:]
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").glob("*/*/.command.run"))
