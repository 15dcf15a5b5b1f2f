"""Bonn benchmark wiring: every method's input step exists, and the per-site feature steps are
amplitude-free (a site's gain changes nothing) and robust z-scored per site."""

from __future__ import annotations

import numpy as np

from medad.bench.signals import BONN_TEST_SELECTED, bonn_methods, bonn_preparers


def test_bonn_per_site_feature_steps_are_amplitude_free_and_per_site():
    from medad.datasets.signals import BONN_SFREQ

    methods, preps = bonn_methods(quick=True, epochs=1), bonn_preparers(BONN_SFREQ)
    assert {inp for _, _, inp in methods.values()} <= set(preps)
    assert set(BONN_TEST_SELECTED) <= set(methods)
    rng = np.random.default_rng(0)
    t = np.arange(1024) / BONN_SFREQ
    w = (rng.standard_normal((12, 1, 1024)) + np.sin(2 * np.pi * 6 * t)).astype(np.float32)
    site = np.array(["a"] * 6 + ["b"] * 6)
    for key in ("site_features_free", "site_features_selected"):
        f = preps[key](w, {"site": site})
        assert f.shape[0] == 12 and np.isfinite(f).all()
        np.testing.assert_allclose(np.median(f[:6], axis=0), 0.0, atol=1e-5)  # z-scored within each site
        scaled = w.copy()
        scaled[6:] *= 40.0  # site b louder: features relative to the site do not move
        np.testing.assert_allclose(preps[key](scaled, {"site": site}), f, atol=2e-3)
    # 19 columns of the groups without the moments, 6 octave bands, sample entropy
    assert preps["site_features_selected"](w, {"site": site}).shape[1] == 19 + 6 + 1
