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
    "multiqc": "multiqc",
}
CUDA_PACKAGES = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# What each step runs on (the last part of the Nextflow process name); any other process gets everything.
TRAINING = ("cell2location", "scvi-tools", "pyro-ppl", "torch", "anndata", "numpy", "pandas", "matplotlib", "click")
STEP_PACKAGES = {
    "READ_VISIUM": ("anndata", "numpy", "pandas", "click"),
    "FILTER_REFERENCE": ("cell2location", "anndata", "numpy", "pandas", "matplotlib", "click"),
    "TRAIN_REFERENCE": TRAINING,
    "MAP_CELLS": TRAINING,
    "MERGE_SHARDS": ("anndata", "numpy", "pandas", "matplotlib", "click"),
    "PLOT_SPATIAL": ("scanpy", "anndata", "numpy", "pandas", "matplotlib", "click"),
    "MULTIQC": ("multiqc", "numpy", "pandas", "click"),
    "REGIONS": ("scanpy", "anndata", "numpy", "pandas", "matplotlib", "click"),
    "COLOCATION": ("cell2location", "anndata", "numpy", "pandas", "matplotlib", "click"),
}


def versions(step: str | None = None) -> dict[str, str]:
    """Versions of the pipeline's Python package and the packages `step` uses (all without a step; the CUDA
    runtime, if installed, for the training steps)."""
    names = STEP_PACKAGES.get(step or "", tuple(PACKAGES))
    out = {"c2lnf": __version__}
    for name in names:
        out[name] = _version(PACKAGES[name]) or "not installed"
    if "torch" in names:
        out["cuda-runtime"] = next((v for v in map(_version, CUDA_PACKAGES) if v), None) or "none"
    return out


def versions_yaml(process: str) -> str:
    """nf-core style versions.yml text for one process (its packages picked by the process's own name)."""
    lines = [f'"{process}":']
    lines += [f'    {k}: "{v}"' for k, v in versions(process.split(":")[-1]).items()]
    return "\n".join(lines) + "\n"
