"""Check .whl/ (make gpu-wheels) against benchmarks/gpu_wheels.txt and the GPU machine's own packages.

Without Python 3.12 and that machine's torch here, this is the completeness test of the wheel set:

* every pin of gpu_wheels.txt (plain lines and `#sdist NAME==VERSION` lines) has exactly one wheel, of that
  version, with a tag Python 3.12 on manylinux x86_64 installs; nothing else is in the folder (`--prune` deletes
  what is not pinned, e.g. an older version, which would otherwise break `pip install .whl/*.whl`);
* every requirement (Requires-Dist, markers evaluated for CPython 3.12 on Linux x86_64, extras that a parent
  asks for) of every wheel is met by another wheel (name and version) or by a package the device image already
  has (DEVICE below, from /work/.library/device/KINDS.md; version checked where that page gives one);
* the folder stays under --max-mib (it travels with the working tree: 64 MiB in all).

Exit 0 when all holds; otherwise 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import Marker  # noqa: F401
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip's vendored copy (make gpu-wheels runs this with a plain python3 that has pip)
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

HERE = Path(__file__).resolve().parent

# The device image 'cuda' (nvidia-h100-x1 / nvidia-h200): packages already installed, as KINDS.md listed them
# (read 2026-11-17); versions where its pip list gives one. Python 3.12.3.
DEVICE_VERSIONS = {"numpy": "2.5.2", "torch": "2.11.0", "pytorch-lightning": "2.6.6", "torchmetrics": "1.9.0",
                   "triton": "3.6.0", "jax": "0.11.2"}
DEVICE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pyparsing pyproject-hooks pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())
# Requirements knowingly left unmet, and why.
WAIVED = {
    "opencv-python": "the device has opencv-python-headless (the same cv2 module); cell2location imports cv2 only in "
                     "cell2location.plt.RotateCrop, which `import cell2location` does not load",
}
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "implementation_version": "3.12.3"}
TAG_OK = re.compile(r"^(py3|py2\.py3|cp312|cp3\d+)-(none|cp312|abi3)-(any|manylinux\w*_x86_64)$")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#sdist "):
            line = line[len("#sdist "):]
        elif not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version.strip()
    return out


def metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="?", default=Path(".whl"))
    ap.add_argument("--list", type=Path, default=HERE / "gpu_wheels.txt")
    ap.add_argument("--prune", action="store_true", help="delete wheels that gpu_wheels.txt does not pin")
    ap.add_argument("--max-mib", type=float, default=60.0)
    a = ap.parse_args()

    want = pins(a.list)
    problems: list[str] = []
    have: dict[str, tuple[Version, Path]] = {}
    for whl in sorted(a.folder.glob("*.whl")):
        name, version, _build, tags = parse_wheel_filename(whl.name)
        if want.get(name) != str(version):
            if a.prune:
                print(f"pruned {whl.name} (not pinned in {a.list.name})")
                whl.unlink()
                continue
            problems.append(f"{whl.name}: not pinned in {a.list.name} (wanted {name}=={want.get(name)}); --prune removes it")
        if name in have:
            problems.append(f"two wheels of {name}: {have[name][1].name} and {whl.name}")
        if not any(TAG_OK.match(str(t)) for t in tags):
            problems.append(f"{whl.name}: no tag for CPython 3.12 on manylinux x86_64")
        have[name] = (version, whl)
    for name, version in want.items():
        if name not in have:
            problems.append(f"missing: {name}=={version} (run make gpu-wheels)")

    # requirements, with the extras that parents ask for
    extras: dict[str, set[str]] = {n: set() for n in have}
    reqs: dict[str, list[Requirement]] = {}
    for name, (_v, whl) in have.items():
        reqs[name] = [Requirement(r) for r in metadata(whl).get_all("Requires-Dist") or []]
    changed = True
    while changed:
        changed = False
        for name, rs in reqs.items():
            for r in rs:
                dep = canonicalize_name(r.name)
                if dep in extras and r.extras and not r.extras <= extras[dep]:
                    if any(r.marker is None or r.marker.evaluate({**ENV, "extra": e}) for e in extras[name] | {""}):
                        extras[dep] |= set(r.extras)
                        changed = True
    device_only = set()
    for name, rs in sorted(reqs.items()):
        for r in rs:
            if r.marker is not None and not any(r.marker.evaluate({**ENV, "extra": e}) for e in extras[name] | {""}):
                continue
            dep = canonicalize_name(r.name)
            if dep in have:
                if not r.specifier.contains(have[dep][0], prereleases=True):
                    problems.append(f"{name} needs {r}, the wheel is {dep} {have[dep][0]}")
            elif dep in DEVICE:
                device_only.add(dep)
                known = DEVICE_VERSIONS.get(dep)
                if known and not r.specifier.contains(Version(known), prereleases=True):
                    problems.append(f"{name} needs {r}; the device has {dep} {known}")
            elif dep in WAIVED:
                print(f"waived: {name} needs {r}: {WAIVED[dep]}")
            else:
                problems.append(f"{name} needs {r}: neither a wheel here nor on the device")

    total = sum(p.stat().st_size for p in a.folder.glob("*.whl")) / 1024**2
    print(f"{len(have)} wheels, {total:.1f} MiB in {a.folder}/; needs met by the device image: {', '.join(sorted(device_only))}")
    if total > a.max_mib:
        problems.append(f"{total:.1f} MiB of wheels: over {a.max_mib:g} MiB")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
