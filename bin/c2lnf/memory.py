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
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSET = Path(__file__).resolve().parents[2] / "assets" / "memory_model.json"

@lru_cache(maxsize=1)
def coefficients(path: Path = ASSET) -> dict | None:
    """The fitted coefficients, or None where the asset is not shipped (a bare copy of bin/)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def estimate_gb(n_locations: int, n_genes: int, n_types: int, coef: dict | None = None) -> float | None:
    """Peak memory (GB) of one full-batch mapping model of this size, or None without coefficients."""
    coef = coef or coefficients()
    if coef is None:
        return None
    return float(coef["base_gb"] + coef["gb_per_location_gene"] * n_locations * n_genes
                 + coef["gb_per_location_type"] * n_locations * n_types)


def max_locations(budget_gb: float, n_genes: int, n_types: int, coef: dict | None = None) -> int | None:
    """The most locations one model of G genes and T types may hold within `budget_gb` (at least 1; None: no
    estimate)."""
    coef = coef or coefficients()
    if coef is None:
        return None
    per_location = coef["gb_per_location_gene"] * n_genes + coef["gb_per_location_type"] * n_types
    if per_location <= 0:
        return 10**12
    return max(1, int((budget_gb - coef["base_gb"]) / per_location))


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
