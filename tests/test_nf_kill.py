"""Kill-safety (issue 31): SIGINT or SIGTERM to the process group of a run (Ctrl-C in a terminal, a scheduler
stopping the job) while TRAIN_REFERENCE trains ends Nextflow and leaves no task process behind.

A task process is any process whose working folder is under the run's work folder (the task wrapper, `c2l`'s
Python, its workers). They are looked up in /proc, so this test needs Linux.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from nf_helpers import TINY, needs_testdata, start_nf, wait_for, with_param

pytestmark = [needs_testdata, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def task_processes(workdir: Path) -> dict[int, str]:
    """pid -> command line of every live process whose cwd is under `workdir`."""
    found = {}
    work = str(workdir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            if cwd == work or cwd.startswith(work + os.sep):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":   # a zombie holds nothing
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def start_training(launch: Path):
    """A run whose TRAIN_REFERENCE trains for hours (fixed epochs: no stop at convergence), once it trains."""
    args = with_param(TINY, "--ref_max_epochs", 100000) + ["--tutorial_settings", "true"]
    proc = start_nf(launch, *args)
    log = launch / ".nextflow.log"

    def training():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before TRAIN_REFERENCE trained:\n"
                                 + (launch / "background.stdout").read_text(errors="replace")[-3000:])
        found = re.search(r"\[(\w\w/\w{6})\] Submitted process > CELL2LOCATION:TRAIN_REFERENCE",
                          log.read_text(errors="replace") if log.exists() else "")
        if not found:
            return None
        prefix, rest = found.group(1).split("/")
        task = next(iter((launch / "work" / prefix).glob(f"{rest}*")), None)
        text = (task / ".command.log").read_text(errors="replace") if task and (task / ".command.log").exists() else ""
        return task if "training the reference model" in text else None

    try:
        task = wait_for(training, timeout=600, interval=2, what="TRAIN_REFERENCE to train")
    except BaseException:
        stop(proc, launch)
        raise
    time.sleep(5)   # into the epochs
    assert any("c2l" in cmd for cmd in task_processes(launch / "work").values())
    return proc, task


def stop(proc, launch: Path) -> None:
    """Whatever a test left: the run's group, then any task process (never leave one behind a test)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for pid in task_processes(launch / "work"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_while_training_leaves_no_task_process(tmp_path, signame):
    launch = tmp_path / signame.lower()
    proc, task = start_training(launch)
    try:
        os.killpg(proc.pid, getattr(signal, signame))
        # Nextflow's own shutdown after the signal (JVM, trace, reports) took over 120 s once on a loaded 2-core
        # CI machine (it passes in seconds alone): the bound is for a hang, not for speed
        code = proc.wait(timeout=300)
        # the tasks get a few seconds to go after Nextflow itself has ended
        deadline = time.monotonic() + 20
        while task_processes(launch / "work") and time.monotonic() < deadline:
            time.sleep(1)
        left = task_processes(launch / "work")
    finally:
        stop(proc, launch)
    assert code != 0
    assert not left, f"{signame}: task process(es) left running after Nextflow exited: {left}"
    assert not list(task.glob("*_model")) and not (task / "signatures.csv").exists()
    assert not (launch / "results" / "train_reference").exists()


def test_a_task_whose_wrapper_dies_does_not_keep_training(tmp_path):
    """The task's shells killed with SIGKILL (the OOM killer, a scheduler's hard kill, a crashed wrapper): they
    cannot pass anything on, and c2l used to train on as an orphan, holding its cores (or GPU) until the end. Now
    it gets SIGTERM when the shell that started it dies (PR_SET_PDEATHSIG). (Only this task's folder is
    watched: Nextflow retries the task, exit 137, in a new one.)"""
    launch = tmp_path / "wrapper_killed"
    proc, task = start_training(launch)
    try:
        shells = [pid for pid, cmd in task_processes(task).items() if "c2l" not in cmd]
        for pid in shells:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any("c2l" in c for c in task_processes(task).values()):
            time.sleep(1)
        left = {pid: cmd for pid, cmd in task_processes(task).items() if "c2l" in cmd}
    finally:
        stop(proc, launch)
    assert shells
    assert not left, f"c2l still running 20 s after its task's shells died: {left}"
