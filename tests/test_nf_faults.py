"""Faults: a run killed while mapping resumes from the cache; a plotting-only change reruns only the plots;
exit 137 is retried with twice the memory (conf/base.config); a data error (exit 1) is not retried."""

from __future__ import annotations

import re
import time

import pytest

from nf_helpers import (TINY, assert_ok, data_error_run, kill_group, last_pipeline_line, needs_testdata, real_run,
                        run_nf, start_nf, wait_for, with_param)

pytestmark = needs_testdata

UPSTREAM = ["READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE"]
# TINY with a different --map_max_epochs: MAP_CELLS's command line (hence its hash) changes, nothing else
RESUMED = with_param(TINY, "--map_max_epochs", 10)


def _status(run, step):
    return sorted(r["status"] for r in run.tasks(step))


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """In the launch folder of the tiny real run: -resume with 3000 mapping epochs, killed while mapping."""
    base = real_run(tmp_path_factory)
    long_args = with_param(TINY, "--map_max_epochs", 3000)
    first_map = base.tasks("MAP_CELLS")[0]["hash"]      # the log may still be the first run's for a moment
    proc = start_nf(base.launch, "-resume", *long_args, outdir="killed")
    log = base.launch / ".nextflow.log"

    def mapping_started():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before MAP_CELLS started")
        found = re.search(r"\[(\w\w/\w{6})\] Submitted process > CELL2LOCATION:MAP_CELLS",
                          log.read_text(errors="replace") if log.exists() else "")
        if not found or found.group(1) == first_map:
            return None
        prefix, rest = found.group(1).split("/")
        task = next(iter((base.workdir / prefix).glob(f"{rest}*")), None)
        # the model is built and training has begun (c2l logs this line just before the first epoch)
        text = (task / ".command.log").read_text(errors="replace") if task and (task / ".command.log").exists() else ""
        return task if "c2l.map_cells: mapping" in text else None

    try:
        task = wait_for(mapping_started, timeout=600, interval=2, what="MAP_CELLS to start training")
        time.sleep(3)
    finally:
        code = kill_group(proc)
    return base, task, code


def test_killed_while_mapping_leaves_no_mapping_output(killed):
    base, task, code = killed
    assert code != 0
    assert not (task / ".exitcode").exists() or (task / ".exitcode").read_text().strip() != "0"
    assert not list(task.rglob("*.cell2location.h5ad")), "a killed MAP_CELLS left a result behind"
    assert not (base.launch / "killed" / "map_cells").exists()
    assert not (base.launch / "killed" / "plot_spatial").exists()
    # stopping the run reports the stop, not a pipeline error such as a join mismatch
    console = (base.launch / "background.stdout").read_text()
    assert "Join mismatch" not in console
    # ... and its last line says that it was killed, by which signal, and what had finished
    last = last_pipeline_line(console)
    assert re.search(r"cell2location-nf was killed \(SIGTERM\) after .*: \d+ task\(s\) finished, \d+ cached, "
                     r"\d+ failed; rerun the same command with -resume", last), console[-2000:]
    assert "see the error above" not in console


@pytest.fixture(scope="module")
def resumed(killed):
    base, _, _ = killed
    return assert_ok(run_nf(base.launch, "-resume", *RESUMED, outdir="resumed"))


def test_resume_after_kill_reuses_upstream_steps(resumed):
    for step in UPSTREAM:
        assert _status(resumed, step) == ["CACHED"], (step, resumed.trace())
    assert _status(resumed, "MAP_CELLS") == ["COMPLETED"]
    assert _status(resumed, "PLOT_SPATIAL") == ["COMPLETED"]
    out = resumed.outdir
    assert (out / "map_cells" / "joint" / "lymph_node.q05_cell_abundance_w_sf.csv").is_file()
    assert len(list((out / "plot_spatial" / "lymph_node").glob("*.png"))) == 3
    history = (out / "map_cells" / "joint" / "joint_history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 10                                    # header + --map_max_epochs 10
    # cached steps are still published into the new outdir
    assert (out / "train_reference" / "signatures.csv").is_file()


def test_plot_param_reruns_only_plot_spatial(resumed):
    run = assert_ok(run_nf(resumed.launch, "-resume", *RESUMED, "--n_overlay", "3", outdir="overlay3"))
    for step in UPSTREAM + ["MAP_CELLS"]:
        assert _status(run, step) == ["CACHED"], (step, run.trace())
    assert _status(run, "PLOT_SPATIAL") == ["COMPLETED"]
    assert "--n-overlay 3" in (run.task_dir("PLOT_SPATIAL") / ".command.sh").read_text()


FAULTS_CONFIG = """
// READ_VISIUM's first attempt dies as if the OOM killer had sent SIGKILL (exit 137);
// MAP_CELLS fails like a data error (exit 1, one 'Error:' line)
executor {
    $local { memory = 64.GB }   // let the local executor accept attempt 2's request on a small machine
}
process {
    resourceLimits = [cpus: 2, memory: 64.GB, time: 1.h]   // the test profile caps memory at 12 GB
    withName: 'READ_VISIUM' {
        beforeScript = { task.attempt == 1 ? 'echo simulated OOM kill >&2; exit 137' : 'true' }
    }
    withName: 'MAP_CELLS' {
        beforeScript = 'echo "Error: sample lymph_node, field signatures: simulated" >&2; exit 1'
    }
}
"""


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    """-stub is enough: the retries and the memory come from conf/base.config, not from the scripts."""
    folder = tmp_path_factory.mktemp("injected_faults")
    config = folder / "faults.config"
    config.write_text(FAULTS_CONFIG)
    return run_nf(folder, "-stub", "-c", config)


def test_exit_137_is_retried_with_twice_the_memory(injected):
    rows = sorted(injected.tasks("READ_VISIUM"), key=lambda r: int(r["attempt"]))
    assert [(r["attempt"], r["status"], r["exit"]) for r in rows] == [("1", "FAILED", "137"), ("2", "COMPLETED", "0")]
    assert rows[0]["memory"] == "12 GB" and rows[1]["memory"] == "24 GB"          # process_low: 12.GB * attempt
    assert "terminated with an error exit status (137) -- Execution is retried (1)" in injected.output
    assert (injected.outdir / "read_visium" / "lymph_node.h5ad").exists()


def test_failed_mapping_is_not_retried_and_reports_only_its_own_error(injected):
    """The task's message and nothing else: no 'Join mismatch' from the wiring below MAP_CELLS."""
    assert injected.returncode == 1, injected.describe()
    assert [(r["attempt"], r["status"], r["exit"]) for r in injected.tasks("MAP_CELLS")] == [("1", "FAILED", "1")]
    assert "Error: sample lymph_node, field signatures: simulated" in injected.output
    assert "Join mismatch" not in injected.output, injected.describe()
    assert injected.tasks("PLOT_SPATIAL") == []
    assert not (injected.outdir / "map_cells").exists()


def test_data_error_is_not_retried(tmp_path_factory):
    run = data_error_run(tmp_path_factory)
    assert run.returncode == 1
    rows = run.tasks("READ_VISIUM")
    assert [(r["attempt"], r["status"], r["exit"]) for r in rows] == [("1", "FAILED", "1")]
    assert "Execution is retried" not in run.output



def test_failed_run_reports_what_finished(injected):
    """A run in which a step failed gets pipeline_info/failed_run_report.html (the error, what finished, its
    figures) and run_status.json; the console points to the page."""
    import json
    from html.parser import HTMLParser

    info = injected.outdir / "pipeline_info"
    status = json.loads((info / "run_status.json").read_text())
    assert status["status"] == "failed"
    assert "MAP_CELLS" in status["error_message"] or "MAP_CELLS" in (status["error_report"] or ""), status
    assert "field signatures: simulated" in status["error_report"], status["error_report"]
    assert status["samples_expected"] == ["lymph_node"]
    assert status["sections"] == [{"sample": "lymph_node", "read": True, "mapped": False, "figures": 0,
                                   "in_samplesheet": True}]
    assert [m["step"] for m in status["models"]] == ["train_reference"]         # the reference finished, no mapping
    assert "map_cells" not in status["published_files_per_step"]
    assert status["report"] is None and status["tasks"]["failed"] >= 1
    page = (info / "failed_run_report.html").read_text()

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.imgs = [], []

        def handle_data(self, data):
            self.text.append(data)

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])

    parsed = Text()
    parsed.feed(page)
    text = " ".join(parsed.text)
    assert "this run failed" in text and "field signatures: simulated" in text
    assert "lymph_node" in text and "No model finished training" not in text
    assert parsed.imgs and all((info / src).resolve().is_file() for src in parsed.imgs), parsed.imgs
    assert f"what finished: {info / 'failed_run_report.html'}" in injected.output


def test_successful_run_status(tmp_path_factory):
    from nf_helpers import real_run

    run = real_run(tmp_path_factory)
    info = run.outdir / "pipeline_info"
    import json

    status = json.loads((info / "run_status.json").read_text())
    assert status["status"] == "succeeded" and status["error_message"] is None
    assert status["report"] == "multiqc/multiqc_report.html"
    assert [s["sample"] for s in status["sections"] if s["read"] and s["mapped"] and s["figures"] > 0] == ["lymph_node"]
    assert not (info / "failed_run_report.html").exists()
