"""GPU wiring: -profile gpu gives the training steps, and only them, a GPU; without a GPU the CLI falls back.

Three layers:
- `nextflow config -flat` per profile combination: `withLabel:process_gpu` gets `accelerator = 1`, `maxForks`
  and the engine option only with `gpu`, and nothing else ever gets an accelerator;
- end to end through real Nextflow with a fake `docker` / `singularity` / `apptainer` first on PATH: the fake
  engine logs its arguments and runs the task's command without a container, and a fake `c2l` creates the
  outputs each task declares (read from Nextflow's .command.run header). The log must show `--gpus all` / `--nv` on exactly the TRAIN_REFERENCE and MAP_CELLS
  invocations, and their `.command.sh` must say `--device cuda` (`cpu` without `gpu`) while the other steps
  have no `--device`. The real script blocks are rendered (not `-stub`, whose blocks never mention a device),
  but nothing heavy runs;
- the real CLI on this GPU-less machine (`CUDA_VISIBLE_DEVICES=` hides GPUs anywhere else): `--device cuda`
  warns once and trains on the CPU; `--require-gpu` exits 1 with one error line and no outputs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
NEXTFLOW = VENV_BIN / "nextflow"
TESTDATA = Path(os.environ.get("C2L_TESTDATA", REPO.parent / "shared" / "testdata"))
REFERENCE = TESTDATA / "lymph_node" / "reference.h5ad"

IMAGE = "ghcr.io/cell2location-nf/cell2location-nf:0.1.0"
STEPS = {"READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE", "MAP_CELLS", "PLOT_SPATIAL"}
GPU_STEPS = {"TRAIN_REFERENCE", "MAP_CELLS"}
GPU_FLAG = {"docker": ["--gpus", "all"], "podman": ["--device", "nvidia.com/gpu=all"], "singularity": ["--nv"],
            "apptainer": ["--nv"]}
FALLBACK_WARNING = "a GPU was requested but torch sees no CUDA device: training on the CPU instead"

needs_nextflow = pytest.mark.skipif(not NEXTFLOW.exists(), reason="no .venv/bin/nextflow (run make setup)")
needs_testdata = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"lymph node test data not found under {TESTDATA}")


def nf_env(tmp_path: Path, front: list[Path] | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*(str(p) for p in front or []), str(VENV_BIN), env.get("PATH", "")])
    env.update(
        NXF_OFFLINE="true",
        NXF_ANSI_LOG="false",
        NXF_SINGULARITY_CACHEDIR=str(tmp_path / "sif-cache"),
        NXF_APPTAINER_CACHEDIR=str(tmp_path / "sif-cache"),
    )
    for key in ("NXF_WORK", "NXF_PARAMS_FILE"):
        env.pop(key, None)
    return env


# ---------------------------------------------------------------------------------------------------------
# nextflow config
# ---------------------------------------------------------------------------------------------------------
def flat_config(profile: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [str(NEXTFLOW), "config", str(REPO), "-profile", profile, "-flat"],
        cwd=tmp_path, env=nf_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def setting_lines(config: str, key: str) -> list[str]:
    return [line for line in config.splitlines() if re.match(rf"^process\.(?:'[^']+'\.)?{key} = ", line)]


@needs_nextflow
@pytest.mark.parametrize("engine", ["docker", "podman", "singularity", "apptainer"])
def test_config_gpu_profile_gives_process_gpu_an_accelerator(engine, tmp_path):
    config = flat_config(f"{engine},gpu", tmp_path)
    assert f"{engine}.enabled = true" in config
    assert setting_lines(config, "accelerator") == ["process.'withLabel:process_gpu'.accelerator = 1"]
    assert setting_lines(config, "maxForks") == ["process.'withLabel:process_gpu'.maxForks = 1"]  # params.gpu_max_forks
    # containerOptions is a closure on workflow.containerEngine: only process_gpu has one, and it names the
    # right option per engine (the end-to-end tests below check what each engine actually receives)
    opts = setting_lines(config, "containerOptions")
    assert len(opts) == 1 and opts[0].startswith("process.'withLabel:process_gpu'.containerOptions = {"), opts
    block = config[config.index(opts[0]):].split("\n}\n", 1)[0] if "\n}\n" in config else config
    assert re.search(r"\['singularity', 'apptainer'\] \? '--nv'", block), block
    assert re.search(r"== 'docker' \? '--gpus all'", block), block
    assert re.search(r"== 'podman' \? '--device nvidia.com/gpu=all'", block), block


@needs_nextflow
@pytest.mark.parametrize("profile", ["docker", "podman", "singularity,test", "apptainer", "conda", "local"])
def test_config_without_gpu_profile_has_no_accelerator(profile, tmp_path):
    config = flat_config(profile, tmp_path)
    assert not setting_lines(config, "accelerator"), "an accelerator without -profile gpu"
    engine = profile.split(",")[0]
    if engine in ("singularity", "apptainer"):  # the ~6 GB image needs more than the 20 min default to convert
        assert f"{engine}.pullTimeout = '1h'" in config
    if engine == "conda":
        assert "conda.createTimeout = '1h'" in config
    assert not setting_lines(config, "containerOptions")
    assert not setting_lines(config, "maxForks")


# ---------------------------------------------------------------------------------------------------------
# end to end with a fake container engine
# ---------------------------------------------------------------------------------------------------------
FAKE_ENGINE = '''#!{python}
"""Fake {engine}: log the arguments, then run the task's command here, without a container."""
import json, os, sys
argv = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{"engine": os.path.basename(sys.argv[0]), "argv": argv, "cwd": os.getcwd()}}) + "\\n")
if argv[:1] == ["pull"]:  # singularity/apptainer pull --name FILE docker://IMAGE
    open(argv[argv.index("--name") + 1], "w").close()
    sys.exit(0)
if argv[:1] in (["run"], ["exec"]):
    # IMAGE is followed by the command: /bin/bash -c "..." (or /bin/bash -ue .command.sh)
    start = next(i for i in range(2, len(argv)) if argv[i] in ("/bin/bash", "bash") and argv[i + 1:i + 2] in (["-c"], ["-ue"]))
    if "-w" in argv[:start]:
        os.chdir(argv[argv.index("-w") + 1])
    os.execvp(argv[start], argv[start:])
sys.exit(0)  # rm, stop, kill, --version ...
'''

FAKE_C2L = '''#!{python}
"""Fake c2l: record the command line and create the outputs the task declares, as tiny placeholders.

The declared outputs are read from the header Nextflow writes into the task's .command.run
(`### outputs:` / `### - 'name'`), so the fake follows the modules as they change; a `*` becomes each sample
named by the step's .h5ad arguments (the workflow joins mapped sections back to samples by file name).
"""
import json, os, re, sys
from pathlib import Path
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] == "--pipeline-digest" else args[1:]
step, rest = args[0], args[1:]
opt = lambda name, default=None: rest[rest.index(name) + 1] if name in rest else default
if step == "versions":
    print('"%s":\\n    c2l: "fake"' % opt("--process", "C2L"))
    sys.exit(0)
header = Path(".command.run").read_text().split("### outputs:", 1)[1].split("### ...", 1)[0]
declared = re.findall(r"^### - '(.+)'$", header, re.M)
samples = [Path(a).name.split(".")[0] for a in rest if a.endswith(".h5ad") and a != opt("--reference")]
samples = samples or [opt("--sample") or "x"]
for pattern in declared:  # paths relative to the task folder (a step may write under a subfolder of it)
    if pattern == "versions.yml":
        continue  # written by `c2l versions > versions.yml`
    names = [pattern.replace("*", s) for s in samples] if "*" in pattern else [pattern]
    for name in names:
        if re.search(r"[?{{}}\\[\\]]", name):
            sys.exit("fake c2l (tests/test_gpu_profile.py): cannot fake output pattern %r" % pattern)
        p = Path(name)
        if not p.suffix:  # a folder output (a saved model)
            p.mkdir(parents=True, exist_ok=True)
            (p / "model.pt").write_text("x\\n")
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        # (a QC table's n_spots: the workflow sizes the mapping models from it)
        p.write_text({{".csv": "sample,n_spots,value\\n%s,1,1\\n" % samples[0], ".json": "{{}}\\n"}}.get(p.suffix, "x\\n"))
'''


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def task_name(workdir: Path) -> str:
    """CELL2LOCATION:TRAIN_REFERENCE (x) -> TRAIN_REFERENCE, from the header Nextflow writes into .command.run."""
    m = re.search(r"^### name: '([^']+)'", (workdir / ".command.run").read_text(), re.M)
    assert m, f"no task name in {workdir}/.command.run"
    return m.group(1).split(" (")[0].split(":")[-1]


def run_pipeline(tmp_path: Path, engine: str, gpu: bool, extra: list[str] = ()) -> dict:
    """Run -profile test,ENGINE[,gpu] with the fakes; return per-step engine invocations and .command.sh."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    engine_log, c2l_log = tmp_path / "engine.jsonl", tmp_path / "c2l.jsonl"
    write_exe(fake_bin / engine, FAKE_ENGINE.format(python=sys.executable, engine=engine, log=str(engine_log)))
    write_exe(fake_bin / "c2l", FAKE_C2L.format(python=sys.executable, log=str(c2l_log)))
    profile = f"test,{engine}" + (",gpu" if gpu else "")
    cmd = [str(NEXTFLOW), "run", str(REPO / "main.nf"), "-profile", profile, "--testdata", str(TESTDATA),
           "--outdir", str(tmp_path / "res"), "-work-dir", str(tmp_path / "work"),
           "--skip_multiqc", *extra]  # the report reads real outputs: the fake c2l's are empty files
    result = subprocess.run(cmd, cwd=tmp_path, env=nf_env(tmp_path, [fake_bin]), capture_output=True, text=True,
                            timeout=600)
    log = (tmp_path / ".nextflow.log").read_text() if (tmp_path / ".nextflow.log").exists() else ""
    assert result.returncode == 0, f"{shlex.join(cmd)}\n{result.stdout}\n{result.stderr}\n{log[-4000:]}"

    calls = [json.loads(line) for line in engine_log.read_text().splitlines()]
    pulls = [c["argv"] for c in calls if c["argv"][:1] == ["pull"]]
    launches: dict[str, list[list[str]]] = {}
    for call in calls:
        argv = call["argv"]
        if argv[:1] not in (["run"], ["exec"]):
            continue
        start = next(i for i in range(2, len(argv)) if argv[i] == "/bin/bash")
        script = argv[start + 2]
        m = re.search(r"(\S+)/\.command\.run nxf_trace", script)
        assert m, f"unexpected task command: {script}"
        workdir = Path(m.group(1))
        # [engine options..., IMAGE, workdir]: the image is the argument just before the command
        launches.setdefault(task_name(workdir), []).append([*argv[:start], str(workdir)])
    return {"launches": launches, "pulls": pulls, "stdout": result.stdout}


def engine_args(launch: list[str]) -> tuple[list[str], str, Path]:
    """(options, image, workdir) of one logged `docker run` / `singularity exec` before the task command."""
    *head, image, workdir = launch
    return head, image, Path(workdir)


def has_flag(options: list[str], flag: list[str]) -> bool:
    return any(options[i:i + len(flag)] == flag for i in range(len(options)))


E2E = [
    pytest.param("docker", True, [], id="docker,gpu"),
    pytest.param("singularity", True, ["--require_gpu"], id="singularity,gpu+require_gpu"),
    pytest.param("apptainer", True, [], id="apptainer,gpu"),
    pytest.param("podman", True, [], id="podman,gpu"),
    pytest.param("docker", False, ["OVERRIDE"], id="docker,no-gpu+private-image"),
]


@needs_nextflow
@needs_testdata
@pytest.mark.parametrize("engine,gpu,extra", E2E)
def test_only_training_steps_get_the_gpu(engine, gpu, extra, tmp_path):
    image = IMAGE
    extra = list(extra)
    if "OVERRIDE" in extra:
        # containers/README.md: a withName selector in a user config replaces the pipeline's image
        image = "registry.example.org/lab/cell2location-nf:0.1.0"
        override = tmp_path / "my_registry.config"
        override.write_text("process {\n    withName: '.*' {\n        container = '%s'\n    }\n}\n" % image)
        extra = ["-c", str(override)]
    run = run_pipeline(tmp_path, engine, gpu, extra)
    launches = run["launches"]
    assert set(launches) == STEPS, f"steps launched through {engine}: {sorted(launches)}"

    if engine in ("singularity", "apptainer"):
        # Nextflow pulls the docker:// image once into its cache and runs the local file
        assert len(run["pulls"]) == 1 and run["pulls"][0][-1] == f"docker://{IMAGE}", run["pulls"]
        expected_image = str(tmp_path / "sif-cache" / (IMAGE.replace("/", "-").replace(":", "-") + ".img"))
    else:
        assert not run["pulls"]
        expected_image = image

    for step, calls in launches.items():
        assert len(calls) == 1, f"{step} launched {len(calls)} times"
        options, used_image, workdir = engine_args(calls[0])
        assert used_image == expected_image, f"{step} ran {used_image}"
        wants_gpu = gpu and step in GPU_STEPS
        assert has_flag(options, GPU_FLAG[engine]) == wants_gpu, f"{step}: {engine} options {options}"
        if engine in ("docker", "podman"):  # tasks run as the calling user (rootful: the uid as is)
            assert has_flag(options, ["-u", f"{os.getuid()}:{os.getgid()}"]), f"{step}: {options}"
        for other in ("--gpus", "--nv"):  # no other engine's flag, ever
            if other not in GPU_FLAG[engine]:
                assert other not in options, f"{step}: {options}"

        script = (workdir / ".command.sh").read_text()
        devices = re.findall(r"--device (\S+)", script)
        if step in GPU_STEPS:
            assert devices == ["cuda" if gpu else "cpu"], f"{step} .command.sh: {devices}"
            assert ("--require-gpu" in script) == ("--require_gpu" in extra), step
        else:
            assert devices == [], f"{step} .command.sh passes a device: {devices}"
            assert "--require-gpu" not in script


# ---------------------------------------------------------------------------------------------------------
# the CLI's CPU fallback (real training, tiny)
# ---------------------------------------------------------------------------------------------------------
def cpu_only_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU even on a machine that has one
    env["OMP_NUM_THREADS"] = "1"
    env.pop("NXF_TASK_WORKDIR", None)
    return env


def c2l(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bin" / "c2l"), *args], env=cpu_only_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def filtered_reference(tmp_path_factory) -> Path:
    if not REFERENCE.is_file():
        pytest.skip(f"lymph node test data not found under {TESTDATA}")
    out = tmp_path_factory.mktemp("filtered")
    result = c2l("filter-reference", "--reference", str(REFERENCE), "--labels-key", "cell_type",
                 "--batch-key", "sample", "--outdir", str(out))
    assert result.returncode == 0, result.stderr
    return out / "reference_filtered.h5ad"


TRAIN = ["--labels-key", "cell_type", "--batch-key", "sample", "--max-epochs", "2", "--num-samples", "5",
         "--batch-size", "2500", "--threads", "1"]


def test_cuda_request_without_gpu_warns_once_and_trains_on_cpu(filtered_reference, tmp_path):
    out = tmp_path / "out"
    result = c2l("train-reference", "--reference", str(filtered_reference), *TRAIN, "--device", "cuda",
                 "--outdir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(FALLBACK_WARNING) == 1, result.stderr[-3000:]
    warning_lines = [line for line in result.stderr.splitlines() if " WARNING c2l" in line]
    assert len(warning_lines) == 1 and FALLBACK_WARNING in warning_lines[0], warning_lines
    assert "training device: cpu" in result.stderr
    header = (out / "signatures.csv").read_text().splitlines()[0].split(",")
    assert len(header) == 12, f"signatures.csv: expected gene column + 11 cell types, got {header}"
    assert (out / "reference_model").is_dir() and (out / "reference_history.csv").is_file()


def test_require_gpu_without_gpu_fails_clearly(filtered_reference, tmp_path):
    out = tmp_path / "out"
    result = c2l("train-reference", "--reference", str(filtered_reference), *TRAIN, "--device", "cuda",
                 "--require-gpu", "--outdir", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "--require-gpu" in errors[0] and "no CUDA device" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert FALLBACK_WARNING not in result.stderr
    leftovers = sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else []
    assert leftovers == [], f"outputs left behind: {leftovers}"
