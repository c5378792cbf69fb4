"""map-cells: gene matching, per-section parameters from the command line, and a tiny joint model over two
lymph node halves."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import LN_CELL_TYPES, assert_png, no_staging
from c2lnf.errors import C2LError
from c2lnf.map_cells import STATS, read_signatures, shared_genes


def section(genes, sample="s", n=4) -> ad.AnnData:
    adata = ad.AnnData(X=np.ones((n, len(genes)), dtype=np.float32), var=pd.DataFrame(index=list(genes)))
    adata.obs_names = [f"{sample}_{i}" for i in range(n)]
    return adata


def signatures(genes, types=("T", "B", "NK")) -> pd.DataFrame:
    return pd.DataFrame(np.ones((len(genes), len(types))), index=list(genes), columns=list(types))


# ---------------------------------------------------------------- gene matching (no training)


def test_shared_genes_follow_signature_order_and_intersect_all_sections():
    sig = signatures(["G5", "G1", "G4", "G2", "G3"])
    sections = {"a": section(["G1", "G2", "G3", "G4", "X"]), "b": section(["G3", "G4", "G1", "Y"])}
    assert list(shared_genes(sections, sig)) == ["G1", "G4", "G3"]
    assert list(shared_genes({"a": sections["a"]}, sig)) == ["G1", "G4", "G2", "G3"]


def test_no_shared_genes_symbols_vs_ensembl_hint():
    sig = signatures(["CD3E", "MS4A1", "VWF"])
    with pytest.raises(C2LError) as err:
        shared_genes({"s1": section(["ENSG00000198851", "ENSG00000156738", "ENSG00000110799"])}, sig)
    text = str(err.value)
    assert text.startswith("sample 's1', field 'genes': no gene in common with the reference signatures")
    assert "the section uses Ensembl ids and the other side gene symbols" in text
    with pytest.raises(C2LError, match="the reference uses Ensembl ids"):
        shared_genes({"s1": section(["CD3E", "MS4A1", "VWF"])}, signatures(["ENSG00000198851", "ENSG00000156738"]))


def test_no_shared_genes_transposed_signatures_hint():
    genes = ["CD3E", "MS4A1", "VWF"]
    transposed = signatures(genes).T
    with pytest.raises(C2LError, match="the signatures look transposed"):
        shared_genes({"s1": section(genes)}, transposed)


def test_no_shared_genes_in_second_section_names_it():
    sig = signatures(["G1", "G2"])
    with pytest.raises(C2LError, match="sample 'b', field 'genes'"):
        shared_genes({"a": section(["G1", "G2"]), "b": section(["Z1", "Z2"])}, sig)


def test_detection_alpha_value_or_per_section():
    from c2lnf.cli import _per_section

    assert _per_section("--detection-alpha", ("20",), ["a", "b"]) == {"a": 20.0, "b": 20.0}
    assert _per_section("--detection-alpha", ("20", "b=200"), ["a", "b"]) == {"a": 20.0, "b": 200.0}
    assert _per_section("--detection-alpha", ("a=5", "b=200"), ["a", "b"]) == {"a": 5.0, "b": 200.0}
    with pytest.raises(Exception, match="no value for section"):
        _per_section("--detection-alpha", ("a=5",), ["a", "b"])


def test_read_signatures_roundtrip(tmp_path):
    sig = signatures(["G1", "G2", "G3"])
    sig.index.name = "gene"
    sig.to_csv(tmp_path / "sig.csv")
    back = read_signatures(tmp_path / "sig.csv")
    assert list(back.index) == ["G1", "G2", "G3"] and list(back.columns) == ["T", "B", "NK"]


# ---------------------------------------------------------------- the joint model (tiny training, once)


def test_joint_mapping_outputs(joint_mapping, ln_halves):
    names = {p.name for p in joint_mapping.iterdir()}
    expected = {"joint_history.csv", "joint_history.png", "joint_qc.png", "joint_model", "joint_training.json"}
    for sample in ln_halves:
        expected.add(f"{sample}.cell2location.h5ad")
        expected |= {f"{sample}.{stat}_cell_abundance_w_sf.csv" for stat in STATS}
    assert names == expected  # one model for both sections, per-section outputs for each
    no_staging(joint_mapping)
    assert (joint_mapping / "joint_model" / "model.pt").is_file()
    history = pd.read_csv(joint_mapping / "joint_history.csv")
    assert len(history) == 20 and np.isfinite(history["elbo_train"]).all()
    assert_png(joint_mapping / "joint_history.png")
    assert_png(joint_mapping / "joint_qc.png")
    summary = json.loads((joint_mapping / "joint_training.json").read_text())
    assert summary["epochs"] == 20 and summary["device"] == "cpu"
    rec = summary["reconstruction"]
    n_spots = sum(ad.read_h5ad(p, backed="r").n_obs for p in ln_halves.values())
    assert rec["n_obs_used"] == min(1000, n_spots) and 0 < rec["pearson_r"] <= 1


@pytest.mark.parametrize("sample", ["ln_left", "ln_right"])
def test_abundance_tables(joint_mapping, ln_halves, sample):
    barcodes = ad.read_h5ad(ln_halves[sample], backed="r").obs_names
    tables = {}
    for stat in STATS:
        table = pd.read_csv(joint_mapping / f"{sample}.{stat}_cell_abundance_w_sf.csv", index_col=0)
        assert table.index.name == "barcode"
        assert list(table.index) == list(barcodes)
        assert list(table.columns) == LN_CELL_TYPES
        assert np.isfinite(table.to_numpy()).all() and (table.to_numpy() >= 0).all()
        tables[stat] = table.to_numpy()
    assert (tables["q05"] <= tables["q95"]).all()
    inside = (tables["q05"] <= tables["means"]) & (tables["means"] <= tables["q95"])
    assert inside.mean() > 0.9
    assert (tables["stds"] > 0).mean() > 0.9


@pytest.mark.parametrize("sample,alpha", [("ln_left", 20.0), ("ln_right", 200.0)])
def test_section_result(joint_mapping, ln_halves, signatures_csv, sample, alpha):
    source = ad.read_h5ad(ln_halves[sample])
    result = ad.read_h5ad(joint_mapping / f"{sample}.cell2location.h5ad")
    assert result.shape == source.shape  # all genes of the section, not only the shared ones
    assert list(result.obs_names) == list(source.obs_names)
    assert {f"{stat}_cell_abundance_w_sf" for stat in STATS} <= set(result.obsm)
    q05 = result.obsm["q05_cell_abundance_w_sf"]
    assert list(q05.columns) == [f"q05cell_abundance_w_sf_{t}" for t in LN_CELL_TYPES]
    csv = pd.read_csv(joint_mapping / f"{sample}.q05_cell_abundance_w_sf.csv", index_col=0)
    np.testing.assert_allclose(q05.to_numpy(), csv.to_numpy(), rtol=1e-5)
    np.testing.assert_array_equal(result.obsm["spatial"], source.obsm["spatial"])
    info = result.uns["cell2location"]
    assert list(info["factor_names"]) == LN_CELL_TYPES
    assert info["model_run"] == "joint"
    assert info["detection_alpha"] == alpha  # --detection-alpha ln_right=200
    assert info["n_cells_per_location"] == 30.0
    signatures_genes = pd.read_csv(signatures_csv, index_col=0).index
    # 558 genes are shared with the whole reference (README); fewer pass the reference's gene filter
    assert info["n_shared_genes"] == len(signatures_genes.intersection(source.var_names)) < 558
    assert info["max_epochs"] == 20 and info["epochs"] == 20 and info["export"].startswith("analytic")


def test_joint_model_got_per_section_detection_alpha(joint_mapping):
    """Different detection_alpha per section reach Cell2location as a dict {sample: alpha}.

    Cell2location turns the dict into one value per batch (sample categories in the order given), which is what
    the saved model records.
    """
    import torch

    saved = torch.load(joint_mapping / "joint_model" / "model.pt", map_location="cpu", weights_only=False)
    params = saved["attr_dict"]["init_params_"]["kwargs"]["model_kwargs"]
    np.testing.assert_array_equal(np.asarray(params["detection_alpha"]).ravel(), [20.0, 200.0])
    assert params["N_cells_per_location"] == 30.0
