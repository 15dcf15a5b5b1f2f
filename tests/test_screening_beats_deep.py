"""Score fusion (the deep beat mode's model and the MIT-BIH benchmark's fusion rows) and the
MIT-BIH benchmark's merging of partial reruns. The end-to-end deep beat-mode test on synthetic
ECG is in tests/test_pipeline_screening.py (it shares that file's ECG generator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medad import registry
from medad.detectors.fusion import ScoreFusion
from medad.errors import InputError, NotFittedError, ReadError


def _members():
    return [registry.create("features", feature_fn="precomputed", model="mahalanobis") for _ in range(2)]


def _data(n: int, seed: int) -> np.ndarray:
    """Healthy items: block 0 = 3 columns around 0, block 1 = 2 columns around 100 (another scale)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, (n, 3)), rng.normal(100, 20, (n, 2))], axis=1).astype(np.float32)


def test_fusion_standardises_members_on_healthy_items_and_round_trips(tmp_path):
    fusion = ScoreFusion(_members(), [3, 2]).fit(_data(400, 0))
    with pytest.raises(NotFittedError):
        fusion.score(_data(5, 1))
    cal = _data(300, 2)
    fusion.calibrate(cal, fpr=0.05)
    z = fusion.standardised(fusion.member_scores(cal))
    np.testing.assert_allclose(np.median(z, axis=1), 0.0, atol=1e-9)  # each member centred on healthy items
    assert np.mean(fusion.score(cal).score > fusion.threshold_) == pytest.approx(0.05, abs=0.01)
    odd = _data(4, 3)
    odd[:2, 0] += 8.0   # abnormal in block 0 only
    odd[2:, 3] += 200.0  # abnormal in block 1 only (10 of its own sd): both blocks count
    s = fusion.score(odd).score
    assert (s > fusion.threshold_).all()
    fusion.save(tmp_path / "f")
    back = ScoreFusion.load(tmp_path / "f")
    np.testing.assert_allclose(back.score(odd).score, s, rtol=1e-6)
    assert back.threshold_ == fusion.threshold_ and back.blocks == [3, 2]
    with pytest.raises(InputError, match=r"\(N, 5\)"):
        fusion.score(np.zeros((3, 4), np.float32))
    (tmp_path / "f" / "fusion.json").write_text("{\"members\": [\"features\"]}")
    with pytest.raises(ReadError, match="corrupt fusion.json"):
        ScoreFusion.load(tmp_path / "f")


def test_fusion_gives_signal_members_one_channel_and_refuses_image_members():
    seq = registry.create("seq_ae", frame_len=4, hidden_size=4, latent_size=2, epochs=1)
    f = ScoreFusion([seq, _members()[0]], [16, 2])
    a, b = f.member_inputs(np.zeros((3, 18), np.float32))
    assert a.shape == (3, 1, 16) and b.shape == (3, 2)
    with pytest.raises(InputError, match="image"):
        ScoreFusion([registry.create("ae", spatial_dims=2)], [16])
    with pytest.raises(InputError, match="blocks"):
        ScoreFusion(_members(), [3])


def test_mitbih_merge_keeps_earlier_results_not_rerun(tmp_path):
    from medad.bench.signals import MITBIH_TASK, SCREENING_CONFIG, _merge_mitbih, _previous_run

    task = MITBIH_TASK
    prev = {"environment": {"date": "2026-01-02"}, "protocol": {"quick": False}, "results": {task: {"a": {"auroc": 0.9}, "b": {"auroc": 0.8}}},
            "per_record": {"a": {"100": 1}}, "pipeline": {"auroc": 0.99}}
    f = tmp_path / "mitbih.json"
    f.write_text(json.dumps(prev))
    earlier = _previous_run(f, False, task, bench="mitbih")
    res, per, pipes, source = _merge_mitbih(earlier, {"b": {"auroc": 0.85}, "c": {"auroc": 0.7}}, {"c": {}},
                                            {"x.yaml": {"auroc": 0.5}})
    assert list(res) == ["a", "b", "c"] and res["b"]["auroc"] == 0.85 and res["a"]["auroc"] == 0.9
    assert set(per) == {"a", "c"} and "2026-01-02" in source
    assert pipes == {SCREENING_CONFIG.name: {"auroc": 0.99}, "x.yaml": {"auroc": 0.5}}
    assert _previous_run(tmp_path, False, task, bench="mitbih")[0] == prev  # the run's folder does as well
    with pytest.raises(InputError, match="quick"):
        _previous_run(f, True, task, bench="mitbih")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ReadError):
        _previous_run(tmp_path / "bad.json", False, task, bench="mitbih")


def test_fusion_keeps_its_training_input_statistics_for_site_normalisation(tmp_path):
    """The training input's column median / IQR scale (what per-site normalisation maps another
    site's items onto) is kept, saved and loaded; a fusion saved before it was kept loads without
    it (screening such a model with site_normalize is refused: tests/test_pipeline_screening.py)."""
    from medad.transforms.signal import robust_scale
    from pipelines.screening import site_normalise

    x = _data(400, 0)
    fusion = ScoreFusion(_members(), [3, 2]).fit(x).calibrate(_data(300, 2))
    c, s = robust_scale(x.astype(np.float64), axis=0)
    np.testing.assert_allclose(fusion.center_, c[0]) and np.testing.assert_allclose(fusion.scale_, s[0])
    # a site whose items are shifted and scaled column-wise lands back on the training scale
    site = _data(500, 5) * np.array([2, 1, 1, 3, 1], np.float32) + 50
    back = site_normalise([site[:200], site[200:]], ["a", "a"], fusion)
    np.testing.assert_allclose(np.median(np.concatenate(back), axis=0), fusion.center_, atol=1e-6)
    assert np.median(fusion.score(np.concatenate(back)).score) < fusion.threshold_ < np.median(fusion.score(site).score)
    fusion.save(tmp_path / "f")
    back = ScoreFusion.load(tmp_path / "f")
    np.testing.assert_allclose(back.center_, fusion.center_) and np.testing.assert_allclose(back.scale_, fusion.scale_)
    cfg = json.loads((tmp_path / "f" / "fusion.json").read_text())
    for k in ("input_center", "input_scale"):
        cfg.pop(k)
    (tmp_path / "f" / "fusion.json").write_text(json.dumps(cfg))
    assert ScoreFusion.load(tmp_path / "f").center_ is None
    cfg["input_center"], cfg["input_scale"] = [0.0] * 4, [1.0] * 4
    (tmp_path / "f" / "fusion.json").write_text(json.dumps(cfg))
    with pytest.raises(ReadError, match="input statistics"):
        ScoreFusion.load(tmp_path / "f")
