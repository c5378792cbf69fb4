"""Start-up: the steps that do not train never import torch, scvi-tools, pyro or cell2location's package __init__.

Each step runs `bin/c2l` in a fresh interpreter through a wrapper that fails (exit 97, with the import stack)
when one of those packages is in sys.modules at the end, and its outputs are checked as well. No timings.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import BIN, C2L, FIXTURES, assert_png, no_staging, require

HEAVY = ("torch", "scvi", "pyro", "lightning", "cell2location")

# runs bin/c2l ARGS; exit 97 and the stack of the first import of each heavy package when any got imported
GUARD = textwrap.dedent(
    """
    import runpy, sys, traceback
    HEAVY = %r
    stacks = {}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in HEAVY and top != "cell2location" and top not in stacks:
                stacks[top] = "".join(traceback.format_stack(limit=15))
            return None  # only watches: the real finders do the import

    sys.meta_path.insert(0, Watch())
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    loaded = [m for m in HEAVY if m in sys.modules]
    if loaded:
        sys.stderr.write(f"HEAVY IMPORTS: {loaded}\\n" + "".join(stacks.values()))
        sys.exit(97)
    sys.exit(code)
    """
) % (HEAVY,)


def run_light(*args, cwd=None) -> subprocess.CompletedProcess:
    """`bin/c2l ARGS` in a subprocess that must exit 0 without importing any of HEAVY."""
    proc = subprocess.run([sys.executable, "-c", GUARD, str(C2L), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert proc.returncode == 0, (f"c2l {' '.join(map(str, args))} exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def test_the_guard_catches_a_heavy_import(tmp_path):
    """The wrapper itself: a script that imports `pyro` (a stand-in module here) exits 97 and names who did it."""
    (tmp_path / "pyro.py").write_text("")
    (tmp_path / "step.py").write_text("import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\nimport pyro\n")
    proc = subprocess.run([sys.executable, "-c", GUARD, str(tmp_path / "step.py")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 97 and "HEAVY IMPORTS: ['pyro']" in proc.stderr and "step.py" in proc.stderr


def test_help_and_versions_stay_light():
    assert "read-visium" in run_light("--help").stdout
    versions = run_light("versions", "--process", "X").stdout
    assert versions.startswith('"X":') and "cell2location:" in versions and "torch:" in versions


def test_read_visium_without_torch(tmp_path):
    folder = require(FIXTURES / "human_sr1_100x100")
    run_light("read-visium", "--sample", "sr1", "--spaceranger-dir", folder, "--outdir", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr1.h5ad", "sr1.qc.csv"]
    adata = ad.read_h5ad(tmp_path / "sr1.h5ad")
    assert adata.n_obs == 100 and adata.obsm["spatial"].shape == (100, 2)


def test_filter_reference_without_torch_keeps_the_same_genes(lymph_node, tmp_path):
    reference = lymph_node / "reference.h5ad"
    run_light("filter-reference", "--reference", reference, "--labels-key", "cell_type", "--outdir", tmp_path)
    genes = pd.read_csv(tmp_path / "reference_genes.csv", index_col=0)
    filtered = ad.read_h5ad(tmp_path / "reference_filtered.h5ad")
    assert_png(tmp_path / "reference_filter.png")
    no_staging(tmp_path)

    # the same cut-offs through the normal import of cell2location (package __init__, torch and all)
    import matplotlib.pyplot as plt
    from cell2location.utils.filtering import filter_genes

    from c2lnf.filter_reference import load_reference

    adata = load_reference(reference, "cell_type")
    expected = filter_genes(adata, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
    plt.close("all")
    assert 0 < len(expected) < adata.n_vars
    assert list(filtered.var_names) == list(expected)
    assert list(genes.index[genes["kept"]]) == list(expected)
    np.testing.assert_allclose(genes["nonz_mean"], adata.var["nonz_mean"], rtol=1e-6)


@pytest.fixture(scope="module")
def fake_mapped_section(ln_section, tmp_path_factory):
    """The lymph node section with made-up q05/means abundances in obsm (what plot-spatial reads; no training)."""
    adata = ad.read_h5ad(ln_section)
    rng = np.random.default_rng(0)
    types = ["B", "T_CD4", "T_CD8", "DC"]
    for stat in ("q05", "means"):
        adata.obsm[f"{stat}_cell_abundance_w_sf"] = pd.DataFrame(
            rng.gamma(2.0, 2.0, size=(adata.n_obs, len(types))), index=adata.obs_names,
            columns=[f"{stat}cell_abundance_w_sf_{t}" for t in types])
    path = tmp_path_factory.mktemp("fake_mapped") / "ln.cell2location.h5ad"
    adata.write_h5ad(path)
    return path


def test_plot_spatial_without_torch(fake_mapped_section, tmp_path):
    run_light("plot-spatial", fake_mapped_section, "--sample", "ln", "--n-overlay", "3", "--outdir", tmp_path)
    names = ["ln.overlay.png", "ln.proportions.png", "ln.q05_abundance.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert_png(tmp_path / name, min_kb=20)


def test_light_load_falls_back_to_the_full_import(tmp_path):
    """A file that imports its siblings cannot be loaded alone: the package is imported in full instead."""
    package = tmp_path / "cell2location"
    (package / "utils").mkdir(parents=True)
    (package / "__init__.py").write_text("import os\nos.environ['FAKE_C2L_INIT'] = 'ran'\n")
    (package / "utils" / "__init__.py").write_text("")
    (package / "utils" / "plain.py").write_text("def answer():\n    return 42\n")
    (package / "utils" / "helper.py").write_text("SEVEN = 7\n")
    (package / "utils" / "relative.py").write_text("from .helper import SEVEN\n\ndef answer():\n    return SEVEN\n")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(BIN)!r}]
        from c2lnf.light_imports import cell2location_function

        assert cell2location_function("utils.plain", "answer")() == 42
        assert "cell2location" not in sys.modules and "FAKE_C2L_INIT" not in os.environ
        assert cell2location_function("utils.relative", "answer")() == 7
        assert sys.modules["cell2location"].__file__.startswith({str(tmp_path)!r})
        assert os.environ["FAKE_C2L_INIT"] == "ran"
        # once the package is imported, its own modules are used
        plain = cell2location_function("utils.plain", "answer")
        assert plain() == 42 and plain.__module__ == "cell2location.utils.plain"
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
