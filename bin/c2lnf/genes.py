"""Gene identifiers: what an Ensembl gene id looks like (read_visium keys sections by it, map_cells uses it to
explain a failed gene match)."""

from __future__ import annotations

import re

import numpy as np

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def looks_ensembl(names, limit: int | None = 500) -> bool:
    """True when most of the first `limit` names (all with None) are Ensembl gene ids."""
    names = [str(n) for n in list(names)[:limit]]
    return bool(names) and float(np.mean([bool(ENSEMBL_RE.match(n)) for n in names])) > 0.5
