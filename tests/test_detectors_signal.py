"""Signal detectors (medad.detectors.signal_models) on small synthetic signals: one-class models
trained on normal rhythms score inserted spikes higher, supervised models learn them, scores do
not depend on amplitude, and bad input gives medad errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad import registry
from medad.errors import ConfigError, InputError
from medad.evaluation import auroc



T = 256


def _normal(n: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Rhythms: two sines with jittered frequency and phase, plus a little noise."""
    t = np.arange(T) / 64.0
    f1 = rng.uniform(3.5, 4.5, (n, channels, 1))
    f2 = rng.uniform(9.0, 11.0, (n, channels, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, channels, 2))
    x = np.sin(2 * np.pi * f1 * t + ph[..., :1]) + 0.5 * np.sin(2 * np.pi * f2 * t + ph[..., 1:])
    return (x + 0.1 * rng.normal(size=x.shape)).astype(np.float32)


def _with_spikes(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Insert 3 sharp spikes (epileptiform-like) into every window."""
    x = x.copy()
    shape = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2) * 5.0
    for i in range(len(x)):
        for pos in rng.choice(np.arange(10, T - 10), 3, replace=False):
            x[i, :, pos - 6 : pos + 7] += shape
    return x


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = _normal(96, rng)
    test_n = _normal(24, rng)
    test_a = _with_spikes(_normal(24, rng), rng)
    return train, test_n, test_a, rng


def _quiet(det):
    det.train_options = {"progress": False}
    return det


@pytest.mark.parametrize("name,params", [
    ("seq_ae", dict(frame_len=16, hidden_size=32, latent_size=4, epochs=10, lr=3e-3)),
    ("seq_predictor", dict(frame_len=16, hidden_size=32, epochs=20, lr=3e-3)),
])
def test_one_class_scores_spikes_higher(data, name, params, tmp_path):
    train, test_n, test_a, _ = data
    det = _quiet(registry.create(name, batch_size=16, **params)).fit(train)
    x = np.concatenate([test_n, test_a])
    y = np.r_[np.zeros(len(test_n)), np.ones(len(test_a))]
    res = det.score(x)
    assert auroc(y, res.score) > 0.9
    # the map is on the input's time grid and peaks near the spikes of an abnormal window
    assert res.map.shape == (len(x), T)
    assert res.map[len(test_n):].mean() > res.map[: len(test_n)].mean()
    # amplitude does not move the scores
    assert np.allclose(det.score(3.0 * x).score, res.score, rtol=1e-3, atol=1e-5)
    det.calibrate(test_n, fpr=0.1)
    pred = det.predict(x)
    assert pred.label[len(test_n):].mean() > 0.8
    assert pred.mask.shape == (len(x), T)
    det2 = registry.get(name).load(det.save(tmp_path / name))
    assert np.array_equal(det2.score(x).score, res.score)


@pytest.mark.parametrize("name,params", [
    ("cnn1d", dict(channels=(8, 16), dilations=(1, 2), epochs=8)),
    ("cnn2d", dict(channels=(8, 16), dilations=(1,), n_fft=32, epochs=8)),
    ("gru", dict(frame_len=16, hidden_size=16, epochs=15, lr=3e-3)),
    # the memory network steps through every item in turn: fewer, longer frames keep it quick
    ("nmn", dict(frame_len=64, hidden_size=16, memory_size=8, slots=4, epochs=8, lr=1e-2, plastic=True)),
])
def test_supervised_learns_spikes(data, name, params):
    train, test_n, test_a, rng = data
    # imbalanced: 3 normal for every abnormal training window
    n_ab = 16 if name == "nmn" else 32
    ab = _with_spikes(_normal(n_ab, rng), rng)
    x = np.concatenate([train[: 3 * n_ab], ab])
    y = np.r_[np.zeros(3 * n_ab, int), np.ones(n_ab, int)]
    det = _quiet(registry.create(name, batch_size=16, **params)).fit(x, y=y)
    assert det.class_weights_[1] > det.class_weights_[0]
    xt = np.concatenate([test_n, test_a])
    yt = np.r_[np.zeros(len(test_n)), np.ones(len(test_a))]
    s = det.score(xt).score
    assert ((s >= 0) & (s <= 1)).all()
    assert auroc(yt, s) > 0.9
    assert np.allclose(det.score(0.5 * xt).score, s, atol=1e-4)


def test_lstm_multiclass_and_bidirectional(data):
    train, test_n, test_a, rng = data
    x = np.concatenate([train[:32], _with_spikes(train[32:64], rng), np.flip(train[64:96], -1)])
    y = np.repeat([0, 1, 2], 32)
    det = _quiet(registry.create("lstm", frame_len=32, hidden_size=8, bidirectional=True, num_layers=2,
                                 epochs=1, batch_size=32)).fit(x, y=y)
    assert det.n_classes_ == 3
    s = det.score(test_a).score  # 1 - p(normal)
    assert s.shape == (len(test_a),) and ((s >= 0) & (s <= 1)).all()


def test_nmn_memory_is_saved_and_scoring_is_deterministic(data, tmp_path):
    train, test_n, test_a, _ = data
    y = np.r_[np.zeros(48, int), np.ones(48, int)]
    det = _quiet(registry.create("nmn", frame_len=64, hidden_size=8, memory_size=4, slots=3, epochs=2,
                                 batch_size=32)).fit(train, y=y)
    core = det.net_[1]
    assert not torch.equal(core.memory, core.memory_init), "training must write the memory"
    x = np.concatenate([test_n, test_a])
    s = det.score(x).score
    # the memory is read, not written, while scoring: order does not matter (up to float
    # rounding, which depends on the batch composition on a GPU)
    np.testing.assert_allclose(det.score(x[::-1]).score[::-1], s, rtol=1e-5, atol=1e-6)
    det2 = registry.get("nmn").load(det.save(tmp_path / "nmn"))
    assert torch.equal(det2.net_[1].memory, core.memory)
    assert np.array_equal(det2.score(x).score, s)


def test_bad_input(data):
    train = data[0]
    det = registry.create("cnn1d", channels=(4,), epochs=1)
    with pytest.raises(InputError):
        det.fit(train)  # supervised without labels
    with pytest.raises(InputError):
        det.fit(train, y=np.linspace(0, 1, len(train)))  # not classes
    with pytest.raises(InputError):
        det.fit(train, y=np.zeros(len(train), int))  # one class only
    det = _quiet(registry.create("seq_ae", frame_len=32, hidden_size=4, latent_size=2, epochs=1)).fit(train[:16])
    with pytest.raises(InputError):
        det.score(train[:4, 0])  # (N, T) instead of (N, C, T)
    with pytest.raises(InputError):
        det.score(np.concatenate([train[:4], train[:4]], axis=1))  # 2 channels, fitted on 1
    bad = train[:4].copy()
    bad[0, 0, 3] = np.nan
    with pytest.raises(InputError):
        det.score(bad)


@pytest.mark.parametrize("name,scoring", [("seq_predictor", "latent"), ("seq_ae", "combined")])
def test_one_class_code_scores(data, name, scoring, tmp_path):
    """The kNN-on-codes scores: the bank is kept with the model, scores reload identically, and
    windows of another length can still be compared with the bank."""
    train, test_n, test_a, _ = data
    det = _quiet(registry.create(name, frame_len=16, hidden_size=16, epochs=3, batch_size=32,
                                 scoring=scoring, k=3, max_bank=50)).fit(train)
    assert det.bank_.shape[0] == 50
    x = np.concatenate([test_n, test_a])
    s = det.score(x).score
    assert np.isfinite(s).all() and s.std() > 0
    det2 = registry.get(name).load(det.save(tmp_path / "m"))
    assert np.array_equal(det2.score(x).score, s)
    half = det.score(np.ascontiguousarray(x[..., : T // 2]))
    assert half.score.shape == (len(x),) and half.map.shape == (len(x), T // 2)
    det.scoring = "nonsense"
    with pytest.raises(ConfigError):
        det.fit(train)


def test_benchmark_window_helpers():
    from medad.bench.signals import aggregate, record_normalise, windows_of

    recs = [np.arange(10, dtype=np.float32)[None], np.arange(4, dtype=np.float32)[None]]
    w, owner = windows_of(recs, 4, 2)
    assert w.shape == (5, 1, 4) and owner.tolist() == [0, 0, 0, 0, 1]
    assert np.array_equal(w[1, 0], [2, 3, 4, 5])
    w, owner = windows_of([np.ones((1, 3), np.float32)], 4, 4)  # shorter than a window: padded
    assert w.shape == (1, 1, 4) and w[0, 0, -1] == 0
    assert np.allclose(aggregate(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 1])), [2.0, 5.0])
    # per-record normalisation removes a record's gain but keeps beat-to-beat ratios
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 20)).astype(np.float32)
    x[3:] *= 7.0
    x[1] *= 2.0
    rec = np.array(["a"] * 3 + ["b"] * 3)
    z = record_normalise(x, rec)
    assert np.allclose(z[3:], record_normalise(x[3:] / 7.0, rec[3:]), atol=1e-5)
    assert z[1].std() > 1.5 * z[0].std()


def test_benchmark_template_features_and_score_fusion():
    """The MIT-BIH patient-adaptive features and the calibrated score fusion of the benchmark
    (:class:`medad.detectors.fusion.ScoreFusion`, shared with the screening pipeline's beat mode)."""
    from medad.bench.signals import (
        FULL_BLOCKS, TEMPLATE_BLOCKS, Split, template_features, template_full_features,
    )
    from medad.detectors.fusion import ScoreFusion
    from medad.detectors.features import FeatureDetector

    rng = np.random.default_rng(0)
    tt = np.linspace(-1, 1, 252)

    def beats(n, width, gain, rec):
        b = gain * np.exp(-(tt / width) ** 2)[None] + 0.02 * rng.normal(size=(n, 252))
        return np.stack([b, 0.1 * rng.normal(size=(n, 252))], axis=1).astype(np.float32), np.array([rec] * n)

    # two records with different normal beats; each has a few wide (ectopic-like) beats
    xa, ra = beats(60, 0.05, 1.0, "a")
    xb, rb = beats(60, 0.08, 2.0, "b")
    xa[:5, 0] = np.exp(-(tt / 0.3) ** 2)
    xb[:5, 0] = 2 * np.exp(-(tt / 0.3) ** 2)
    x, rec = np.r_[xa, xb], np.r_[ra, rb]
    rr = np.tile([0.8, 0.8, 1.0], (120, 1)).astype(np.float32)
    rr[[0, 60], 0] = 0.5  # premature
    f = template_features(x, rec, rr)
    assert f.shape == (120, sum(TEMPLATE_BLOCKS))
    resid = np.abs(f[:, :TEMPLATE_BLOCKS[0]]).mean(1)
    odd = np.zeros(120, bool)
    odd[list(range(5)) + list(range(60, 65))] = True
    assert resid[odd].min() > resid[~odd].max()  # each record's odd beats stand out of its own template
    assert f[0, 63] == pytest.approx(0.5 / 0.8) and f[0, 66] == pytest.approx(0.8 / 0.5)
    full = template_full_features(x, rec, rr)
    assert full.shape == (120, sum(FULL_BLOCKS)) and FULL_BLOCKS == [252, 4]
    np.testing.assert_allclose(full[:, :252:4], f[:, :63])  # the same residual, every sample
    np.testing.assert_allclose(full[:, 252:], f[:, 63:])  # the same RR features

    # fusion: two members on two column blocks, standardised on healthy calibration items only
    tr = rng.normal(size=(300, 6))
    fus = ScoreFusion([FeatureDetector(feature_fn="precomputed"),
                       FeatureDetector(feature_fn="precomputed", model="knn")], [4, 2]).fit(tr)
    cal = rng.normal(size=(100, 6))
    fus.set_reference(cal)
    test = rng.normal(size=(40, 6))
    test[20:, 4:] += 4.0
    s = fus.score(test).score
    assert auroc(np.r_[np.zeros(20), np.ones(20)], s) > 0.95
    z_cal = fus.score(cal).score
    assert abs(float(np.median(z_cal))) < 0.5
    sp = Split(test[:, None, :], np.r_[np.zeros(20), np.ones(20)])
    assert sp.inputs(lambda xx, aux: xx[:, 0])[1].shape == (6,)


def test_benchmark_goal_lines_and_amplitude_reference():
    from medad.bench.signals import Split, _amplitude_free, _goal_line, amplitude_reference

    res = {"features (x)": {"auroc": 0.99}, "seq_ae (error)": {"auroc": 0.95}, "lstm": {"failed": "boom"},
           "fusion: a + b": {"auroc": 0.97}}
    line = _goal_line("task", res, 0.98, 0.9)
    assert "best classical: features (x) AUROC 0.990 (reached)" in line
    assert "best deep: seq_ae (error) AUROC 0.950 (NOT reached)" in line
    assert "best fusion: fusion: a + b AUROC 0.970 (NOT reached)" in line
    assert _goal_line("task", {}, 0.98, 0.9).endswith("not measured.")
    assert _amplitude_free("features (no amplitude)") and not _amplitude_free("features")
    assert _amplitude_free("seq_ae (error)") and not _amplitude_free("seq_ae (per-site amplitude) (error)")
    # louder-than-its-site recordings score higher, whatever the site's overall gain
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 64)).astype(np.float32)
    x[4:] *= 3.0       # site b has 3x the gain ...
    x[[1, 6]] *= 4.0   # ... and one loud recording per site
    sp = Split(x, np.array([0, 1, 0, 0, 0, 0, 1, 0]), None, {"site": np.array(["a"] * 4 + ["b"] * 4)})
    assert amplitude_reference(sp) == 1.0
    assert amplitude_reference(sp, lambda w: w * 0.5) == 1.0
