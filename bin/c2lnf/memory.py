"""How much memory a Cell2location mapping model needs, and how to split the locations when it is too much.

The estimate is a fit to measured peak memory (benchmarks/memory_model.py, docs/benchmarks.md):

    peak_gb = base_gb + gb_per_location_gene * N * G + gb_per_location_type * N * T

N locations, G genes shared with the signatures, T cell types. Its coefficients live in assets/memory_model.json,
which the workflow also reads to size shards (one source for both). Shards follow the maintainers' advice for data
that does not fit: random subsets of the locations, stratified by section (batch), one model per subset.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSET = Path(__file__).resolve().parents[2] / "assets" / "memory_model.json"

#: Pyro's JitTrace_ELBO is used for a full-batch model of at most this many locations x genes. Its traced graph
#: keeps about twice the training memory of Trace_ELBO (4000 x 2000: 4.5 vs 2.0 GB peak RSS; docs/benchmarks.md),
#: for a few per cent per epoch: worth it for small models, not where memory is what limits the run.
JIT_MAX_ELEMENTS = int(float(os.environ.get("C2L_JIT_MAX_ELEMENTS", 1e7)))


def uses_jit(n_locations: int, n_genes: int) -> bool:
    return n_locations * n_genes <= JIT_MAX_ELEMENTS


@lru_cache(maxsize=1)
def coefficients(path: Path = ASSET) -> dict | None:
    """The fitted coefficients ({'jit': {...}, 'trace': {...}}), or None where the asset is not shipped."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _linear(coef: dict, n: float, g: int, t: int) -> float:
    return coef["base_gb"] + coef["gb_per_location_gene"] * n * g + coef["gb_per_location_type"] * n * t


def estimate_gb(n_locations: int, n_genes: int, n_types: int, coef: dict | None = None) -> float | None:
    """Peak memory (GB) of one full-batch mapping model of this size, or None without coefficients."""
    coef = coef or coefficients()
    if coef is None:
        return None
    loss = "jit" if uses_jit(n_locations, n_genes) else "trace"
    return float(_linear(coef[loss], n_locations, n_genes, n_types))


def _solve(coef: dict, budget_gb: float, g: int, t: int) -> int:
    per_location = coef["gb_per_location_gene"] * g + coef["gb_per_location_type"] * t
    room = budget_gb - coef["base_gb"]
    if per_location <= 0:
        return 10**12
    return max(0, int(room / per_location))


def max_locations(budget_gb: float, n_genes: int, n_types: int, coef: dict | None = None) -> int | None:
    """The most locations one model of G genes and T types may hold within `budget_gb` (None: no estimate;
    at least 1)."""
    coef = coef or coefficients()
    if coef is None:
        return None
    jit_limit = JIT_MAX_ELEMENTS // max(1, n_genes)  # above this many locations the model trains without JIT
    n_trace = _solve(coef["trace"], budget_gb, n_genes, n_types)
    if n_trace > jit_limit:
        return n_trace
    return max(1, min(jit_limit, _solve(coef["jit"], budget_gb, n_genes, n_types)))


def n_shards(n_locations: int, max_per_model: int) -> int:
    return max(1, math.ceil(n_locations / max_per_model))


def shard_of_spots(sample: str, n_spots: int, count: int, seed: int) -> np.ndarray:
    """The shard (0..count-1) of each of a section's spots, in the section's order.

    A random permutation of the section's spots (seeded by the run's seed and the sample id, so every task of a
    run computes the same assignment without talking to the others) dealt round-robin into `count` shards: each
    shard holds floor or ceil(n_spots / count) spots of every section, so each section's technical effect is
    estimated in every shard.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(sample.encode())])
    shard = np.empty(n_spots, dtype=int)
    shard[rng.permutation(n_spots)] = np.arange(n_spots) % count
    return shard
