"""Process-wide set-up shared by every step: caches, logging, seeding, devices, atomic outputs, figures."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Iterator

LOG = logging.getLogger("c2l")


def prepare_environment() -> None:
    """Keep matplotlib/numba/torch caches inside the task directory (or a private temp dir), headless plots.

    Runs before numpy, torch or matplotlib are imported. Values the user already set are kept.
    """
    base = os.environ.get("NXF_TASK_WORKDIR")
    if base:
        cache = Path(base) / ".c2l-cache"
    else:
        cache = Path(tempfile.gettempdir()) / f"c2l-cache-{os.getuid()}"
    defaults = {
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning"),
    }
    if base:
        # inside a Nextflow task: periodic log lines instead of progress bars
        defaults["TQDM_DISABLE"] = "1"
    numba_cache = _numba_cache_dir(Path(base) if base else None, cache)
    if numba_cache:
        defaults["NUMBA_CACHE_DIR"] = numba_cache
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


#: glibc's M_MMAP_THRESHOLD (mallopt parameter -3) and the value set by limit_heap_retention (bytes)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def limit_heap_retention() -> bool:
    """Serve every allocation of >= 1 MiB with its own mmap, returned to the system when freed (glibc only).

    glibc raises its mmap threshold each time a large block is freed, up to 32 MiB; after that, the tensors that
    torch allocates and frees at every training step (one per model site: locations x genes floats) come from the
    heap, which keeps the freed pages. Measured (benchmarks/README.md, "Memory"): a 2,000 x 4,000 mapping model
    peaked at 4.6 GB RSS, and at 1.9 GB with the threshold fixed at 1 MiB, no slower per epoch. A fixed threshold
    also turns off the dynamic one. Returns whether it was set. MALLOC_MMAP_THRESHOLD_ in the environment wins.
    Only for large models (map_cells: HEAP_LIMIT_MIN_ELEMENTS): for small ones every 1-2 MB tensor would then be a
    fresh mmap, 1.5x slower per epoch (1,000 x 500: 117 vs 79 ms), for a retention that is small anyway.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return False


def _numba_cache_dir(task_dir: Path | None, task_cache: Path) -> str | None:
    """Where numba keeps compiled functions, or None for numba's own default.

    Importing scanpy compiles ~40 numba functions (pynndescent, umap, scanpy's own): ~15 s on 2 cores when the
    cache is empty, so a cache private to each task costs every training task that. Numba's default (next to the
    installed sources) is shared by every task and run of one installation: used when that folder is writable
    (a venv, a conda env). A read-only image falls back to one cache for the whole run, beside the task folders
    (work/.c2l-cache: tasks write into work/ anyway; numba writes its cache files atomically), and to the task's
    own folder when even that is not writable.
    """
    import importlib.util

    spec = importlib.util.find_spec("pynndescent")
    if spec and spec.origin and os.access(Path(spec.origin).parent, os.W_OK):
        return None
    if task_dir is not None:
        work = task_dir.parent.parent
        if os.access(work, os.W_OK):
            return str(work / ".c2l-cache" / "numba")
    return str(task_cache / "numba")


def setup_logging(verbose: bool = False, warnings_file: Path | None = None) -> None:
    """Log lines to stderr with a timestamp; quieten the chatty libraries. With `warnings_file`, the pipeline's own
    warnings (logger `c2l.*`) are also appended there, one per line, for the pipeline to show in its console."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    if warnings_file is not None:
        handler = logging.FileHandler(warnings_file, mode="a", delay=True)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda record: record.name == "c2l" or record.name.startswith("c2l."))
        logging.getLogger().addHandler(handler)
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "numba", "matplotlib", "fontTools", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # anndata's "names are not unique" (with a source line that reads like a stray traceback): the steps check
    # duplicated barcodes (an error) and gene ids (a warning of their own) themselves
    warnings.filterwarnings("ignore", message=r".*names are not unique.*")


def available_memory_gb() -> float | None:
    """The host's available memory (MemAvailable of /proc/meminfo; None where there is none), in GB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and pyro (and scvi's own seed)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import pyro
        import scvi
        import torch

        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        scvi.settings.seed = seed
    except ImportError:  # pragma: no cover - torch-free steps
        pass


#: the oldest Linux driver (major.minor) of each CUDA release (NVIDIA's CUDA Toolkit release notes, table 3),
#: newest first: what a driver whose nvidia-smi does not say "CUDA Version" supports
CUDA_OF_DRIVER = [((580, 65), "13.0"), ((575, 51), "12.9"), ((570, 26), "12.8"), ((560, 28), "12.6"),
                  ((555, 42), "12.5"), ((550, 54), "12.4"), ((545, 23), "12.3"), ((535, 54), "12.2"),
                  ((530, 30), "12.1"), ((525, 60), "12.0"), ((520, 61), "11.8")]
#: the oldest driver that runs a torch built for CUDA <major>.x (minor version compatibility: any 12.x build
#: runs on a CUDA 12.0 driver, any 13.x build on a 13.0 one)
DRIVER_FOR_CUDA_MAJOR = {13: "580.65", 12: "525.60", 11: "450.80"}
#: what to run instead, per CUDA major version of the build that would work (docs/usage.md, "NVIDIA drivers")
BUILD_FOR_CUDA_MAJOR = {
    13: "the default build (image tag without a suffix; `make setup` for -profile local)",
    12: "the CUDA 12 build (-profile cu12 with docker/podman/singularity/apptainer/conda, "
        "or `make setup CUDA=12` for -profile local)",
}


#: the kernel module's version file: there even where nvidia-smi is not (e.g. inside a container without it)
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def nvidia_driver() -> tuple[str, str | None] | None:
    """This node's NVIDIA driver as (version, highest CUDA it supports), or None where there is none.

    From `nvidia-smi` (its header says both), else from /proc/driver/nvidia/version (the kernel module's version;
    the CUDA version is then looked up in CUDA_OF_DRIVER). Never raises.
    """
    import subprocess

    text = ""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            text = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    driver = re.search(r"Driver Version:\s*(\d+(?:\.\d+)+)", text)
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", text)
    if driver:
        return driver.group(1), cuda.group(1) if cuda else cuda_of_driver(driver.group(1))
    try:
        proc = NVIDIA_PROC_VERSION.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", proc)
    if not found:
        return None
    return found.group(1), cuda_of_driver(found.group(1))


def cuda_of_driver(driver: str) -> str | None:
    """The newest CUDA release that `driver` supports (None: older than every release in CUDA_OF_DRIVER)."""
    have = _version_tuple(driver)[:2]
    return next((cuda for oldest, cuda in CUDA_OF_DRIVER if have >= oldest), None)


def explain_no_gpu(torch_version: str, torch_cuda: str | None, driver: tuple[str, str | None] | None) -> str | None:
    """Why torch sees no GPU on a node with an NVIDIA driver, and what to run instead (one sentence); None when
    the node has no driver (a CPU node: nothing to explain)."""
    if driver is None:
        return None
    version, supports = driver
    has = f"this node's NVIDIA driver {version}" + (f" (CUDA <= {supports})" if supports else "")
    if not torch_cuda:
        return (f"{has} is present, but this torch ({torch_version}) is a CPU-only build: use the pipeline's "
                f"image or environment ({BUILD_FOR_CUDA_MAJOR[13]})")
    major = _version_tuple(torch_cuda)[0]
    needs = DRIVER_FOR_CUDA_MAJOR.get(major)
    if needs and _version_tuple(version)[:2] < _version_tuple(needs)[:2]:
        usable = [m for m in sorted(BUILD_FOR_CUDA_MAJOR, reverse=True)
                  if _version_tuple(version)[:2] >= _version_tuple(DRIVER_FOR_CUDA_MAJOR[m])[:2]]
        instead = (f"use {BUILD_FOR_CUDA_MAJOR[usable[0]]}" if usable else
                   f"no build of the pipeline runs on it: ask for driver >= {DRIVER_FOR_CUDA_MAJOR[12]} (CUDA 12) "
                   f"or >= {DRIVER_FOR_CUDA_MAJOR[13]} (CUDA 13)")
        return (f"{has} is too old for this torch ({torch_version}, built for CUDA {torch_cuda}: needs driver "
                f">= {needs}); {instead}")
    return (f"{has} suits this torch ({torch_version}, CUDA {torch_cuda}), but the task was given no GPU device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run with -profile gpu "
            "(it adds the engine's GPU option and, on SLURM, the --gres request)")


def resolve_device(device: str, require_gpu: bool = False) -> tuple[str, str]:
    """Turn `auto|cpu|cuda` into (accelerator, description); fall back to CPU with one warning.

    Returns the accelerator name for scvi-tools (`cpu` or `gpu`) and a human-readable device description.
    """
    import torch

    if device == "cpu":
        if require_gpu:
            from .errors import C2LError

            raise C2LError(
                "a GPU was required (--require-gpu) but this task was given none (--device cpu): "
                "run the pipeline with -profile gpu",
                field="device",
            )
        return "cpu", "cpu"
    has_cuda = torch.cuda.is_available()
    if not has_cuda:
        # a node with an NVIDIA driver: say why torch cannot use it (too old for this build, no device given)
        why = explain_no_gpu(torch.__version__, torch.version.cuda, nvidia_driver())
        if require_gpu:
            from .errors import C2LError

            raise C2LError(
                "a GPU was required (--require-gpu) but torch sees no CUDA device: " + why if why else
                "a GPU was required (--require-gpu) but torch sees no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                field="device",
            )
        if why:
            LOG.warning("no usable GPU: %s; training on the CPU instead", why)
        elif device == "cuda":
            LOG.warning("a GPU was requested but torch sees no CUDA device: training on the CPU instead")
        return "cpu", "cpu"
    name = torch.cuda.get_device_name(0)
    torch.set_float32_matmul_precision("high")
    return "gpu", f"cuda:0 ({name})"


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads to what the scheduler gave the task."""
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))


class StagedOutputs:
    """Write outputs under a hidden staging folder and move them into place only when the step succeeds.

    A killed or failing step therefore never leaves a plausible-looking, half-written output behind.
    """

    def __init__(self, outdir: Path):
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.stage = self.outdir / f".staging-{uuid.uuid4().hex[:8]}"
        self.stage.mkdir()
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        """Staged path for the final output `outdir/name` (parent folders are created)."""
        p = self.stage / name
        p.parent.mkdir(parents=True, exist_ok=True)
        self._names.append(name)
        return p

    def commit(self) -> list[Path]:
        final = []
        for name in self._names:
            src = self.stage / name
            if not src.exists():
                continue
            dst = self.outdir / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            os.replace(src, dst)
            final.append(dst)
        shutil.rmtree(self.stage, ignore_errors=True)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(outdir: Path) -> Iterator[StagedOutputs]:
    """Context manager around StagedOutputs: commit on success, discard on any error."""
    staged = StagedOutputs(outdir)
    try:
        yield staged
    except BaseException:
        staged.discard()
        raise
    staged.commit()


@contextlib.contextmanager
def captured_figures() -> Iterator[list]:
    """Collect every matplotlib figure opened inside the block (library plots call plt.show())."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    figures: list = []
    try:
        yield figures
    finally:
        figures.extend(plt.figure(n) for n in plt.get_fignums() if n not in before)


def save_figures(figures: list, path: Path, dpi: int = 110) -> Path:
    """Save one figure as is, or several stacked vertically into one PNG; close them all."""
    import matplotlib.pyplot as plt
    import numpy as np

    if not figures:
        raise RuntimeError(f"no figure was drawn for {path.name}")
    if len(figures) == 1:
        figures[0].savefig(path, dpi=dpi, bbox_inches="tight")
    else:
        images = []
        for fig in figures:
            fig.set_dpi(dpi)
            fig.canvas.draw()
            images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        width = max(im.shape[1] for im in images)
        padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
        stacked = np.concatenate(padded, axis=0)
        plt.imsave(path, stacked)
    for fig in figures:
        plt.close(fig)
    return path


def write_h5ad(adata, path: Path) -> Path:
    """Write an h5ad compressed (tissue images and sparse counts shrink a lot)."""
    adata.write_h5ad(path, compression="gzip")
    return path


def package_digest() -> str:
    """SHA-256 (16 hex) of this package's .py files: the same digest nextflow.config stamps into commands."""
    import hashlib

    root = Path(__file__).resolve().parent
    md = hashlib.sha256()
    for f in sorted(root.rglob("*.py"), key=lambda p: str(p)):
        md.update(("/" + str(f.relative_to(root))).encode())
        md.update(f.read_bytes())
    return md.hexdigest()[:16]


#: seconds a stopped step gets to clean up (its staging folder) before it exits regardless
STOP_GRACE_SECONDS = 15


def install_stop_handlers() -> None:
    """Make sure a stopped task never outlives its run (issue 31).

    - SIGINT: Nextflow's task wrapper starts the step in a background subshell, and a non-interactive shell starts
      background commands with SIGINT ignored, which Python then keeps: Ctrl-C reached the step only through the
      wrapper's trap. The step now stops on SIGINT itself.
    - SIGINT, SIGTERM, SIGHUP: a SystemExit (128 + signal) in the main thread, so that `staged_outputs` removes
      its staging folder; a library that catches it (Lightning's graceful shutdown) cannot keep the step going: it
      exits after STOP_GRACE_SECONDS regardless.
    - Linux: the step gets SIGTERM when the shell that started it dies (PR_SET_PDEATHSIG), e.g. a wrapper killed
      with SIGKILL, so it is never left running as an orphan.
    """
    import signal
    import threading

    def stop(signum, _frame):
        code = 128 + signum
        timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, args=(code,))
        timer.daemon = True
        timer.start()
        for other in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # once; the timer does the rest
            signal.signal(other, signal.SIG_IGN)
        raise SystemExit(code)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
