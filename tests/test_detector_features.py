"""The classical signal feature detector."""

from __future__ import annotations

import numpy as np
import pytest

from medad import registry
from medad.detectors.base import Detector
from medad.detectors.features import FeatureDetector, default_bands, register_feature_fn, signal_features
from medad.errors import ConfigError, InputError
from medad.evaluation import auroc

FS = 128.0


def _eeg_like(n, c=2, t=512, seed=0, spikes=False, amp=1.0):
    """Brown-ish noise + a 10 Hz rhythm; ``spikes`` adds sharp 3-sample transients (abnormal)."""
    rng = np.random.default_rng(seed)
    tt = np.arange(t) / FS
    x = np.cumsum(rng.normal(0, 1, (n, c, t)), axis=-1)
    x -= x.mean(-1, keepdims=True)
    x = x / x.std(-1, keepdims=True) + np.sin(2 * np.pi * 10 * tt + rng.uniform(0, 6, (n, c, 1)))
    if spikes:
        for i in range(n):
            for s in rng.choice(t - 5, 6, replace=False):
                x[i, :, s:s + 3] += np.array([4.0, -6.0, 3.0])
    return (amp * x).astype(np.float32)


def test_feature_shapes_and_amplitude_invariance():
    x = _eeg_like(5, c=3)
    f = signal_features(x, FS, amplitude=False)
    nb = len(default_bands(FS))
    assert f.shape == (5, 3 * (9 + nb))
    # without the log-variance feature, a 1000x gain change leaves every feature unchanged
    np.testing.assert_allclose(signal_features(x * 1e3, FS, amplitude=False), f, rtol=1e-3, atol=1e-3)
    fa = signal_features(x, FS, amplitude=True)
    assert fa.shape == (5, 3 * (10 + nb))
    g = signal_features(x * 1e3, FS, amplitude=True).reshape(5, 3, -1)
    np.testing.assert_allclose(g[..., -1] - fa.reshape(5, 3, -1)[..., -1], np.log(1e6), rtol=1e-4)
    fm = signal_features(x, FS, amplitude=False, n_mfcc=4)
    assert fm.shape == (5, 3 * (9 + nb + 4))
    with pytest.raises(InputError):
        signal_features(x[0], FS)
    # groups: absolute band powers = relative share + log variance (an amplitude-dependent group)
    ab = signal_features(x, FS, groups=["abs_bands"]).reshape(5, 3, nb)
    rel = signal_features(x, FS, groups=["rel_bands", "log_var"]).reshape(5, 3, nb + 1)
    np.testing.assert_allclose(ab, rel[..., :nb] + rel[..., nb:], atol=5e-3)  # up to the log floor
    assert signal_features(x, FS, groups=["hjorth", "abs_bands"], amplitude=False).shape == (5, 3 * 2)
    with pytest.raises(ConfigError):
        signal_features(x, FS, groups=["abs_bands"], amplitude=False)
    with pytest.raises(ConfigError):
        signal_features(x, FS, groups=["wavelets"])


def test_band_powers_find_the_rhythm():
    t = np.arange(512) / FS
    alpha = np.sin(2 * np.pi * 10 * t)[None, None].astype(np.float32)
    delta = np.sin(2 * np.pi * 2 * t)[None, None].astype(np.float32)
    fa = signal_features(alpha, FS, amplitude=False)[0]
    fd = signal_features(delta, FS, amplitude=False)[0]
    bands = default_bands(FS)
    i_alpha = 9 + [b[0] for b in bands].index(8.0)
    i_delta = 9 + [b[0] for b in bands].index(0.5)
    assert fa[i_alpha] > -0.1 and fd[i_delta] > -0.1  # log share of power close to 0 (all of it)
    assert fa[i_delta] < -5 and fd[i_alpha] < -5
    assert default_bands(8000.0)[-1][1] == pytest.approx(3600.0)


@pytest.mark.parametrize("model", ["mahalanobis", "knn"])
def test_spikes_score_higher_and_roundtrip(model, tmp_path):
    det = registry.create("features", sfreq=FS, model=model, amplitude=False, k=3)
    assert isinstance(det, FeatureDetector) and det.input_kind == "signal"
    det.fit(_eeg_like(200, seed=1))
    normal, abnormal = _eeg_like(40, seed=2), _eeg_like(40, seed=3, spikes=True)
    s = det.score(np.concatenate([normal, abnormal])).score
    assert auroc(np.r_[np.zeros(40), np.ones(40)], s) > 0.95
    # gain invariance of the scores (amplitude=False): another device's scale changes nothing
    np.testing.assert_allclose(det.score(abnormal * 50).score, s[40:], rtol=1e-3, atol=1e-3)
    det.calibrate(_eeg_like(60, seed=4), fpr=0.05)
    pred = det.predict(abnormal)
    assert pred.label.mean() > 0.8
    det.save(tmp_path / "m")
    assert not any(p.suffix in (".pkl", ".pickle") for p in (tmp_path / "m").iterdir())
    back = Detector.load(tmp_path / "m")
    np.testing.assert_allclose(back.score(abnormal).score, s[40:], rtol=1e-5)
    with pytest.raises(InputError, match="features but the detector was fitted"):
        det.score(_eeg_like(3, c=3))


def test_precomputed_features_and_custom_fn(tmp_path):
    rng = np.random.default_rng(0)
    det = FeatureDetector(feature_fn="precomputed").fit(rng.normal(0, 1, (300, 6)))
    s = det.score(np.r_[rng.normal(0, 1, (20, 6)), rng.normal(0, 1, (20, 6)) + 3]).score
    assert s[20:].min() > np.median(s[:20])
    with pytest.raises(InputError, match="precomputed"):
        det.score(rng.normal(0, 1, (3, 1, 6)))
    register_feature_fn("energy", lambda x, sfreq, **kw: (x ** 2).mean(-1))
    d2 = FeatureDetector(feature_fn="energy", model="knn").fit(rng.normal(0, 1, (50, 2, 64)))
    assert d2.features(np.ones((2, 2, 64))).shape == (2, 2)
    with pytest.raises(ConfigError):
        FeatureDetector(feature_fn="nope").fit(rng.normal(0, 1, (5, 1, 64)))
    with pytest.raises(ConfigError):
        FeatureDetector(model="forest").fit(rng.normal(0, 1, (5, 1, 64)))


def test_regularity_groups_are_gain_free_and_find_rhythm():
    from medad.detectors.features import permutation_entropy

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1, 1, 2048)).astype(np.float32)
    t = np.arange(2048) / FS
    sine = np.sin(2 * np.pi * 5.0 * t)[None, None].astype(np.float32)
    # white noise: every ordinal pattern equally likely; a ramp: one pattern only
    assert permutation_entropy(noise, order=4, delay=1)[0, 0] > 0.98
    assert permutation_entropy(np.arange(100.0)[None], order=3)[0] == pytest.approx(0.0, abs=1e-9)
    assert permutation_entropy(sine, order=4, delay=1)[0, 0] < 0.5
    with pytest.raises(InputError):
        permutation_entropy(np.zeros((1, 3)), order=4)
    g = ["entropy", "autocorr", "teager"]
    fs, fn = signal_features(sine, FS, groups=g)[0], signal_features(noise, FS, groups=g)[0]
    assert fs.shape == (3 + 3 + 1,)
    assert fs[3] > 0.9 and fn[3] < 0.3                     # autocorrelation peak: rhythmic vs not
    assert fs[4] == pytest.approx(0.2, abs=1.5 / FS)       # at the 5 Hz period
    x = _eeg_like(4)
    np.testing.assert_allclose(signal_features(x * 300.0, FS, groups=g), signal_features(x, FS, groups=g),
                               rtol=1e-3, atol=1e-3)


def test_blocks_fuse_standardised_scores_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    # 40 shape-like columns and 2 rhythm-like columns; the abnormal items differ in the 2 only
    train = rng.normal(size=(400, 42))
    test_n, test_a = rng.normal(size=(50, 42)), rng.normal(size=(50, 42))
    test_a[:, 40:] += 3.0
    x, y = np.r_[test_n, test_a], np.r_[np.zeros(50), np.ones(50)]
    for model in ("knn", "mahalanobis"):
        one = FeatureDetector(feature_fn="precomputed", model=model).fit(train)
        fused = FeatureDetector(feature_fn="precomputed", model=model, blocks=[40, 2]).fit(train)
        a1, a2 = auroc(y, one.score(x).score), auroc(y, fused.score(x).score)
        assert a2 > 0.95 and a2 > a1 + 0.05, (model, a1, a2)
        back = Detector.load(fused.save(tmp_path / model))
        assert back.get_params()["blocks"] == [40, 2]
        np.testing.assert_allclose(back.score(x).score, fused.score(x).score, rtol=1e-6)
    with pytest.raises(InputError, match="blocks"):
        FeatureDetector(feature_fn="precomputed", blocks=[40, 3]).fit(train)
    with pytest.raises(ConfigError):
        FeatureDetector(feature_fn="precomputed", blocks=[["hjorth"]]).fit(train)
    with pytest.raises(ConfigError):
        FeatureDetector(blocks=[3, ["hjorth"]]).fit(_eeg_like(10))
    # blocks of feature groups on windows: each block computes its own groups
    det = FeatureDetector(sfreq=FS, model="knn", k=3, blocks=[["log_var"], ["entropy", "autocorr"]])
    det.fit(_eeg_like(120, seed=1))
    assert [(s.start, s.stop) for s in det.slices_] == [(0, 2), (2, 14)]  # 2 channels each
    s = det.score(np.concatenate([_eeg_like(30, seed=2), _eeg_like(30, seed=3, spikes=True)])).score
    assert auroc(np.r_[np.zeros(30), np.ones(30)], s) > 0.9
    back = Detector.load(det.save(tmp_path / "groups"))
    np.testing.assert_allclose(back.score(_eeg_like(5, seed=4)).score, det.score(_eeg_like(5, seed=4)).score,
                               rtol=1e-6)
