"""Signal dataset adapters: counts match ../shared/data/README.md; splits never share a subject."""

from __future__ import annotations

import numpy as np
import pytest

from medad.config import data_root
from medad.datasets.signals import (
    SignalSet, load, load_bonn, load_wang_chung, split, load_heart_sounds, load_physionet2016, load_ucr, load_wfdb_beats, rr_features,
    summarize,
)
from medad.errors import InputError, ReadError
from medad.evaluation import split_by_subject

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="shared data root (../shared/data or $MEDAD_DATA_ROOT) absent")


@needs_data
def test_bonn_counts_and_labels():
    items = load_bonn(ROOT / "eeg/bonn")
    s = summarize(items)
    assert s["per_label"] == {k: 100 for k in "ABCDE"}
    assert s["n_abnormal"] == 100
    assert s["split_protocol"].startswith("by recording (the data carry no subject ids")
    r = items[0]
    assert r.data.shape == (1, 4097) and r.sfreq == 173.61 and r.meta["group"] == "healthy"
    assert len({r.subject_id for r in items}) == 500
    sub = load_bonn(ROOT / "eeg/bonn", sets=["C", "E"])
    assert [r.label for r in sub].count("C") == 100 and len(sub) == 200
    ss = SignalSet.from_records(sub)
    assert ss.x.shape == (200, 1, 4097) and ss.y.sum() == 100
    with pytest.raises(InputError):
        load_bonn(ROOT / "eeg/bonn", sets=["F"])


@needs_data
def test_heart_sounds_counts():
    items = load_heart_sounds(ROOT / "pcg/yaseen")
    assert summarize(items)["per_label"] == {"N": 200, "MR": 200, "MS": 200, "MVP": 200}
    assert sum(r.meta["abnormal"] for r in items) == 600
    assert all(r.sfreq == 8000 for r in items)
    with pytest.raises(InputError, match="differ in length"):
        SignalSet.from_records(items[:5])
    assert SignalSet.from_records(items[:5], length=8000).x.shape == (5, 1, 8000)


@needs_data
def test_physionet2016_layout():
    items = load_physionet2016(ROOT / "pcg/physionet2016_sample")
    lab = {r.record_id: (r.label, r.meta["abnormal"]) for r in items}
    assert lab == {"a0007": (-1, 0), "a0159": (1, 1)}


@needs_data
def test_wfdb_beats_counts_rr_and_subject_split():
    bs = load_wfdb_beats(ROOT / "ecg/mitbih_subset")
    assert len(set(bs.record_ids.tolist())) == 12
    # every PVC of the beat lists is found (none sits within 0.4 s of a record edge)
    assert int(bs.y.sum()) == 2011
    assert 25302 <= len(bs) <= 25311  # 25311 beats listed, a few at the edges lack a full window
    assert bs.x.shape[1:] == (1, int(round(0.25 * 360)) + int(round(0.4 * 360)))
    assert bs.features["rr"].shape == (len(bs), 3)
    # PVCs are premature: shorter previous RR relative to the local mean
    rr = bs.features["rr"][:, 2]
    assert np.median(rr[bs.y == 1]) < 0.9 < np.median(rr[bs.y == 0])
    splits = split_by_subject(bs.subject_ids, (0.5, 0.5), seed=3)
    a, b = (set(bs.subject_ids[v].tolist()) for v in splits.values())
    assert a and b and not a & b
    assert split_by_subject(bs.subject_ids, (0.5, 0.5), seed=3)["train"].tolist() == splits["train"].tolist()
    two = load_wfdb_beats(ROOT / "ecg/mitbih_subset", records=["106", "119"])
    assert set(two.record_ids.tolist()) == {"106", "119"} and two.y.sum() == 520 + 444
    sub = two.subset(two.y == 1)
    assert len(sub) == 964 and sub.features["rr"].shape[0] == 964
    with pytest.raises(ReadError):
        load_wfdb_beats(ROOT / "ecg/mitbih_subset", records=["999"])


@needs_data
def test_ucr_counts():
    e200 = load_ucr(ROOT / "ecg/ucr/ecg200")
    assert e200.x.shape == (200, 1, 96)
    assert e200.counts() == {"1": 69 + 64, "-1": 31 + 36}
    assert set(e200.features["split"].tolist()) == {"TRAIN", "TEST"}
    e5000 = load("ucr", ROOT / "ecg/ucr/ecg5000")
    assert e5000.counts() == {"1": 292, "2": 177, "3": 10, "4": 19, "5": 2}
    assert int(e5000.y.sum()) == 500 - 292


@needs_data
def test_splits_have_no_shared_subject_for_recording_kinds():
    items = load_bonn(ROOT / "eeg/bonn", sets=["A", "E"])
    ids = [r.subject_id for r in items]
    sp = split_by_subject(ids, (0.6, 0.2, 0.2), seed=0, stratify=[r.meta["abnormal"] for r in items])
    sets = [set(np.asarray(ids)[v].tolist()) for v in sp.values()]
    assert sum(len(s) for s in sets) == 200
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    beats = load_wfdb_beats(ROOT / "ecg/mitbih_subset", records=["100", "105", "106", "119", "200", "116"])
    parts = split(beats, (0.5, 0.5), seed=1)
    recs = [set(beats.record_ids[v].tolist()) for v in parts.values()]
    assert len(recs[0]) == len(recs[1]) == 3 and not recs[0] & recs[1]
    assert all(beats.y[v].sum() > 0 for v in parts.values())  # stratified: PVCs on both sides
    s = summarize(beats)
    assert s["split_protocol"].startswith("by subject")
    assert sum(sum(d.values()) for d in s["per_split_label"].values()) == len(beats)


def test_rr_features_synthetic():
    peaks = np.array([0, 100, 200, 250, 400, 500])  # a premature beat at 250
    f = rr_features(peaks, 100.0, local=3)
    assert f.shape == (6, 3)
    assert f[3, 0] == pytest.approx(0.5) and f[3, 1] == pytest.approx(1.5)
    assert f[3, 2] < 0.7 < f[2, 2]


def test_errors_on_bad_roots(tmp_path):
    with pytest.raises(ReadError, match="not found"):
        load_bonn(tmp_path / "nope")
    with pytest.raises(ReadError, match="class folders"):
        load_heart_sounds(tmp_path)
    with pytest.raises(ReadError, match="REFERENCE"):
        load_physionet2016(tmp_path)
    with pytest.raises(InputError, match="unknown signal dataset kind"):
        load("eeg_magic", tmp_path)


@needs_data
def test_wang_chung_recording():
    r = load_wang_chung(ROOT / "eeg/wang_chung")
    assert r.data.shape == (8, 32678) and r.sfreq == 100.0 and r.ch_names[0] == "C3"
    (a,) = r.annotations
    assert a.description == "seizure" and a.onset == a.duration == 32678 / 100.0 / 2


def test_wang_chung_bad_folders_name_the_file(tmp_path):
    from medad.datasets.signals import WANG_CHUNG_CHANNELS

    for i, c in enumerate(WANG_CHUNG_CHANNELS):
        (tmp_path / f"{c}.txt").write_text(" ".join(["1.5"] * (10 if i else 12)))
    with pytest.raises(ReadError, match="differ in length"):
        load_wang_chung(tmp_path)
    (tmp_path / "c3.txt").write_text("1 2 x")
    with pytest.raises(ReadError, match="non-numeric") as e:
        load_wang_chung(tmp_path)
    assert "c3.txt" in str(e.value)
    (tmp_path / "c3.txt").write_text("1 2 3")
    (tmp_path / "t5.txt").unlink()
    with pytest.raises(ReadError, match="t5.txt"):
        load_wang_chung(tmp_path)
