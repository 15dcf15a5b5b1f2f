"""Bonn benchmark wiring: every method's input step exists, and the per-site feature steps are
amplitude-free (a site's gain changes nothing) and robust z-scored per site."""

from __future__ import annotations

import numpy as np

import pytest

from medad.bench.signals import BONN_TEST_SELECTED, bonn_methods, bonn_preparers, select_groups_on_recording
from medad.errors import InputError
from medad.io.records import Annotation, SignalRecord


def test_bonn_per_site_feature_steps_are_amplitude_free_and_per_site():
    from medad.datasets.signals import BONN_SFREQ

    methods, preps = bonn_methods(quick=True, epochs=1), bonn_preparers(BONN_SFREQ, ["zcr", "octaves"])
    assert {inp for _, _, inp in methods.values()} <= set(preps)
    assert set(BONN_TEST_SELECTED) <= set(methods)
    rng = np.random.default_rng(0)
    t = np.arange(1024) / BONN_SFREQ
    w = (rng.standard_normal((12, 1, 1024)) + np.sin(2 * np.pi * 6 * t)).astype(np.float32)
    site = np.array(["a"] * 6 + ["b"] * 6)
    for key in ("site_features_free", "site_features_selected", "site_features_external"):
        f = preps[key](w, {"site": site})
        assert f.shape[0] == 12 and np.isfinite(f).all()
        np.testing.assert_allclose(np.median(f[:6], axis=0), 0.0, atol=1e-5)  # z-scored within each site
        scaled = w.copy()
        scaled[6:] *= 40.0  # site b louder: features relative to the site do not move
        np.testing.assert_allclose(preps[key](scaled, {"site": site}), f, atol=2e-3)
    # 19 columns of the groups without the moments, 6 octave bands, sample entropy
    assert preps["site_features_selected"](w, {"site": site}).shape[1] == 19 + 6 + 1
    assert preps["site_features_external"](w, {"site": site}).shape[1] == 1 + 6
    assert "site_features_external" not in bonn_preparers(BONN_SFREQ)  # no groups chosen: no step


def _seizure_recording(n_ch: int = 2, sfreq: float = 100.0, seconds: float = 240.0) -> SignalRecord:
    """Noise, then (second half) a 4 Hz rhythm of the same power: amplitude cannot tell them apart."""
    rng = np.random.default_rng(1)
    t = np.arange(int(sfreq * seconds)) / sfreq
    x = rng.standard_normal((n_ch, t.size))
    half = t.size // 2
    x[:, half:] = 0.3 * x[:, half:] + np.sqrt(2 * (1 - 0.09)) * np.sin(2 * np.pi * 4 * t[half:] + rng.uniform(0, 6))
    return SignalRecord(x.astype(np.float32), sfreq, [f"c{i}" for i in range(n_ch)],
                        [Annotation(seconds / 2, seconds / 2, "seizure")], record_id="synthetic")


def test_groups_are_chosen_on_another_recording_by_backward_elimination():
    sel = select_groups_on_recording(_seizure_recording(), ["moments", "rel_bands", "zcr"])
    assert sel["auroc"] > 0.95 and set(sel["groups"]) <= {"moments", "rel_bands", "zcr"}
    assert sel["alone"]["rel_bands"] > 0.95
    assert sel["trace"][0]["groups"] == ["moments", "rel_bands", "zcr"]
    assert all(d["auroc"] >= sel["trace"][0]["auroc"] for d in sel["trace"][1:])
    rec = _seizure_recording()
    rec.data[:, rec.data.shape[1] // 2:] = np.random.default_rng(2).standard_normal(
        (rec.data.shape[0], rec.data.shape[1] - rec.data.shape[1] // 2))  # no change at the "seizure": chance
    assert select_groups_on_recording(rec, ["rel_bands", "zcr"])["auroc"] < 0.8
    rec.annotations = []
    with pytest.raises(InputError, match="no seizure annotation"):
        select_groups_on_recording(rec, ["zcr"])
    with pytest.raises(InputError, match="too short"):
        select_groups_on_recording(_seizure_recording(seconds=20.0), ["zcr"])
