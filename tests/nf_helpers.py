"""Run the pipeline through real Nextflow from pytest, and read what a run leaves behind.

Every run gets its own launch folder (cwd, so `.nextflow/`, `.nextflow.log` and the cache stay there) with
`-work-dir` inside it. `NfRun` holds the exit code, stdout/stderr, the `.nextflow.log` text and the parsed
trace file (`OUT/pipeline_info/execution_trace_*.txt`).

Runs that several test files need (the tiny real run of the test profile, its stub twin, the two-section
samplesheet) are made once per pytest session through `shared()`; the other helpers are plain functions.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
TESTDATA = Path(os.environ.get("C2L_TESTDATA", REPO.parent / "shared" / "testdata"))
LYMPH_NODE = TESTDATA / "lymph_node"

needs_testdata = pytest.mark.skipif(
    not (LYMPH_NODE / "visium").is_dir() or not (LYMPH_NODE / "reference.h5ad").is_file(),
    reason=f"lymph node test data not found at {TESTDATA} (set C2L_TESTDATA)",
)

# Tiny real runs: enough epochs for every output to exist, few enough for 2 shared CPU cores.
TINY = ["--ref_max_epochs", "3", "--ref_num_samples", "5", "--map_max_epochs", "30", "--map_num_samples", "5"]


def with_param(args: list, name: str, value) -> list:
    """A copy of `args` with the value after `name` replaced."""
    out = list(args)
    out[out.index(name) + 1] = str(value)
    return out


CELL_TYPES = ["B", "B_Plasma", "DC", "Endo", "ILC", "Macrophages", "Monocytes", "NK", "T_CD4", "T_CD8", "VSMC"]
STATS = ["means", "stds", "q05", "q95"]
STEPS = ["READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE", "MAP_CELLS", "PLOT_SPATIAL"]


def nextflow_bin() -> str:
    exe = VENV_BIN / "nextflow"
    if exe.exists():
        return str(exe)
    found = shutil.which("nextflow")
    if not found:
        pytest.skip("nextflow not found (make setup installs .venv/bin/nextflow)")
    return found


def nf_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NXF_OFFLINE"] = "true"
    env["NXF_ANSI_LOG"] = "false"
    env.setdefault("NXF_DISABLE_CHECK_LATEST", "true")
    # C1-only JIT and serial GC: a Nextflow launch costs ~6 s of CPU instead of ~14 s (the JVM's start-up
    # dominates the short runs here, and the machine's cores are shared)
    env.setdefault("NXF_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto")
    env.pop("NXF_WORK", None)
    if extra:
        env.update(extra)
    return env


@dataclass
class NfRun:
    """What one `nextflow run` left: exit code, console text, log, trace, output folder."""

    launch: Path
    outdir: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    args: list = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.launch / "work"

    @property
    def log(self) -> str:
        path = self.launch / ".nextflow.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def output(self) -> str:
        """stdout + stderr: what the user saw in the terminal."""
        return self.stdout + "\n" + self.stderr

    def trace(self) -> list[dict]:
        """Rows of the trace file of this run's outdir (newest trace file if several)."""
        files = sorted((self.outdir / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
        if not files:
            return []
        with files[-1].open() as handle:
            return list(csv.DictReader(handle, delimiter="\t"))

    def tasks(self, step: str) -> list[dict]:
        """Trace rows of one process (matched on the last part of the fully qualified name)."""
        return [row for row in self.trace() if row["process"].split(":")[-1] == step]

    def task_dir(self, step: str, tag: str | None = None) -> Path:
        """Work folder of the (one, or the one tagged `tag`) COMPLETED/CACHED task of a step."""
        rows = [r for r in self.tasks(step) if r["status"] in ("COMPLETED", "CACHED")]
        if tag is not None:
            rows = [r for r in rows if r["tag"] == tag]
        assert len(rows) == 1, f"expected one finished {step} task (tag {tag}), trace has {rows}"
        prefix, rest = rows[0]["hash"].split("/")
        matches = list((self.workdir / prefix).glob(f"{rest}*"))
        assert len(matches) == 1, f"work folder of {step} {rows[0]['hash']} not found under {self.workdir}"
        return matches[0]

    def describe(self) -> str:
        return (f"nextflow {' '.join(map(str, self.args))}\n(exit {self.returncode}, {self.seconds:.0f}s, "
                f"launch {self.launch})\n--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def nf_args(launch: Path, outdir: str | Path = "results", *args, profile: str = "test,local",
            script: Path | str = REPO / "main.nf") -> list[str]:
    cmd = [nextflow_bin(), "run", str(script)]
    if profile:
        cmd += ["-profile", profile]
    cmd += ["-work-dir", str(launch / "work"), "--outdir", str(outdir), "--testdata", str(TESTDATA)]
    return cmd + [str(a) for a in args]


def run_nf(launch: Path, *args, outdir: str = "results", profile: str = "test,local",
           script: Path | str = REPO / "main.nf", timeout: float = 900, env: dict | None = None) -> NfRun:
    """`nextflow run` in `launch` (created) with -work-dir launch/work and --outdir launch/<outdir>."""
    launch = Path(launch)
    launch.mkdir(parents=True, exist_ok=True)
    cmd = nf_args(launch, launch / outdir, *args, profile=profile, script=script)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=launch, env=nf_env(env), capture_output=True, text=True, timeout=timeout)
    return NfRun(launch, launch / outdir, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start, cmd[1:])


def start_nf(launch: Path, *args, outdir: str = "results", profile: str = "test,local",
             env: dict | None = None) -> subprocess.Popen:
    """Start a run in the background, in its own process group (so a test can kill the whole group)."""
    launch = Path(launch)
    launch.mkdir(parents=True, exist_ok=True)
    cmd = nf_args(launch, launch / outdir, *args, profile=profile)
    out = open(launch / "background.stdout", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=launch, env=nf_env(env), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, preexec_fn=_default_interrupt)


def _default_interrupt() -> None:
    """SIGINT and SIGQUIT as a terminal's Ctrl-C finds them. A test session started as a background job of a
    non-interactive shell (`make test &`, `nohup ... &`, some CI runners) inherits them ignored, and the JVM does
    not install its shutdown handler for a signal ignored at start: Nextflow then sat through a SIGINT while its
    task, which did get it, ended with 130 and was retried (tests/test_nf_kill.py timed out that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def kill_group(proc: subprocess.Popen, grace: float = 30) -> int:
    """SIGTERM the process group (Nextflow then kills its tasks); SIGKILL it if still alive after `grace` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def last_pipeline_line(console: str) -> str:
    """The console's last line written by the pipeline: Nextflow's own footer after it (the `-- Check
    '.nextflow.log' file for details` of an error, `WARN: Killing running tasks (N)` of a stopped run) left out."""
    lines = [line for line in console.splitlines() if line.strip()
             and not line.strip().startswith(("-- Check '.nextflow.log'", "WARN: Killing running tasks"))]
    return lines[-1] if lines else ""


def wait_for(predicate, timeout: float, interval: float = 2.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def assert_ok(run: NfRun) -> NfRun:
    assert run.returncode == 0, run.describe()
    return run


# --- runs shared by several test files (made once per session) ------------------------------------------

_SHARED: dict[str, object] = {}


def shared(name: str, factory, tmp_path_factory):
    """Build `factory(tmp_dir)` once per pytest session under the name `name`."""
    if name not in _SHARED:
        _SHARED[name] = factory(tmp_path_factory.mktemp(name))
    return _SHARED[name]


def real_run(tmp_path_factory) -> NfRun:
    """The `test` profile, one section, joint mode, tiny epochs: a real run of all five steps."""
    return shared("real_test_profile", lambda d: assert_ok(run_nf(d, *TINY)), tmp_path_factory)


def stub_run(tmp_path_factory) -> NfRun:
    """The `test` profile with -stub: every module's stub block."""
    return shared("stub_test_profile", lambda d: assert_ok(run_nf(d, "-stub")), tmp_path_factory)


def two_sections(tmp_path_factory) -> Path:
    """A samplesheet of two sections (the lymph node split in halves by x position), as h5ad files.

    Made from the READ_VISIUM output of the real test-profile run (that is `c2l read-visium` on the Space
    Ranger folder), so no extra Python start-up is paid here.
    """

    def make(folder: Path) -> Path:
        import anndata as ad
        import numpy as np

        section = real_run(tmp_path_factory).outdir / "read_visium" / "lymph_node.h5ad"
        adata = ad.read_h5ad(section)
        x = adata.obsm["spatial"][:, 0]
        left = x <= np.median(x)
        rows = ["sample,h5ad,n_cells_per_location,region"]
        for name, mask in (("ln_left", left), ("ln_right", ~left)):
            part = adata[mask].copy()
            part.uns.pop("c2l_sample", None)
            part.write_h5ad(folder / f"{name}.h5ad")
            rows.append(f"{name},{name}.h5ad,25,{name.split('_')[1]}")
        sheet = folder / "samplesheet.csv"
        sheet.write_text("\n".join(rows) + "\n")
        return sheet

    return shared("two_sections", make, tmp_path_factory)


def signatures_csv(tmp_path_factory) -> Path:
    return real_run(tmp_path_factory).outdir / "train_reference" / "signatures.csv"


def data_error_run(tmp_path_factory) -> NfRun:
    """A Space Ranger folder without a count matrix: READ_VISIUM itself fails (exit 1, a data error).

    --signatures (from the tiny real run) keeps the reference steps out, so READ_VISIUM is the only task.
    """

    def make(folder: Path) -> NfRun:
        broken = folder / "broken_visium"
        shutil.copytree(LYMPH_NODE / "visium" / "spatial", broken / "spatial")
        sheet = folder / "samplesheet.csv"
        sheet.write_text("sample,spaceranger_dir\nbroken,broken_visium\n")
        return run_nf(folder, "--input", sheet, "--signatures", signatures_csv(tmp_path_factory), profile="local")

    return shared("data_error", make, tmp_path_factory)
