"""Amplitude-free rhythmicity features (medad.detectors.eeg_features) and their Bonn pipeline steps."""

from __future__ import annotations

import numpy as np
import pytest

from medad.detectors.eeg_features import (REGULARITY_COLUMNS, REGULARITY_SIGNS, RHYTHM_GROUPS, autocorr_peak,
                                          one_sided, regularity_features, rhythm_features, sub_windows)
from medad.errors import ConfigError, InputError

SFREQ = 173.61


def _noise_and_rhythm(n: int = 6, t: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White noise windows, and windows of a 5 Hz rhythm with a little noise."""
    rng = np.random.default_rng(seed)
    tt = np.arange(t) / SFREQ
    noise = rng.standard_normal((n, 1, t))
    rhythm = np.sin(2 * np.pi * 5 * tt + rng.uniform(0, 6, (n, 1, 1))) + 0.3 * rng.standard_normal((n, 1, t))
    return noise.astype(np.float32), rhythm.astype(np.float32)


def test_features_ignore_gain_and_offset_and_follow_window_length():
    noise, rhythm = _noise_and_rhythm()
    x = np.concatenate([noise, rhythm])
    for fn in (lambda v: rhythm_features(v, SFREQ), lambda v: regularity_features(v, SFREQ)):
        f = fn(x)
        assert np.isfinite(f).all()
        np.testing.assert_allclose(fn(x * 250.0 + 40.0), f, rtol=1e-4, atol=1e-4)
    assert rhythm_features(x, SFREQ).shape == (12, 8)
    assert regularity_features(x, SFREQ).shape == (12, len(REGULARITY_COLUMNS))
    assert rhythm_features(x[..., :512], SFREQ).shape == (12, 8)  # half-length windows still work
    two = np.concatenate([x, x[:, :, ::-1]], axis=1)  # two channels: channel-major columns
    np.testing.assert_allclose(rhythm_features(two, SFREQ)[:, :8], rhythm_features(x, SFREQ), atol=1e-6)


def test_a_rhythm_is_more_regular_than_noise_in_every_signed_direction():
    noise, rhythm = _noise_and_rhythm()
    fn, fr = regularity_features(noise, SFREQ), regularity_features(rhythm, SFREQ)
    signed = (fr.mean(0) - fn.mean(0)) * REGULARITY_SIGNS
    names = [n for n, _ in REGULARITY_COLUMNS]
    # every entropy, autocorrelation and spectral-peak column says "rhythm is more regular"
    for i, name in enumerate(names):
        if "variation" not in name:
            assert signed[i] > 0, name
    assert fr[:, names.index("autocorrelation peak 0.1-1 s")].min() > 0.6
    assert fn[:, names.index("autocorrelation peak 0.1-1 s")].max() < 0.2


def test_sub_window_max_finds_a_rhythmic_run_inside_a_window():
    noise, rhythm = _noise_and_rhythm(n=4)
    half = noise.copy()
    half[..., 512:] = rhythm[..., 512:] * noise[..., :512].std() / rhythm.std()  # rhythm in the 2nd half only
    whole = autocorr_peak(half[:, 0].astype(np.float64), SFREQ)
    best = rhythm_features(half, SFREQ, ["sub_max"])[:, 0]
    assert (best > whole + 0.2).all() and (best > 0.6).all()


def test_sub_windows_and_one_sided():
    x = np.arange(20.0)
    s = sub_windows(x, 8)
    assert s.shape == (4, 8) and s[1, 0] == 4
    assert sub_windows(x[:5], 8).shape == (1, 5)  # shorter than one sub-window: itself
    z = np.array([[1.0, 1.0, -2.0, -2.0], [-1.0, 3.0, 2.0, 0.5]], np.float32)
    np.testing.assert_array_equal(one_sided(z, np.array([1.0, -1.0])), [[1, 0, 0, 2], [0, 0, 2, 0]])
    with pytest.raises(InputError, match="whole number"):
        one_sided(z, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ConfigError, match="unknown"):
        rhythm_features(np.zeros((1, 1, 1024), np.float32), SFREQ, ["nope"])
    with pytest.raises(InputError, match="fewer than 3"):
        rhythm_features(np.zeros((1, 1, 12), np.float32), SFREQ, ["rhythm"])
    assert set(RHYTHM_GROUPS) == {"rhythm", "sub_max", "sub_stability"}


def test_bonn_rhythm_steps_are_per_site_and_amplitude_free():
    from medad.bench.signals import (BONN_REGULARITY, BONN_RHYTHM_CANDIDATES, BONN_RHYTHM_EXTERNAL, BONN_RHYTHM_WHITE,
                                     bonn_methods, bonn_preparers)

    assert set(RHYTHM_GROUPS) <= set(BONN_RHYTHM_CANDIDATES)
    noise, rhythm = _noise_and_rhythm()
    w = np.concatenate([noise, rhythm])
    site = np.array(["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3)
    preps = bonn_preparers(SFREQ, ["zcr"], ["rel_bands", "sub_max"])
    methods = bonn_methods(quick=True, epochs=1)
    for label in (BONN_REGULARITY, BONN_RHYTHM_EXTERNAL, BONN_RHYTHM_WHITE):
        step = preps[methods[label][2]]
        f = step(w, {"site": site})
        louder = w.copy()
        louder[site == "b"] *= 30.0  # one site's gain changes nothing
        np.testing.assert_allclose(step(louder, {"site": site}), f, atol=2e-3)
    one = preps[methods[BONN_REGULARITY][2]](w, {"site": site})
    assert (one >= 0).all() and one.shape == (12, len(REGULARITY_COLUMNS))
    # the rhythm windows are the more regular half of each site: they carry the one-sided deviations
    assert one[6:].sum() > 3 * one[:6].sum()
    with pytest.raises(ConfigError, match="rhythm_groups"):
        bonn_preparers(SFREQ, ["zcr"])[methods[BONN_RHYTHM_EXTERNAL][2]](w, {"site": site})


def test_group_whiten_aligns_sites_and_ignores_a_minority_of_outliers():
    from medad.detectors.eeg_features import group_whiten

    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 3)) @ np.array([[1.0, 0.9, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 1.0]])
    b = rng.standard_normal((400, 3)) * [5.0, 1.0, 0.2] + 3.0
    b[:80] += [0.0, 0.0, 4.0]  # a fifth of site b far out along its narrowest direction
    w = group_whiten(np.r_[a, b], np.r_[np.zeros(400), np.ones(400)])
    np.testing.assert_allclose(np.cov(w[:400].T), np.eye(3), atol=0.15)  # site a: decorrelated
    np.testing.assert_allclose(np.cov(w[480:].T), np.eye(3), atol=0.2)  # site b's normal items too
    assert np.abs(np.median(w[480:], axis=0)).max() < 0.15  # the outliers did not move the centre
    assert np.median(np.linalg.norm(w[400:480], axis=1)) > 10.0  # and stand out after whitening
    few = group_whiten(np.r_[a[:5], b[:5]], np.r_[np.zeros(5), np.ones(5)])  # too few: z-scored only
    np.testing.assert_allclose(np.median(few[:5], axis=0), 0.0, atol=1e-6)
