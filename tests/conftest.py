"""Shared fixtures and helpers for the tests of the `c2l` CLI and its package (bin/c2lnf).

Everything that trains is a lazy, session-scoped fixture: only the tests that ask for it pay for it, and each
model is trained once per test session (tiny epochs and posterior samples; the shapes are what is checked).
Test data come from ../shared/testdata or $C2L_TESTDATA; tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "bin"
C2L = BIN / "c2l"
sys.path.insert(0, str(BIN))

from c2lnf.runtime import prepare_environment  # noqa: E402  (headless matplotlib, caches out of $HOME)

prepare_environment()

TESTDATA = Path(os.environ.get("C2L_TESTDATA", REPO.parent / "shared" / "testdata"))
LYMPH_NODE = TESTDATA / "lymph_node"
HIPPOCAMPUS = TESTDATA / "mouse_hippocampus"
FIXTURES = TESTDATA / "spaceranger_fixtures"

LN_CELL_TYPES = ["B", "B_Plasma", "DC", "Endo", "ILC", "Macrophages", "Monocytes", "NK", "T_CD4", "T_CD8", "VSMC"]
LN_LIBRARY = "V1_Human_Lymph_Node_subset"
# keep training tiny: the tests check shapes, files and wiring, not the fit
TINY_REFERENCE = ["--max-epochs", "3", "--num-samples", "5", "--device", "cpu"]
TINY_MAPPING = ["--max-epochs", "20", "--num-samples", "5", "--device", "cpu"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def require(path: Path) -> Path:
    """Skip the calling test when a test-data path is absent."""
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set C2L_TESTDATA to the shared testdata folder)")
    return path


# ---------------------------------------------------------------- running the CLI


def invoke(*args, expect: int | None = 0):
    """Run `c2l ARGS` in-process with click's CliRunner; assert the exit code unless `expect` is None."""
    from click.testing import CliRunner

    from c2lnf.cli import cli

    # the CLI reconfigures logging onto the runner's (then closed) stderr: put the handlers back afterwards
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if expect is not None and result.exit_code != expect:
        import traceback

        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise AssertionError(f"c2l {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                             f"{result.output[-4000:]}\n{tb}")
    return result


def run_c2l(*args, expect: int | None = 0, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real entry point `bin/c2l ARGS` in a subprocess (the venv's python first on PATH)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(C2L), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
    if expect is not None and proc.returncode != expect:
        raise AssertionError(f"bin/c2l {' '.join(map(str, args))} exited {proc.returncode}, expected {expect}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def error_lines(text: str) -> list[str]:
    """The `Error: ...` lines click printed (one per failure)."""
    return [line for line in text.splitlines() if line.startswith("Error:")]


def assert_failed_cleanly(result, exit_code: int, *fragments: str, outdir: Path | None = None) -> str:
    """A failed step: the exit code, exactly one `Error:` line holding every fragment, no traceback, no outputs.

    `result` is a click Result (CliRunner) or a CompletedProcess (subprocess). Returns the error line.
    """
    if isinstance(result, subprocess.CompletedProcess):
        code, text = result.returncode, result.stderr
    else:
        code, text = result.exit_code, result.output
    assert code == exit_code, f"exit {code}, expected {exit_code}:\n{text[-3000:]}"
    lines = error_lines(text)
    assert len(lines) == 1, f"expected one 'Error:' line, got {lines}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if outdir is not None:
        assert_no_outputs(outdir)
    return lines[0]


def assert_no_outputs(outdir: Path) -> None:
    """The output folder of a failed step holds nothing: no output, no leftover `.staging-*`."""
    if Path(outdir).exists():
        left = sorted(p.name for p in Path(outdir).iterdir())
        assert left == [], f"a failed step left {left} in {outdir}"


def assert_png(path: Path, min_kb: float = 5) -> None:
    """A real, non-trivial PNG file."""
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > min_kb * 1024, f"{path.name} is only {len(data)} bytes"


def no_staging(outdir: Path) -> None:
    left = [p.name for p in Path(outdir).iterdir() if re.match(r"\.staging-", p.name)]
    assert not left, f"leftover staging folder(s) {left}"


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test leaves open would become pyplot's current figure in the next one (cell2location's plot_QC
    draws on it): close them after every test."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


# ---------------------------------------------------------------- data fixtures (cheap)


@pytest.fixture(scope="session")
def lymph_node() -> Path:
    return require(LYMPH_NODE)


@pytest.fixture(scope="session")
def ln_section(lymph_node, tmp_path_factory) -> Path:
    """The lymph node section read by `c2l read-visium` (h5ad with obsm['spatial'], uns['spatial'], obsm['MT'])."""
    out = tmp_path_factory.mktemp("ln_section")
    invoke("read-visium", "--sample", "ln", "--spaceranger-dir", lymph_node / "visium", "--outdir", out)
    return out / "ln.h5ad"


@pytest.fixture(scope="session")
def ln_halves_raw(ln_section, tmp_path_factory) -> dict[str, Path]:
    """The lymph node section split in two by array_col, as plain AnnData h5ad files (raw counts, obsm['spatial'])."""
    import anndata as ad
    import numpy as np

    out = tmp_path_factory.mktemp("ln_halves_raw")
    adata = ad.read_h5ad(ln_section)
    middle = np.median(adata.obs["array_col"])
    paths = {}
    for name, mask in (("ln_left", adata.obs["array_col"] < middle), ("ln_right", adata.obs["array_col"] >= middle)):
        half = adata[mask.to_numpy()].copy()
        plain = ad.AnnData(
            X=half.X.copy(),
            obs=half.obs[["in_tissue", "array_row", "array_col"]].copy(),
            var=half.var[["SYMBOL"]].copy(),
            obsm={"spatial": np.asarray(half.obsm["spatial"])},
            uns={"spatial": half.uns["spatial"]},
        )
        paths[name] = out / f"{name}_raw.h5ad"
        plain.write_h5ad(paths[name])
    return paths


@pytest.fixture(scope="session")
def ln_halves(ln_halves_raw, tmp_path_factory) -> dict[str, Path]:
    """The two halves read by `c2l read-visium --h5ad`."""
    out = tmp_path_factory.mktemp("ln_halves")
    for name, path in ln_halves_raw.items():
        invoke("read-visium", "--sample", name, "--h5ad", path, "--outdir", out)
    return {name: out / f"{name}.h5ad" for name in ln_halves_raw}


# ---------------------------------------------------------------- training fixtures (lazy, once per session)


@pytest.fixture(scope="session")
def filtered_reference(lymph_node, tmp_path_factory) -> Path:
    """`c2l filter-reference` on the lymph node reference; returns its outdir."""
    out = tmp_path_factory.mktemp("filter_reference")
    invoke("filter-reference", "--reference", lymph_node / "reference.h5ad", "--labels-key", "cell_type",
           "--batch-key", "sample", "--outdir", out)
    return out


@pytest.fixture(scope="session")
def reference_run(filtered_reference, tmp_path_factory) -> Path:
    """`c2l train-reference` (tiny, --seed 0) on the filtered lymph node reference; returns its outdir."""
    out = tmp_path_factory.mktemp("train_reference")
    invoke("train-reference", "--reference", filtered_reference / "reference_filtered.h5ad", "--labels-key",
           "cell_type", "--batch-key", "sample", *TINY_REFERENCE, "--seed", "0", "--outdir", out)
    return out


@pytest.fixture(scope="session")
def signatures_csv(reference_run) -> Path:
    """The signatures CSV (genes x 11 lymph node cell types) of the tiny reference model."""
    return reference_run / "signatures.csv"


@pytest.fixture(scope="session")
def joint_mapping(ln_halves, signatures_csv, tmp_path_factory) -> Path:
    """`c2l map-cells` (tiny) on both lymph node halves in one joint model, the right half with its own
    detection_alpha (200); returns its outdir."""
    out = tmp_path_factory.mktemp("map_cells")
    invoke("map-cells", "--section", f"ln_left={ln_halves['ln_left']}", "--section", f"ln_right={ln_halves['ln_right']}",
           "--signatures", signatures_csv, "--detection-alpha", "20", "--detection-alpha", "ln_right=200",
           "--prefix", "joint", *TINY_MAPPING, "--seed", "0", "--outdir", out)
    return out
