"""Software versions, read from package metadata (fast: nothing heavy is imported)."""

from __future__ import annotations

from importlib import metadata

from . import __version__

PACKAGES = {
    "cell2location": "cell2location",
    "scvi-tools": "scvi-tools",
    "pyro-ppl": "pyro-ppl",
    "torch": "torch",
    "scanpy": "scanpy",
    "anndata": "anndata",
    "numpy": "numpy",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "click": "click",
}
CUDA_PACKAGES = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Versions of the pipeline's Python package and its scientific stack (CUDA runtime if installed)."""
    out = {"c2lnf": __version__}
    for name, dist in PACKAGES.items():
        out[name] = _version(dist) or "not installed"
    cuda = next((v for v in map(_version, CUDA_PACKAGES) if v), None)
    out["cuda-runtime"] = cuda or "none"
    return out


def versions_yaml(process: str) -> str:
    """nf-core style versions.yml text for one process."""
    lines = [f'"{process}":']
    lines += [f'    {k}: "{v}"' for k, v in versions().items()]
    return "\n".join(lines) + "\n"
