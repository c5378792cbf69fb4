"""cell2location's plain helpers without its package __init__ (which imports torch, scvi-tools and pyro).

`import cell2location.utils.filtering` first runs cell2location/__init__.py, which imports the models and with
them scvi-tools, torch and pyro: about 20 s before a step that never trains does any work. The two helpers the
non-training steps call (`utils/filtering.py: filter_genes`, `plt/plot_spatial.py: plot_spatial`) import only
numpy and matplotlib, so their installed files are executed here on their own, under a private module name.
The code that runs is still the installed cell2location's; when that fails (a later version makes the file
import its siblings, say), the normal import is used instead: slower, never different.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

LOG = logging.getLogger("c2l")
PACKAGE = "cell2location"
#: prefix of the private names the files are loaded under (never `cell2location.*`, which the full import owns)
PRIVATE_PREFIX = "_c2lnf_light_cell2location"


def _load_file(submodule: str):
    """Execute cell2location/<submodule>.py alone; returns the module (cached in sys.modules under a private name)."""
    name = f"{PRIVATE_PREFIX}.{submodule}"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed as a package")
    relative = Path(*submodule.split(".")).with_suffix(".py")
    for location in package.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            break
    else:
        raise ImportError(f"{relative} is not in {list(package.submodule_search_locations)}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # a relative import in the file fails here: no parent package
    except BaseException:
        del sys.modules[name]
        raise
    return module


def cell2location_function(submodule: str, attribute: str) -> Any:
    """`cell2location.<submodule>.<attribute>`, e.g. ("utils.filtering", "filter_genes"), without torch if possible.

    Once cell2location has been imported in full (a training step in the same process) that module is used.
    """
    if PACKAGE not in sys.modules:
        try:
            return getattr(_load_file(submodule), attribute)
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the import cell2location documents
            LOG.info("could not load %s.%s on its own (%s: %s): importing %s in full",
                     PACKAGE, submodule, type(exc).__name__, exc, PACKAGE)
    return getattr(importlib.import_module(f"{PACKAGE}.{submodule}"), attribute)
