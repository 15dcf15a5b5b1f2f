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


def test_paired_auroc_difference_and_the_bonn_amplitude_verdict():
    """A row that uses amplitude relative to the site counts only when clearly above the
    amplitude-only reference: paired-bootstrap interval above 0 and a difference >= the margin."""
    from medad.bench.signals import BONN_CLEAR_MARGIN, BONN_FUSION, _bonn_verdict, paired_auroc_difference

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(100)]
    ref = y + rng.normal(0, 0.8, 300)
    same = paired_auroc_difference(y, ref, ref, n_boot=100)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    better = paired_auroc_difference(y, ref + y, ref, n_boot=100)
    assert better["difference"] > 0.05 and better["ci95"][0] > 0
    assert paired_auroc_difference(y, rng.normal(size=300), ref, n_boot=100)["ci95"][1] < 0

    def row(a, d, lo, hi):
        return {"auroc": a, "vs_amplitude_reference": {"difference": d, "ci95": [lo, hi]}}

    free = "features (no amplitude, x)"
    cd = {free: {"auroc": 0.95}, BONN_FUSION: row(0.989, 0.004, 0.001, 0.007),
          "seq_predictor (per-site amplitude) (error)": {"auroc": 0.987}}  # kept from an earlier run: no interval
    lines = _bonn_verdict(cd, 0.986, free, 0.95)
    assert "0.989: +0.004 [+0.001, +0.007]" in lines[0] and "(error) 0.987" not in lines[0]
    assert lines[-1].startswith("- Verdict: NOT reached") and "best is 0.950" in lines[-1]
    cd[BONN_FUSION] = row(0.995, 2 * BONN_CLEAR_MARGIN, 0.003, 0.015)
    assert "reached with amplitude relative to the site and more: " + BONN_FUSION in _bonn_verdict(
        cd, 0.986, free, 0.95)[-1]
    cd[BONN_FUSION] = row(0.995, 2 * BONN_CLEAR_MARGIN, -0.001, 0.015)  # the interval holds 0
    assert _bonn_verdict(cd, 0.986, free, 0.95)[-1].startswith("- Verdict: NOT reached")
    assert _bonn_verdict(cd, 0.986, free, 0.985)[-1] == f"- Verdict: reached without amplitude ({free}, 0.985)."


def test_bonn_fusion_takes_one_input_per_member_of_any_window_length():
    """The Bonn fusion: per-site windows for the net, per-site features for kNN, one array each
    (the half-length robustness condition shortens the windows, not the feature block)."""
    from medad.bench.signals import BONN_FUSION, BONN_FUSION_FREE, BONN_WINDOW, bonn_fusions
    from medad.datasets.signals import BONN_SFREQ
    from medad.detectors.fusion import ScoreFusion
    from medad import registry

    groups = ["zcr", "octaves"]
    prep = bonn_preparers(BONN_SFREQ, groups)["site_fusion"]
    fusions = bonn_fusions(True, 1, BONN_SFREQ, groups)
    assert set(fusions) == {BONN_FUSION, BONN_FUSION_FREE}
    members, blocks, inputs = fusions[BONN_FUSION]
    assert inputs == "site_fusion" and blocks == [BONN_WINDOW, 1 + 6]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 1, BONN_WINDOW)).astype(np.float32)
    site = {"site": np.array(["a"] * 16)}
    inp = prep(w, site)
    assert inp[0].shape == (16, 1, BONN_WINDOW) and inp[1].shape == (16, blocks[1])
    fus = ScoreFusion([registry.create(n, **p) for n, p in members], blocks).fit(inp)
    assert fus.center_ is None  # no column statistics of a list input
    fus.calibrate(inp)
    half = prep(np.ascontiguousarray(w[..., :BONN_WINDOW // 2]), site)
    s = fus.score(half).score
    assert s.shape == (16,) and np.isfinite(s).all()
    with pytest.raises(InputError, match="one array per member"):
        fus.score(inp[:1])


def test_site_scored_net_is_read_per_site_and_ignores_gain():
    """SiteScored: a net's window score (or its code, then kNN) robust z-scored over the windows of
    its own site; with a window-normalised net a site's gain changes nothing. The amplitude-free
    fusion takes the site-packed windows for that member."""
    from medad import registry
    from medad.bench.signals import (BONN_FUSION_FREE, BONN_SITE_CODES, BONN_SITE_SCORE, SiteScored, _amplitude_free,
                                     bonn_fusions, pack_site, run_fusion, unpack_site, Split)
    from medad.datasets.signals import BONN_SFREQ

    assert all(_amplitude_free(m) for m in (BONN_SITE_SCORE + " (error)", BONN_SITE_CODES, BONN_FUSION_FREE))
    rng = np.random.default_rng(0)
    t = np.arange(256) / 100.0
    w = rng.standard_normal((24, 1, 256)).astype(np.float32)
    w[12:] = 5.0 * w[12:] + 3.0  # site b: another gain and offset
    w[-2:] += 8.0 * np.sin(2 * np.pi * 5 * t).astype(np.float32)  # two rhythmic windows in site b
    site = np.array(["a"] * 12 + ["b"] * 12)
    x = pack_site(w, site)
    back, code = unpack_site(x)
    assert np.array_equal(back, w) and np.array_equal(code, np.r_[np.zeros(12), np.ones(12)])
    louder = w.copy()
    louder[12:] *= 40.0
    for mode in ("score", "code"):
        net = registry.create("seq_predictor", frame_len=16, hidden_size=8, epochs=1, batch_size=8)
        sc = SiteScored(net, mode).fit(pack_site(w[:12], site[:12]))
        s = sc.score(x).score
        assert s.shape == (24,) and np.isfinite(s).all()
        if mode == "score":  # z-scored within each site
            np.testing.assert_allclose([np.median(s[:12]), np.median(s[12:])], 0.0, atol=1e-5)
        np.testing.assert_allclose(sc.score(pack_site(louder, site)).score, s, atol=1e-3)
    with pytest.raises(InputError, match="mode"):
        SiteScored(net, "amplitude")
    groups = ["zcr"]
    members, blocks, inputs = bonn_fusions(True, 1, BONN_SFREQ, groups)[BONN_FUSION_FREE]
    prep = bonn_preparers(BONN_SFREQ, groups)[inputs]
    (net_name, net_params, wrap), feat = members
    assert net_params.get("normalize", "window") == "window" and wrap.keywords == {"mode": "score"}
    members = [(net_name, {**net_params, "frame_len": 16, "hidden_size": 8, "epochs": 1}, wrap), feat]
    healthy = Split(w[:12], np.zeros(12), None, {"site": site[:12]})
    sp = Split(w, np.r_[np.zeros(12), np.ones(12)], None, {"site": site})
    res = run_fusion(members, blocks, prep, healthy, healthy, {"t": sp})
    assert np.isfinite(res["scores"]["t"]).all() and res["scores"]["t"].shape == (24,)


def test_previous_run_to_merge_into(tmp_path):
    import json

    from medad.bench.signals import _previous_run
    from medad.errors import ReadError

    p = tmp_path / "bonn.json"
    p.write_text(json.dumps({"environment": {"date": "D0"}, "protocol": {"quick": False, "reused": "CV from D-1"},
                             "results": {"task": {"m": {"auroc": 0.9}}}}))
    prev, source = _previous_run(p, False, "task")
    assert prev["results"]["task"]["m"]["auroc"] == 0.9 and source == "the run of D0 (itself: CV from D-1)"
    with pytest.raises(InputError, match="cannot merge a quick run"):
        _previous_run(p, True, "task")
    with pytest.raises(ReadError, match="'other' to merge into"):
        _previous_run(p, False, "other")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ReadError):
        _previous_run(tmp_path / "bad.json", False, "task")
    # the run's output folder works as well as its file; another benchmark's folder is named
    assert _previous_run(tmp_path, False, "task", bench="bonn")[0] == prev
    with pytest.raises(ReadError, match="no mitbih.json here"):
        _previous_run(tmp_path, False, "task", bench="mitbih")


def test_mitbih_rr_channels_and_training_beats():
    from medad.bench.signals import FULL_BLOCKS, mitbih_fit_calibration, mitbih_preparers
    from medad.transforms.signal import beat_rr_channels as residual_rr_channels

    rng = np.random.default_rng(0)
    full = np.concatenate([rng.normal(size=(5, FULL_BLOCKS[0])), np.ones((5, 4))], axis=1).astype(np.float32)
    full[0, FULL_BLOCKS[0]] = np.e ** -0.2  # a premature beat: previous RR 0.82 of the record's median
    assert residual_rr_channels(full, 0.0).shape == (5, 1, FULL_BLOCKS[0])
    x = residual_rr_channels(full, 5.0)
    assert x.shape == (5, 5, FULL_BLOCKS[0]) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], full[:, :FULL_BLOCKS[0]])
    np.testing.assert_allclose(x[0, 1], -1.0, rtol=1e-5)  # 5 * log(e^-0.2), constant over the beat
    assert np.all(x[1:, 1:] == 0) and np.all(x[0, 2:] == 0)
    assert {"residual", "residual_rr5"} <= set(mitbih_preparers([5.0]))

    rec = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10)
    y = np.zeros(30, int)
    y[[3, 12]] = 1
    fit, cal = mitbih_fit_calibration(rec, y, ["a", "b"], max_train=100, seed=0)
    assert cal.tolist() == [8, 9, 18, 19]  # the last 20 % in time of each record's normal beats
    assert set(fit) == set(range(20)) - {3, 12, 8, 9, 18, 19}
    assert len(mitbih_fit_calibration(rec, y, ["a", "b"], max_train=5, seed=0)[0]) == 5


def test_deep_settings_are_chosen_on_training_records_only():
    """Leave-records-out folds inside the training records; the test records are never read
    (here they are NaN: a look at them would make the figures NaN)."""
    from medad.bench.signals import MITBIH_TEST, MITBIH_TRAIN, MITBIH_VAL_FOLDS, select_on_training_records

    rng = np.random.default_rng(0)
    tt = np.linspace(-1, 1, 252)
    recs = list(MITBIH_TRAIN) + list(MITBIH_TEST)
    n = 30
    x = 0.05 * rng.normal(size=(len(recs) * n, 2, 252)) + np.exp(-(tt / 0.05) ** 2)
    y = np.zeros(len(recs) * n, int)
    y[np.arange(len(recs)) * n + n - 3] = 1  # one wide (PVC-like) beat per record
    x[y == 1, 0] = np.exp(-(tt / 0.4) ** 2)
    rr = np.tile([0.8, 0.8, 1.0], (len(y), 1))
    rec = np.repeat(recs, n)
    x[np.isin(rec, MITBIH_TEST)] = np.nan
    d = {"x": x.astype(np.float32), "y": y, "record": rec, "rr": rr}
    tiny = {"frame_len": 12, "hidden_size": 8, "latent_size": 2, "epochs": 1, "batch_size": 16, "normalize": "none"}
    cands = {"seq_ae, RR x0": ("seq_ae", tiny, 0.0), "seq_ae, RR x5": ("seq_ae", tiny, 5.0)}
    sel = select_on_training_records(d, cands, max_train=200, seed=0)
    assert set(sel["table"]) == {f"{c} ({s})" for c in cands for s in ("error", "combined")}
    assert sel["folds"] == ["+".join(f) for f in MITBIH_VAL_FOLDS]
    for row in sel["table"].values():
        assert set(row["folds"]) == set(sel["folds"]) and all(np.isfinite(v) for v in row["folds"].values())
    best = max(v["mean_fold_auroc"] for v in sel["table"].values())
    assert sel["table"][sel["chosen"]]["mean_fold_auroc"] == best
    assert sel["chosen"] == f"{sel['candidate']} ({sel['scoring']})" and sel["candidate"] in cands
