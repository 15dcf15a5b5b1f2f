"""The ECG part of ``medad bench explain`` (faithfulness of the beat explanations of the kNN beat
screening model) on synthetic ECG (tests/test_pipeline_screening.py): 3 normal recordings, one
with 5 ectopic beats listed as PVCs. Real MIT-BIH figures come from the benchmark itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_pipeline_screening import _ecg_folders

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ecg_part(tmp_path_factory):
    """The ECG part's figures for the kNN model on the synthetic recordings (4 ectopic beats)."""
    from medad.bench.explain import ecg_faithfulness

    tmp = tmp_path_factory.mktemp("bench_explain_ecg")
    normals, test, peaks, odd = _ecg_folders(tmp)
    rows = "".join(f"{i},{p}\n" for i, p in enumerate(peaks[odd]))
    (test / "ecto_pvc_beats.csv").write_text("index,PVC\n" + rows)
    out = tmp / "out"
    out.mkdir()
    res = ecg_faithfulness(normals, test, out, models=("knn",), n_items=4, n_random=2)
    return tmp, out, res["knn"], int(odd.sum())


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_ecg_part_figures_in_range(ecg_part):
    """Flagged ectopic beats are found and explained; KernelSHAP / LIME beat the random deletion
    orders on them (a shape change the kNN sees); RR attributions add up to z(beat) - z(regular
    rhythm); example PNGs are written."""
    _, out, m, n_odd = ecg_part
    assert m["n_test_pvc_matched"] == n_odd and m["n_pvc_flagged"] == n_odd
    assert set(m["shape"]) == {"kernel_shap", "lime", "kernel_shap (abs)", "lime (abs)"}
    for name, r in m["shape"].items():
        assert r["n_items"] == 4 and r["all_zero_maps"] == 0 and r["patch"] == m["block_samples"]
        assert r["curve_scale"].startswith("score relative")
        for it in r["per_item"]:
            assert it["record"] == "ecto" and 0 <= it["time_s"] <= 60
            assert all(np.isfinite(it[k]) for k in ("deletion_auc", "random_deletion_auc", "insertion_auc"))
        # the ectopic beats' shape differs from the template in a few places the maps must find
        assert r["items_better_than_random_deletion"] == 4 and r["clearly_better_than_random"]
        if "(abs)" not in name:  # the signal plots shade |map|: one picture per method
            assert all((out / f"explain_ecg_knn_{name}_{i}.png").stat().st_size > 5000 for i in range(3))
    rr = m["rr"]
    assert rr["n_beats"] == 4 and rr["efficiency_rel_error_max"] < 0.05 and rr["beats_within_5pct"] == 4
    assert rr["mean_gap_to_regular"] > 1 and len(rr["per_item"]["attributions"]) == 4
    # synthetic ectopic beats differ from the rhythm most in next RR / previous RR: removing the
    # top-attributed feature lowers the RR z-score more than a random one
    assert rr["beats_top_beats_random"] == 4 and sum(rr["top_feature_counts"]) == 4
    assert rr["deletion"]["n_items"] == 4 and np.isfinite(rr["deletion"]["deletion_margin"])
    assert (out / "explain_ecg_knn_rr.png").stat().st_size > 5000


@pytest.mark.filterwarnings("ignore")
def test_part_ecg_keeps_the_other_parts(ecg_part, monkeypatch):
    """``run(part="ecg")`` keeps the BraTS and Bonn results of an earlier explain.json (the
    committed one) and adds an ECG section to the JSON and Markdown."""
    import medad.bench.explain as be

    tmp, _, m, _ = ecg_part
    out = tmp / "merge"
    out.mkdir()
    shutil.copy(REPO / "benchmarks" / "explain.json", out / "explain.json")
    before = json.loads((out / "explain.json").read_text())
    monkeypatch.setattr(be, "bench_ecg", lambda root, o, quick, device: {
        "protocol": "synthetic", "models": {"knn": m}, "gradient_shap_impl": be.GRADIENT_SHAP_IMPL})
    res = be.run(data_root=tmp, out=out, threads=1, part="ecg")
    saved = json.loads((out / "explain.json").read_text())
    assert saved["brats"]["methods"]["lime"]["deletion_auc"] == before["brats"]["methods"]["lime"]["deletion_auc"]
    assert saved["bonn"]["from_run"] and saved["ecg"]["models"]["knn"]["rr"]["n_beats"] == 4
    assert "every method clearly better than random (ecg knn shape)" in res["goals_met"]
    md = (out / "explain.md").read_text()
    assert "## MIT-BIH ECG beats: synthetic" in md and "### knn" in md and "## Bonn EEG" in md
