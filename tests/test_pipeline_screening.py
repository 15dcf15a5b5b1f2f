"""Screening pipeline: synthetic recordings with inserted spikes, a corrupt file in the folder,
annotations that round-trip through MNE and wfdb, and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medad.config import data_root
from pipelines.screening import (
    Preprocessor, ScreeningConfig, ScreeningModel, flagged_intervals, list_recordings, screen_folder,
    train_screening, write_wfdb_annotations,
)

FS = 128
SPIKES = (20.0, 26.0)  # seconds holding inserted spikes in the abnormal recording


def _eeg(seconds: float, n_ch: int, seed: int, spikes: tuple[float, float] | None = None) -> np.ndarray:
    """Brown-ish noise + alpha rhythm in volts; ``spikes`` adds sharp transients in that span."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    x = np.cumsum(rng.normal(0, 1, (n_ch, n)), axis=1)
    x -= np.convolve(x[0], np.ones(FS) / FS, mode="same")[None]  # remove slow drift
    x = x / x.std(axis=1, keepdims=True) + 1.5 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 6, (n_ch, 1)))
    if spikes:
        for s in np.arange(spikes[0] + 0.3, spikes[1] - 0.3, 0.4):
            i = int(s * FS)
            x[:, i:i + 4] += np.array([6.0, -9.0, 5.0, -2.0])
    return (x * 20e-6).astype(np.float64)


def _write_edf(path: Path, data: np.ndarray, names=None) -> None:
    import mne

    names = names or [f"EEG{i}" for i in range(len(data))]
    raw = mne.io.RawArray(data, mne.create_info(names, FS, "eeg"), verbose="error")
    mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    normals = root / "normals"
    normals.mkdir()
    for i in range(4):
        _write_edf(normals / f"sub-{i:02d}_eeg.edf", _eeg(60, 3, seed=i))
    test = root / "test"
    test.mkdir()
    _write_edf(test / "sub-10_eeg.edf", _eeg(60, 3, seed=10))
    _write_edf(test / "sub-11_eeg.edf", _eeg(60, 3, seed=11, spikes=SPIKES) * 3.0)  # another gain, too
    (test / "sub-12_eeg.edf").write_bytes(b"0       " + b"x" * 500)  # corrupt
    _write_edf(test / "sub-13_eeg.edf", _eeg(60, 2, seed=13), names=["A", "B"])  # lacks the model's channels
    (normals / "sub-98_eeg.edf").write_bytes(b"garbage" * 100)  # unreadable: skipped, reported
    _write_edf(normals / "sub-99_eeg.edf", _eeg(1.0, 3, seed=99))  # shorter than a window: skipped
    cfg = ScreeningConfig(bandpass=[0.5, 40.0], notch=50.0, window_seconds=2.0, step_seconds=1.0,
                          chunk_seconds=20.0, window_fpr=0.01, min_windows=2, val_fraction=0.25,
                          detector_params={"amplitude": True})
    model = train_screening(normals, root / "model", cfg, progress=False)
    return root, model, test


def test_model_folder_and_calibration(folders):
    root, model, _ = folders
    info = json.loads((model / "screening.json").read_text())
    assert info["sfreq"] == FS and info["channels"] == ["EEG0", "EEG1", "EEG2"]
    assert len(info["val_recordings"]) == 1 and len(info["train_recordings"]) == 3
    assert not set(info["val_recordings"]) & set(info["train_recordings"])
    assert "held-out" in info["calibration"]["source"]
    assert sorted(Path(b["file"]).name for b in info["skipped"]) == ["sub-98_eeg.edf", "sub-99_eeg.edf"]
    assert "sub-99_eeg" not in info["train_recordings"] + info["val_recordings"]
    m = ScreeningModel.load(model)
    assert m.threshold == pytest.approx(info["threshold"]) and m.detector.name == "features"


def test_screen_folder_flags_spikes_and_reports_bad_files(folders):
    root, model, test = folders
    out = root / "out"
    summary = screen_folder(model, test, out, annotated_copy="fif", progress=False)
    rows = {r["record_id"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"sub-10_eeg", "sub-11_eeg", "sub-12_eeg", "sub-13_eeg"}
    assert rows["sub-12_eeg"]["status"] == "error" and "EDF" in rows["sub-12_eeg"]["error"]
    assert rows["sub-13_eeg"]["status"] == "error" and "EEG0" in rows["sub-13_eeg"]["error"]
    assert summary["n_errors"] == 2
    ab = rows["sub-11_eeg"]
    assert ab["status"] == "ok" and ab["decision"] == "abnormal"
    rec = next(r for r in summary["recordings"] if r["record_id"] == "sub-11_eeg")
    # the flagged time lies inside the spike span (window edges: +- one window)
    flagged = [(iv["start_s"], iv["end_s"]) for iv in rec["intervals"]]
    covered = sum(max(0.0, min(b, SPIKES[1] + 2) - max(a, SPIKES[0] - 2)) for a, b in flagged)
    total = sum(b - a for a, b in flagged)
    assert covered >= 0.8 * total and covered >= 4.0
    assert all(0.9 <= iv["probability"] <= 1.0 for iv in rec["intervals"])
    normal_score = float(rows["sub-10_eeg"]["max_score"])
    assert float(ab["max_score"]) > 2 * normal_score
    assert int(rows["sub-11_eeg"]["n_windows"]) == 59  # 60 s, 2 s windows every 1 s
    assert (out / "sub-11_eeg_screening.png").stat().st_size > 5000
    # BIDS events.tsv
    lines = (out / "sub-11_eeg_events.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["onset", "duration", "trial_type", "score", "probability"]
    assert float(lines[1].split("\t")[0]) == pytest.approx(flagged[0][0], abs=1e-3)
    # per-window scores on the time grid
    ws = np.loadtxt(out / "sub-11_eeg_window_scores.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(ws[:, 0], np.arange(59.0))



def test_recording_items_keeps_the_best_windows_across_chunks(folders):
    """``top_k`` (what `medad explain` explains): the k highest-scoring windows of a recording read
    in 3+ chunks, best first, as scored -- the same windows the pipeline's own windowing cuts."""
    from pipelines.screening import recording_items

    _, model, test = folders
    sm = ScreeningModel.load(model)
    f = test / "sub-11_eeg.edf"
    pre = Preprocessor(sm.cfg, sm.sfreq, sm.channels)
    chunks = list(pre.windows(f))
    assert len(chunks) >= 3 and max(len(c[0]) for c in chunks) < 30  # 30 best: from several chunks
    t, w = (np.concatenate(a) for a in zip(*chunks))
    res = recording_items(sm, f, top_k=30)
    order = np.argsort(-res["scores"], kind="stable")[:30]
    np.testing.assert_array_equal(res["top_starts"], res["starts"][order])
    np.testing.assert_allclose(res["top_windows"], w[np.searchsorted(t, res["top_starts"])], rtol=1e-6)
    np.testing.assert_allclose(sm.detector.score(res["top_windows"]).score, res["scores"][order], rtol=1e-5)

def test_mne_annotations_roundtrip(folders):
    import mne

    root, model, test = folders
    out = root / "out"
    if not (out / "results.json").exists():
        screen_folder(model, test, out, annotated_copy="fif", progress=False)
    rec = next(r for r in json.loads((out / "results.json").read_text())["recordings"] if r["record_id"] == "sub-11_eeg")
    ann = mne.read_annotations(out / "sub-11_eeg-annot.fif")
    np.testing.assert_allclose(ann.onset, [iv["start_s"] for iv in rec["intervals"]], atol=1e-3)
    np.testing.assert_allclose(ann.duration, [iv["end_s"] - iv["start_s"] for iv in rec["intervals"]], atol=1e-3)
    raw = mne.io.read_raw_fif(out / "sub-11_eeg_screened_raw.fif", verbose="error")
    assert list(raw.annotations.description) == ["medad_abnormal"] * len(rec["intervals"])
    np.testing.assert_allclose(raw.annotations.onset, ann.onset, atol=1e-2)


def test_edf_plus_export_roundtrip(folders, tmp_path):
    import mne

    from pipelines.screening import write_mne_outputs

    root, _, test = folders
    ivs = [{"start_s": 3.0, "end_s": 7.5, "max_score": 9.0, "probability": 0.99}]
    written = write_mne_outputs(test / "sub-10_eeg.edf", ivs, tmp_path, "x", annotated_copy="edf")
    raw = mne.io.read_raw_edf(written[-1], verbose="error")
    assert len(raw.annotations) == 1 and raw.annotations.description[0] == "medad_abnormal"
    assert raw.annotations.onset[0] == pytest.approx(3.0, abs=0.01)
    assert raw.annotations.duration[0] == pytest.approx(4.5, abs=0.01)


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_wfdb_annotations_roundtrip(tmp_path):
    from medad.io.signals import _wfdb

    wfdb = _wfdb()
    ivs = [{"start_s": 1.0, "end_s": 2.5, "max_score": 4.2, "probability": 0.999},
           {"start_s": 10.0, "end_s": 12.0, "max_score": 7.0, "probability": 1.0}]
    f = write_wfdb_annotations("rec", ivs, 360.0, tmp_path)
    a = wfdb.rdann(str(tmp_path / "rec"), "medad")
    assert a.sample.tolist() == [360, 900, 3600, 4320]
    assert a.symbol == ["+"] * 4
    assert a.aux_note[0].startswith("(MEDAD_ABN") and a.aux_note[1] == "(N"
    assert f.name == "rec.medad" and not any(p.name.startswith(".wfdb_tmp") for p in tmp_path.iterdir())
    # with beats: every beat labelled, Q inside flagged spans
    beats = np.array([180, 700, 1000, 3700, 4000, 5000])
    write_wfdb_annotations("rec", ivs, 360.0, tmp_path, beats=beats)
    a = wfdb.rdann(str(tmp_path / "rec"), "medad")
    got = {int(s): sym for s, sym in zip(a.sample, a.symbol) if sym != "+"}
    assert got == {180: "N", 700: "Q", 1000: "N", 3700: "Q", 4000: "Q", 5000: "N"}


@pytest.mark.filterwarnings("ignore")
def test_wfdb_and_wav_folders_are_screened(tmp_path):
    from scipy.io import wavfile

    from medad.io.signals import _wfdb

    wfdb = _wfdb()
    normals = tmp_path / "n"
    normals.mkdir()
    for i in range(3):
        wfdb.wrsamp(f"r{i}", fs=FS, units=["mV"], sig_name=["ECG"], p_signal=_eeg(40, 1, seed=i).T * 1e4,
                    fmt=["16"], write_dir=str(normals))
    test = tmp_path / "t"
    test.mkdir()
    wfdb.wrsamp("ab", fs=FS, units=["mV"], sig_name=["ECG"], p_signal=_eeg(40, 1, 5, spikes=(10, 16)).T * 1e4,
                fmt=["16"], write_dir=str(test))
    wav = (_eeg(40, 1, 7)[0] / 2e-4 * 8000).astype(np.int16)
    wavfile.write(test / "w.wav", FS, wav)
    assert [p.name for p in list_recordings(test)] == ["ab.hea", "w.wav"]
    cfg = ScreeningConfig(notch=None, chunk_seconds=10.0, window_fpr=0.02, min_windows=2)
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    s = screen_folder(model, test, tmp_path / "o", progress=False)
    rows = {r["record_id"]: r for r in s["recordings"]}
    # a model of the channel 'ECG' does not screen the WAV's 'audio' channel unasked; named, it does
    assert rows["ab"]["decision"] == "abnormal" and rows["ab"]["channels"] == ["ECG"]
    assert rows["w"]["status"] == "error" and "'ECG'" in rows["w"]["error"] and "--channels" in rows["w"]["error"]
    w = screen_folder(model, test / "w.wav", tmp_path / "ow", progress=False, channels=["audio"])["recordings"][0]
    assert w["status"] == "ok" and w["channels"] == ["audio"]
    a = wfdb.rdann(str(tmp_path / "o" / "ab"), "medad")
    spans = [(smp, note) for smp, sym, note in zip(a.sample, a.symbol, a.aux_note) if sym == "+"]
    assert spans[0][1].startswith("(MEDAD_ABN")
    assert 9 * FS <= spans[0][0] <= 16 * FS
    assert set(a.symbol) >= {"+", "N"}  # beats were annotated too (found in this synthetic trace)


def test_streaming_windows_match_whole_recording(tmp_path):
    """Chunked preprocessing gives the same windows as processing the recording in one piece
    (away from the recording's own ends), on a fixed time grid."""
    from medad.transforms.signal import bandpass, windows

    f = tmp_path / "long.edf"
    data = _eeg(120, 2, seed=3)
    _write_edf(f, data)
    cfg = ScreeningConfig(bandpass=[1.0, 30.0], notch=None, normalize="none", chunk_seconds=16.0)
    pre = Preprocessor(cfg, FS, None)
    parts = list(pre.windows(f))
    assert len(parts) > 4  # really chunked
    t = np.concatenate([p[0] for p in parts])
    w = np.concatenate([p[1] for p in parts])
    np.testing.assert_allclose(t, np.arange(119.0))
    from medad.io.signals import read_signal

    whole = read_signal(f).data
    ref, tref = windows(bandpass(whole, FS, 1.0, 30.0), FS, 2.0, 1.0)
    np.testing.assert_allclose(tref, t)
    inner = slice(10, 110)
    err = np.abs(w[inner] - ref[inner]).max() / np.abs(ref).max()
    assert err < 1e-3


def test_listing_skips_docs_and_ids_stay_unique(tmp_path):
    from pipelines.screening import unique_record_ids

    for d in ("N", "MR"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "001.wav").write_bytes(b"x")
    (tmp_path / "SOURCE.txt").write_text("where the data came from")
    (tmp_path / "labels.csv").write_text("a,1")
    files = list_recordings(tmp_path)
    assert [f.name for f in files] == ["001.wav", "001.wav"]
    assert unique_record_ids(files) == ["MR_001", "N_001"]


def test_looks_like_ecg():
    from pipelines.screening import looks_like_ecg

    assert all(looks_like_ecg(c) for c in ["MLII", "V5", "ii", "aVF", "ECG", "EKG lead I", "Lead II"])
    assert not any(looks_like_ecg(c) for c in ["Fp1", "EEG C3-Ref", "PLETH", "RESP", "audio"])


def test_flagged_intervals_rules():
    starts = np.arange(10.0)
    s = np.array([0, 5, 0, 5, 5, 5, 0, 5, 5, 0], float)
    # 2 s windows every 1 s: the runs 3-5 and 7-8 cover 3-7 s and 7-10 s -- one span, though window 6 is below
    assert flagged_intervals(starts, s, 1.0, 2.0, min_windows=2) == [(3.0, 10.0, 5.0, 5)]
    assert flagged_intervals(starts, s, 1.0, 2.0, min_windows=1) == [(1.0, 10.0, 5.0, 6)]
    # 1 s windows: the same runs leave gaps and stay apart
    assert flagged_intervals(starts, s, 1.0, 1.0, min_windows=1) == [(1.0, 2.0, 5.0, 1), (3.0, 6.0, 5.0, 3),
                                                                     (7.0, 9.0, 5.0, 2)]
    assert flagged_intervals(starts, s, 9.0, 2.0) == []


def test_cli_screen(folders, tmp_path):
    from typer.testing import CliRunner

    from medad.cli import app

    root, model, test = folders
    r = CliRunner().invoke(app, ["screen", "run", str(model), str(test), "--out", str(tmp_path / "o"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "could not be read" in r.output
    assert (tmp_path / "o" / "results.csv").is_file()
    r = CliRunner().invoke(app, ["screen", "run", str(tmp_path), str(test), "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0  # not a model folder
    cfg = Path(__file__).resolve().parents[1] / "configs" / "screening_eeg.yaml"
    r = CliRunner().invoke(app, ["screen", "train", str(root / "normals"), "--out", str(tmp_path / "m"),
                                 "--config", str(cfg), "--window-fpr", "0.05"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "m" / "screening.json").read_text())
    assert info["config"]["window_fpr"] == 0.05 and info["config"]["bandpass"] == [0.5, 45.0]


def test_streaming_edf_writer_reads_back(tmp_path):
    """The benchmark's block-by-block EDF writer produces a file MNE and medad read exactly."""
    from medad.bench.screening_speed import burst_times, eeg_like_blocks, write_edf_streaming
    from medad.io.signals import read_signal

    blocks = list(eeg_like_blocks(30, 3, 64, seed=0, block_seconds=10, spikes_every_s=20.0))
    assert [b.shape for b in blocks] == [(3, 640)] * 3
    f = write_edf_streaming(tmp_path / "g.edf", iter(blocks), n_channels=3, sfreq=64, n_records=30)
    rec = read_signal(f)
    assert rec.data.shape == (3, 1920) and rec.sfreq == 64
    ref = np.concatenate(blocks, axis=1) * 1e-6  # µV -> V
    np.testing.assert_allclose(rec.data, ref, atol=500e-6 / 32767 * 1.01)  # 16-bit quantisation
    b = int(burst_times(30, 20.0)[0] * 64)
    assert np.abs(ref[:, b:b + 64]).max() > 3 * np.abs(ref[:, :b]).max() / 2


def test_screening_a_long_recording_holds_one_chunk_of_windows_at_a_time(tmp_path):
    """Window mode reads the recording chunk by chunk: what is kept per chunk (scores, a trace
    envelope) must not hold on to the chunk's windows, so peak memory stays near one chunk, not the
    whole recording's windows (the 24-hour EDF of the speed benchmark once needed 2.5 GB for this)."""
    import tracemalloc

    from medad.bench.screening_speed import make_recording
    from pipelines.screening import recording_items

    n_ch, fs, hours = 8, 128, 2.0
    for i in range(2):
        make_recording(tmp_path / "train" / f"n{i}.edf", 0.05, n_ch, fs, seed=i)
    long_f = make_recording(tmp_path / "long.edf", hours, n_ch, fs, seed=5)
    cfg = ScreeningConfig(detector="features", window_seconds=2.0, step_seconds=2.0, chunk_seconds=120.0,
                          window_fpr=0.01, val_fraction=0.5)
    model = ScreeningModel.load(train_screening(tmp_path / "train", tmp_path / "m", cfg, progress=False))
    all_windows_mb = hours * 3600 * fs * n_ch * 4 / 2**20  # float32 windows of the whole recording
    tracemalloc.start()
    try:
        res = recording_items(model, long_f)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert len(res["scores"]) == 3600
    assert peak_mb < 0.5 * all_windows_mb, f"peak {peak_mb:.1f} MB vs {all_windows_mb:.1f} MB of windows"


@pytest.mark.skipif(data_root(required=False) is None,
                    reason="shared data root (../shared/data or $MEDAD_DATA_ROOT) absent")
def test_real_eeg_seizure_is_flagged_after_training_on_its_preictal_start(tmp_path):
    """Wang-Chung scalp EEG (8 channels, 100 Hz; first half before the seizure, second half
    during it): trained on the first 40 % of the pre-seizure half only, the screening flags
    (almost) none of the unseen pre-seizure windows and most seizure windows."""
    import mne

    from medad.evaluation import auroc
    from medad.io.signals import read_signal

    root = data_root() / "eeg" / "wang_chung"
    chs = ["c3", "c4", "cz", "p3", "p4", "t3", "t4", "t5"]
    data = np.stack([read_signal(root / f"{c}.txt", sfreq=100).data[0] for c in chs]).astype(np.float64)
    half = data.shape[1] // 2
    q = int(0.4 * half)

    def edf(path, x):
        raw = mne.io.RawArray(x * 1e-6, mne.create_info([c.upper() for c in chs], 100.0, "eeg"), verbose="error")
        mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")

    (tmp_path / "normal").mkdir()
    (tmp_path / "new").mkdir()
    edf(tmp_path / "normal" / "pre_a.edf", data[:, :q])
    edf(tmp_path / "normal" / "pre_b.edf", data[:, q:2 * q])
    edf(tmp_path / "new" / "full.edf", data)
    cfg = ScreeningConfig(bandpass=[0.5, 40.0], notch=None, window_seconds=2.0, step_seconds=1.0, window_fpr=0.01,
                          min_windows=3, val_fraction=0.5, chunk_seconds=60.0)
    model = train_screening(tmp_path / "normal", tmp_path / "m", cfg, progress=False)
    summary = screen_folder(model, tmp_path / "new", tmp_path / "out", progress=False, plots=False)
    assert summary["recordings"][0]["decision"] == "abnormal"
    ws = np.loadtxt(tmp_path / "out" / "full_window_scores.csv", delimiter=",", skiprows=1)
    t, s = ws[:, 0], ws[:, 1]
    unseen_pre = (t >= 2 * q / 100) & (t + 2 <= half / 100)
    seizure = t >= half / 100
    thr = summary["threshold"]
    assert (s[unseen_pre] > thr).mean() < 0.05  # measured: 0.00
    assert (s[seizure] > thr).mean() > 0.6  # measured: 0.80
    m = unseen_pre | seizure
    assert auroc(seizure[m].astype(int), s[m]) > 0.9  # measured: 0.94


def test_recording_scale_ignores_abnormal_stretches(tmp_path):
    """The per-recording amplitude scale is a median over ~10 s pieces: large bursts in a
    quarter of the recording leave it (nearly) where the clean recording puts it."""
    clean = _eeg(120, 2, seed=5)
    burst = clean.copy()
    for a in (10, 50, 90):
        burst[:, a * FS:(a + 10) * FS] *= 6.0
    _write_edf(tmp_path / "clean.edf", clean)
    _write_edf(tmp_path / "burst.edf", burst)
    pre = Preprocessor(ScreeningConfig(notch=None), FS, None)
    scales = []
    for name in ("clean", "burst"):
        hdr = pre.header(tmp_path / f"{name}.edf")
        scales.append(pre.scale(tmp_path / f"{name}.edf", hdr, [0, 1])[1].ravel())
    np.testing.assert_allclose(scales[1], scales[0], rtol=0.15)


# ---------------------------------------------------------------------------- ECG beat mode
ECG_FS = 250


def _ecg(seconds: float, seed: int, ectopic: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic single-lead ECG (mV): P-QRS-T beats every ~0.8 s, noise and baseline wander;
    beats listed in ``ectopic`` come early, wide, without P wave, with an inverted T and a
    compensatory pause (PVC-like). Returns (signal, R-peak samples, ectopic flags)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * ECG_FS)
    t = np.arange(n) / ECG_FS
    x = 0.02 * rng.normal(size=n) + 0.1 * np.sin(2 * np.pi * 0.25 * t + seed)
    g = lambda c, w, a: a * np.exp(-0.5 * ((t - c) / w) ** 2)  # noqa: E731
    peaks, flags, c, k = [], [], 0.6, 0
    while c < seconds - 0.6:
        odd = k in ectopic
        if odd:
            x += g(c, 0.035, 1.5) + g(c + 0.3, 0.06, -0.45)
        else:
            x += g(c - 0.17, 0.02, 0.15) + g(c, 0.01, 1.0) + g(c + 0.03, 0.008, -0.2) + g(c + 0.25, 0.045, 0.3)
        peaks.append(int(round(c * ECG_FS)))
        flags.append(odd)
        rr = rng.uniform(0.75, 0.85)
        nxt = k + 1 in ectopic
        c += 0.55 if nxt else (1.05 if odd else rr)
        k += 1
    return x, np.array(peaks), np.array(flags)


def _write_ecg(folder: Path, name: str, x: np.ndarray, fs: float = ECG_FS) -> None:
    from medad.io.signals import _wfdb

    _wfdb().wrsamp(name, fs=fs, units=["mV"], sig_name=["MLII"], p_signal=x[:, None].astype(np.float64),
                   fmt=["16"], write_dir=str(folder))


def _ecg_folders(root: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """``root/normals``: 3 normal synthetic ECGs of 60 s; ``root/test/ecto``: one with 5 ectopic
    beats. Returns (normals, test, its R-peak samples, its ectopic flags)."""
    normals, test = root / "normals", root / "test"
    normals.mkdir()
    test.mkdir()
    for i in range(3):
        _write_ecg(normals, f"n{i}", _ecg(60, seed=i)[0])
    x, peaks, odd = _ecg(60, seed=7, ectopic=(10, 22, 35, 47, 60))
    _write_ecg(test, "ecto", x)
    return normals, test, peaks, odd


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_ecg_beat_mode_flags_ectopic_beats_and_writes_wfdb(tmp_path):
    from medad.evaluation import auroc
    from medad.io.signals import _wfdb
    from pipelines.screening import match_beats

    normals, test, peaks, odd = _ecg_folders(tmp_path)
    _write_ecg(test, "short", _ecg(60, seed=8)[0][: ECG_FS])  # 1 s: too short for beats
    (test / "bad.hea").write_text("this is not a WFDB header\n")
    cfg = ScreeningConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "screening_ecg_beats.yaml")
    cfg.chunk_seconds = 20.0  # several chunks per recording: beats owned once, none lost at chunk edges
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    info = json.loads((model / "screening.json").read_text())
    assert info["config"]["unit"] == "beats" and len(info["val_recordings"]) == 1 and info["n_train_beats"] > 100
    s = screen_folder(model, test, tmp_path / "o", progress=False)
    rows = {r["record_id"]: r for r in s["recordings"]}
    assert rows["bad"]["status"] == "error" and rows["short"]["status"] == "error"
    assert "short" in rows["short"]["error"] and s["n_errors"] == 2
    r = rows["ecto"]
    assert r["status"] == "ok" and r["decision"] == "abnormal" and r["n_beats"] == len(peaks)
    tab = np.loadtxt(tmp_path / "o" / "ecto_beat_scores.csv", delimiter=",", skiprows=1)
    j = match_beats(peaks / ECG_FS, tab[:, 1], 0.05)
    assert (j >= 0).all() and len(np.unique(j)) == len(peaks)  # every beat found exactly once
    score, flagged = tab[j, 2], tab[j, 3] > 0
    assert auroc(odd.astype(int), score) > 0.99
    # the beats either side of an ectopic one have abnormal RR intervals (short next RR, or the
    # compensatory pause before them) and are flagged too, as on MIT-BIH; the others mostly not
    near = np.zeros(len(odd), bool)
    near[np.flatnonzero(odd) - 1] = near[np.flatnonzero(odd) + 1] = True
    far = ~odd & ~near
    assert flagged[odd].all() and flagged[far].mean() < 0.15
    assert score[odd].min() > 3 * score[far].max()
    assert r["n_flagged_beats"] == int(flagged.sum())
    # every flagged beat lies in a flagged span (runs of >= min_windows = 1 flagged beats)
    t_flag = tab[tab[:, 3] > 0, 1]
    assert all(any(iv["start_s"] <= tf <= iv["end_s"] for iv in r["intervals"]) for tf in t_flag)
    a = _wfdb().rdann(str(tmp_path / "o" / "ecto"), "medad")
    beat = np.array([sym in ("N", "Q") for sym in a.symbol])
    assert beat.sum() == len(peaks) and a.fs == ECG_FS
    np.testing.assert_array_equal(a.sample[beat], tab[:, 0].astype(int))
    q = np.array(a.symbol)[beat] == "Q"
    np.testing.assert_array_equal(q, tab[:, 3] > 0)
    assert all(note.startswith("medad_abnormal score=") for note, f in zip(np.array(a.aux_note)[beat], q) if f)
    assert (tmp_path / "o" / "ecto_screening.png").stat().st_size > 5000
    csv_rows = {row["record_id"]: row for row in csv.DictReader(open(tmp_path / "o" / "results.csv"))}
    assert csv_rows["ecto"]["n_beats"] == str(len(peaks)) and csv_rows["ecto"]["n_windows"] == ""
    # explaining this (kNN) model: tests/test_screening_beats_explain.py


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_ecg_beat_mode_with_a_deep_detector_flags_ectopic_beats_and_round_trips(tmp_path):
    """Beat mode with seq_ae (configs/screening_ecg_beats_ae.yaml, few epochs): the autoencoder
    on beat minus template, fused with the RR model, flags the inserted ectopic beats; the
    autoencoder's own score separates them too (not only the RR member); the model folder holds
    no pickle and loads back to the same scores."""
    from medad.detectors.fusion import ScoreFusion
    from medad.errors import ConfigError
    from medad.evaluation import auroc
    from pipelines.screening import Preprocessor, match_beats, recording_beat_features

    normals, test, peaks, odd = _ecg_folders(tmp_path)
    cfg = ScreeningConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "screening_ecg_beats_ae.yaml")
    cfg.chunk_seconds = 20.0
    cfg.detector_params["epochs"] = 5
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    det_dir = tmp_path / "m" / "detector"
    assert sorted(p.name for p in det_dir.iterdir()) == ["fusion.json", "member_0", "member_1"]
    assert not list(det_dir.rglob("*.pkl")) and not list(det_dir.rglob("*.pt"))
    s = screen_folder(model, test, tmp_path / "o", progress=False)
    r = s["recordings"][0]
    assert r["status"] == "ok" and r["decision"] == "abnormal" and s["detector"] == "seq_ae"
    tab = np.loadtxt(tmp_path / "o" / "ecto_beat_scores.csv", delimiter=",", skiprows=1)
    j = match_beats(peaks / ECG_FS, tab[:, 1], 0.05)
    assert (j >= 0).all()
    score, flagged = tab[j, 2], tab[j, 3] > 0
    near = np.zeros(len(odd), bool)
    near[np.flatnonzero(odd) - 1] = near[np.flatnonzero(odd) + 1] = True
    assert auroc(odd.astype(int), score) > 0.99 and flagged[odd].all() and flagged[~odd & ~near].mean() < 0.3
    # per-site normalisation works in deep beat mode too: the beat features z-scored over the folder,
    # put on the fusion's training-feature scale, still flag the ectopic beats
    s2 = screen_folder(model, test, tmp_path / "o2", progress=False, plots=False, site_normalize="folder")
    assert s2["site_normalize"] == "folder" and s2["sites"]["."]["n_items"] == len(tab)
    tab2 = np.loadtxt(tmp_path / "o2" / "ecto_beat_scores.csv", delimiter=",", skiprows=1)
    assert auroc(odd.astype(int), tab2[j, 2]) > 0.99 and (tab2[j, 3] > 0)[odd].all()
    m = ScreeningModel.load(model)
    assert isinstance(m.detector, ScoreFusion) and [d.name for d in m.detector.members] == ["seq_ae", "features"]
    f = recording_beat_features(Preprocessor(m.cfg, m.sfreq, m.channels), test / "ecto.hea")["features"]
    assert f.shape[1] == int(round(0.25 * ECG_FS)) + int(round(0.45 * ECG_FS)) + 4  # every sample + 4 RR
    np.testing.assert_allclose(m.detector.score(f).score[j], score, rtol=1e-4)  # the loaded model, same scores
    z_shape = m.detector.standardised(m.detector.member_scores(f))[0][j]
    assert z_shape[odd].min() > z_shape[~odd & ~near].max()  # the autoencoder alone tells the ectopic beats
    # medad explain: the 3 top-scoring beats (all ectopic here), explained on what seq_ae scores
    from typer.testing import CliRunner

    from medad.cli import app

    res = CliRunner().invoke(app, ["explain", str(model), str(test / "ecto.hea"), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    case = json.loads((tmp_path / "ex" / "case.json").read_text())
    assert case["threshold"] == pytest.approx(m.threshold) and case["decision"] == "abnormal"
    assert case["model"] == "SequenceAEDetector" and len(case["figures"]) == 3
    explained = [float(k.split()[2]) for k in case["details"] if k.startswith("beat at")]
    assert len(explained) == 3 and all(np.abs(peaks[odd] / ECG_FS - t).min() < 0.05 for t in explained)
    assert all((tmp_path / "ex" / Path(fig["png"]).name).stat().st_size > 5000 for fig in case["figures"])
    # a beat model saved before the fusion kept its training-feature statistics: site_normalize refused
    fj = tmp_path / "m" / "detector" / "fusion.json"
    info = json.loads(fj.read_text())
    fj.write_text(json.dumps({k: v for k, v in info.items() if not k.startswith("input_")}))
    with pytest.raises(ConfigError, match="retrain it to use site_normalize"):
        screen_folder(model, test, tmp_path / "o3", progress=False, site_normalize="folder")


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_ecg_beat_mode_with_rr_channels_flags_ectopic_beats_and_round_trips(tmp_path):
    """Beat mode with rr_channels (configs/screening_ecg_beats_rr.yaml, few epochs): one seq_ae on
    the beat minus template and 4 constant RR channels, no fusion; it flags the inserted ectopic
    beats, saves without pickle, loads back to the same scores, screens with per-site
    normalisation and is explained over its 5 input channels."""
    from typer.testing import CliRunner

    from medad.cli import app
    from medad.errors import ReadError
    from medad.evaluation import auroc
    from medad.detectors.beats import RRChannelModel
    from pipelines.screening import Preprocessor, match_beats, recording_beat_features

    normals, test, peaks, odd = _ecg_folders(tmp_path)
    cfg = ScreeningConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "screening_ecg_beats_rr.yaml")
    assert cfg.rr_channels == 5.0 and not cfg.beat_fusion and cfg.beat_signal
    cfg.chunk_seconds = 20.0
    cfg.detector_params["epochs"] = 4
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    det_dir = tmp_path / "m" / "detector"
    assert (det_dir / "rr_channels.json").is_file() and not list(det_dir.rglob("*.pkl"))
    s = screen_folder(model, test, tmp_path / "o", progress=False)
    r = s["recordings"][0]
    assert r["status"] == "ok" and r["decision"] == "abnormal"
    tab = np.loadtxt(tmp_path / "o" / "ecto_beat_scores.csv", delimiter=",", skiprows=1)
    j = match_beats(peaks / ECG_FS, tab[:, 1], 0.05)
    assert (j >= 0).all()
    score, flagged = tab[j, 2], tab[j, 3] > 0
    assert auroc(odd.astype(int), score) > 0.99 and flagged[odd].all()
    m = ScreeningModel.load(model)
    assert isinstance(m.detector, RRChannelModel) and m.detector.detector.name == "seq_ae"
    f = recording_beat_features(Preprocessor(m.cfg, m.sfreq, m.channels), test / "ecto.hea")["features"]
    x = m.detector.inputs(f)
    assert x.shape == (len(f), 5, f.shape[1] - 4) and np.ptp(x[:, 1:], axis=2).max() == 0  # constant RR channels
    np.testing.assert_allclose(m.detector.score(f).score[j], score, rtol=1e-4)
    s2 = screen_folder(model, test, tmp_path / "o2", progress=False, plots=False, site_normalize="folder")
    tab2 = np.loadtxt(tmp_path / "o2" / "ecto_beat_scores.csv", delimiter=",", skiprows=1)
    assert s2["site_normalize"] == "folder" and auroc(odd.astype(int), tab2[j, 2]) > 0.99
    res = CliRunner().invoke(app, ["explain", str(model), str(test / "ecto.hea"), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    case = json.loads((tmp_path / "ex" / "case.json").read_text())
    assert case["threshold"] == pytest.approx(m.threshold) and len(case["figures"]) == 3
    explained = [float(k.split()[2]) for k in case["details"] if k.startswith("beat at")]
    assert len(explained) == 3 and all(np.abs(peaks[odd] / ECG_FS - t).min() < 0.05 for t in explained)
    # the RR occlusion figures: an ectopic beat's score drops when its rhythm is made regular
    regular = [float(v.split("whole rhythm regular: ")[1]) for k, v in case["details"].items() if k.startswith("beat at")]
    assert len(regular) == 3 and all(d > 0 for d in regular)
    (det_dir / "rr_channels.json").write_text("{")  # a cut-short / corrupt model folder: a clear error
    with pytest.raises(ReadError, match="corrupt rr_channels.json"):
        ScreeningModel.load(model)


def test_beat_and_site_options_are_checked():
    from medad.errors import ConfigError
    from pipelines.screening import check_site_normalize

    with pytest.raises(ConfigError, match="supervised"):
        ScreeningConfig(unit="beats", detector="cnn1d").validate()
    with pytest.raises(ConfigError, match="image input"):
        ScreeningConfig(unit="beats", detector="ae").validate()
    with pytest.raises(ConfigError, match="unknown detector"):
        ScreeningConfig(unit="beats", detector="no_such_model").validate()
    ScreeningConfig(unit="beats", detector="seq_ae", site_normalize="folder").validate()  # beat features
    ScreeningConfig(unit="beats", detector="seq_predictor").validate()
    ScreeningConfig(unit="beats", detector="seq_ae", rr_channels=5.0).validate()
    with pytest.raises(ConfigError, match="rr_channels"):
        ScreeningConfig(unit="beats", detector="features", rr_channels=5.0).validate()
    with pytest.raises(ConfigError, match="rr_channels"):
        ScreeningConfig(unit="beats", detector="seq_ae", rr_channels=-1.0).validate()
    with pytest.raises(ConfigError, match="needs the 'features' detector"):
        ScreeningConfig(detector="seq_ae", site_normalize="folder").validate()
    with pytest.raises(ConfigError):
        check_site_normalize("per-planet", "features")
    with pytest.raises(ConfigError):
        ScreeningConfig(unit="heartbeats").validate()
    check_site_normalize("subfolder", "features")


def test_site_normalisation_makes_a_3x_gain_site_screen_like_the_original(folders, tmp_path):
    """Without per-recording normalisation the log-variance feature carries the gain: a site
    recorded at 3x gain is all 'abnormal'. Robust z-scoring the features per site (subfolder)
    gives it the same decisions as the original site."""
    from medad.errors import ConfigError

    root, _, _ = folders
    cfg = ScreeningConfig(bandpass=[0.5, 40.0], notch=50.0, normalize="none", chunk_seconds=20.0, window_fpr=0.01,
                          min_windows=2, val_fraction=0.25, detector_params={"amplitude": True})
    model = train_screening(root / "normals", tmp_path / "m", cfg, progress=False)
    sites = tmp_path / "sites"
    for site, gain in (("a", 1.0), ("b", 3.0)):
        (sites / site).mkdir(parents=True)
        _write_edf(sites / site / "normal.edf", _eeg(60, 3, seed=10) * gain)
        _write_edf(sites / site / "spikes.edf", _eeg(60, 3, seed=11, spikes=SPIKES) * gain)
    def dec(summary):
        return {(Path(r["file"]).parent.name, Path(r["file"]).stem): r["decision"] for r in summary["recordings"]}

    plain = dec(screen_folder(model, sites, tmp_path / "o1", progress=False, plots=False))
    assert plain[("a", "normal")] == "normal" and plain[("b", "normal")] == "abnormal"  # the gain alone flags it
    s = screen_folder(model, sites, tmp_path / "o2", progress=False, plots=False, site_normalize="subfolder")
    d = dec(s)
    assert d[("a", "normal")] == d[("b", "normal")] == "normal"
    assert d[("a", "spikes")] == d[("b", "spikes")] == "abnormal"
    assert s["site_normalize"] == "subfolder" and set(s["sites"]) == {"a", "b"}
    ws = {site: np.loadtxt(tmp_path / "o2" / f"{site}_spikes_window_scores.csv", delimiter=",", skiprows=1)[:, 1]
          for site in ("a", "b")}
    np.testing.assert_allclose(ws["b"], ws["a"], rtol=0.05, atol=0.05 * np.median(ws["a"]))
    from typer.testing import CliRunner

    from medad.cli import app

    r = CliRunner().invoke(app, ["screen", "run", str(model), str(sites), "--out", str(tmp_path / "o3"),
                                 "--no-plots", "--site-normalize", "subfolder"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o3" / "results.json").read_text())["site_normalize"] == "subfolder"
    r = CliRunner().invoke(app, ["screen", "run", str(model), str(sites), "--out", str(tmp_path / "o4"),
                                 "--site-normalize", "continent"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError) and "site_normalize" in str(r.exception)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.skipif(data_root(required=False) is None,
                    reason="shared data root (../shared/data or $MEDAD_DATA_ROOT) absent")
def test_ecg_beat_mode_on_real_mitbih_minutes(tmp_path):
    """First 5 minutes of MIT-BIH records, inter-patient: trained on 100, 121, 123 (their listed
    PVCs left out through train_exclude_beats), screened on 119 and 200 (206 PVCs): the
    pipeline's own beat scores separate the reference PVCs (measured: AUROC 0.98, 202 PVCs matched)."""
    import shutil

    from medad.datasets.signals import read_beat_csv
    from medad.evaluation import auroc
    from medad.io.signals import read_signal
    from pipelines.screening import match_beats

    src = data_root() / "ecg" / "mitbih_subset"
    n = 5 * 60 * 360
    for folder, recs in (("train", ("100", "121", "123")), ("test", ("119", "200"))):
        (tmp_path / folder).mkdir()
        for r in recs:
            _write_ecg(tmp_path / folder, r, read_signal(src / r).data[0, :n], fs=360)
            shutil.copy(src / f"{r}_pvc_beats.csv", tmp_path / folder)
    cfg = ScreeningConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "screening_ecg_beats.yaml")
    cfg.train_exclude_beats = "{record}_pvc_beats.csv"
    model = train_screening(tmp_path / "train", tmp_path / "m", cfg, progress=False)
    screen_folder(model, tmp_path / "test", tmp_path / "o", progress=False, plots=False)
    ys, ss = [], []
    for r in ("119", "200"):
        tab = np.loadtxt(tmp_path / "o" / f"{r}_beat_scores.csv", delimiter=",", skiprows=1)
        ref = read_beat_csv(src / f"{r}_all_beats.csv")
        ref = ref[ref < n - 360]
        pvc = set(read_beat_csv(src / f"{r}_pvc_beats.csv").tolist())
        j = match_beats(ref / 360.0, tab[:, 1], 0.05)
        assert (j >= 0).mean() > 0.95  # R peaks found
        ys.append([int(p in pvc) for p, k in zip(ref, j) if k >= 0])
        ss.append(tab[j[j >= 0], 2])
    y, s = np.concatenate(ys), np.concatenate(ss)
    assert y.sum() > 150 and auroc(y, s) > 0.95


# ---------------------------------------------------------------- MNE outputs for non-MNE input
def _burst_signal(seconds: float, n_ch: int, sf: int, seed: int, burst: tuple[float, float] | None) -> np.ndarray:
    """(n_ch, T) 2 Hz rhythm + noise, with a large 8 Hz burst over ``burst`` seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sf)) / sf
    x = np.sin(2 * np.pi * 2 * t + rng.uniform(0, 6, (n_ch, 1))) + 0.5 * rng.standard_normal((n_ch, len(t)))
    if burst:
        m = (t >= burst[0]) & (t < burst[1])
        x[:, m] += 12 * np.sin(2 * np.pi * 8 * t[m])
    return x


BURST = (14.0, 18.0)  # a central burst: test_short_recording_with_a_central_burst_is_flagged_only_there


def _write_wav(path: Path, x: np.ndarray, sf: int) -> None:
    from scipy.io import wavfile

    wavfile.write(path, sf, (x.T / 16 * 32767).astype(np.int16))


def _wav_model_and_test(tmp_path: Path, n_ch: int, burst: tuple[float, float], sf: int = 100) -> Path:
    """A model trained on 4 clean 20 s WAV recordings in ``n/`` (returned); ``t/t0.wav`` holds one
    with ``burst``."""
    for folder, n, b in (("n", 4, None), ("t", 1, burst)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            _write_wav(tmp_path / folder / f"{folder}{i}.wav", _burst_signal(20, n_ch, sf, i + 10 * (n == 1), b), sf)
    return train_screening(tmp_path / "n", tmp_path / "m", ScreeningConfig(notch=None), progress=False)


def _check_mne_copies(out: Path, rid: str, n_ch: int, sf: float, n_times: int, copy: str):
    """The annotated copy and ``-annot.fif`` reopen with MNE, match the source's channel count, rate
    and length, and carry exactly the results.json intervals, which lie on the burst. Returns the
    reopened copy (an MNE Raw)."""
    import mne

    rec = next(r for r in json.loads((out / "results.json").read_text())["recordings"] if r["record_id"] == rid)
    assert rec["decision"] == "abnormal", rec
    name = f"{rid}_screened_raw.fif" if copy == "fif" else f"{rid}_screened.edf"
    assert {f"{rid}-annot.fif", name} <= set(rec["outputs"]) and not any("(" in o for o in rec["outputs"]), rec
    ivs = rec["intervals"]
    assert all(BURST[0] - 2.0 <= iv["start_s"] and iv["end_s"] <= BURST[1] + 2.0 for iv in ivs), ivs
    raw = mne.io.read_raw(out / name, preload=True, verbose="error")
    assert (len(raw.ch_names), raw.info["sfreq"], raw.n_times) == (n_ch, sf, n_times)
    for ann in (mne.read_annotations(out / f"{rid}-annot.fif"), raw.annotations):
        ours = ann[ann.description == "medad_abnormal"]
        assert len(ours) == len(ivs)
        np.testing.assert_allclose(ours.onset, [iv["start_s"] for iv in ivs], atol=2e-3)
        np.testing.assert_allclose(ours.duration, [iv["end_s"] - iv["start_s"] for iv in ivs], atol=2e-3)
    assert mne.read_annotations(out / f"{rid}-annot.fif").orig_time is None  # text/WAV: no measurement date
    return raw


def test_text_recordings_get_mne_annotations_and_annotated_copies(tmp_path):
    """Plain text (EEG in microvolts, no rate of its own): -annot.fif and an annotated FIF/EDF+
    copy in volts, typed eeg, written by `medad screen run --annotated-copy`."""
    from typer.testing import CliRunner

    from medad.cli import app

    sf = 100
    for folder, n, burst in (("n", 4, None), ("t", 2, BURST)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            np.savetxt(tmp_path / folder / f"{folder}{i}.txt", 30 * _burst_signal(20, 1, sf, i + 10 * (n == 2), burst)[0],
                       fmt="%.4f")
    r = CliRunner().invoke(app, ["screen", "train", str(tmp_path / "n"), "--text-sfreq", str(sf),
                                 "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    src = np.loadtxt(tmp_path / "t" / "t0.txt")
    for copy in ("fif", "edf"):
        out = tmp_path / f"o_{copy}"
        r = CliRunner().invoke(app, ["screen", "run", str(tmp_path / "m"), str(tmp_path / "t"), "--out", str(out),
                                     "--annotated-copy", copy, "--no-plots"])
        assert r.exit_code == 0, r.output
        raw = _check_mne_copies(out, "t0", 1, sf, len(src), copy)
        if copy == "fif":  # microvolts assumed -> volts; EDF keeps channel names but not types
            assert raw.get_channel_types() == ["eeg"] and raw.ch_names == ["t0"]
        tol = 1e-6 if copy == "fif" else np.ptp(src) / 2**15  # float32 / 16-bit EDF
        np.testing.assert_allclose(raw.get_data()[0] * 1e6, src, atol=tol * 1.01 + 1e-4)


def test_wav_recordings_get_mne_annotations_and_annotated_copies(tmp_path):
    """Two-channel WAV: no physical unit, so the copy keeps full-scale fractions, typed misc."""
    from scipy.io import wavfile

    sf = 100
    model = _wav_model_and_test(tmp_path, 2, BURST, sf)
    _, pcm = wavfile.read(tmp_path / "t" / "t0.wav")
    for copy in ("fif", "edf"):
        out = tmp_path / f"o_{copy}"
        screen_folder(model, tmp_path / "t", out, annotated_copy=copy, plots=False, progress=False)
        raw = _check_mne_copies(out, "t0", 2, sf, len(pcm), copy)
        assert raw.ch_names == ["audio0", "audio1"]
        if copy == "fif":
            assert raw.get_channel_types() == ["misc", "misc"]
        tol = 1e-6 if copy == "fif" else 2 * np.ptp(pcm / 32768) / 2**16
        np.testing.assert_allclose(raw.get_data(), pcm.T / 32768, atol=tol)


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_wfdb_copy_is_in_volts_with_ecg_type_and_base_date(tmp_path, monkeypatch):
    """WFDB: mV channels -> volts (an ECG lead typed ecg), other units kept as misc; the header's
    base date is the measurement date the annotations refer to."""
    import datetime as dt

    import mne

    from medad.io.signals import _wfdb, describe, read_header
    from pipelines.screening import write_mne_outputs

    x = np.c_[np.sin(np.arange(1000) / 20), 100 + np.cos(np.arange(1000) / 30)]
    _wfdb().wrsamp("r", fs=100, units=["mV", "mmHg"], sig_name=["MLII", "ABP"], p_signal=x, fmt=["16", "16"],
                   base_date=dt.date(2020, 1, 2), base_time=dt.time(3, 4, 5), write_dir=str(tmp_path))
    ivs = [{"start_s": 2.0, "end_s": 4.5, "max_score": 3.0, "probability": 0.99}]
    hdr = read_header(tmp_path / "r.hea")
    when = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert hdr.meta["units"] == ["mV", "mmHg"] and hdr.meas_date == when
    assert "2020" not in json.dumps(describe(tmp_path / "r.hea"))  # a date of care is not shown
    parsed = []  # the copy reuses the header the reader parsed: the .hea is not parsed again
    monkeypatch.setattr(_wfdb(), "rdheader", lambda *a, **k: parsed.append(a) or pytest.fail("header re-read"))
    ann_f, copy_f = write_mne_outputs(tmp_path / "r.hea", ivs, tmp_path, "r", annotated_copy="fif", header=hdr)
    assert not parsed
    raw = mne.io.read_raw(copy_f, preload=True, verbose="error")
    assert raw.get_channel_types() == ["ecg", "misc"] and raw.info["sfreq"] == 100 and raw.n_times == 1000
    np.testing.assert_allclose(raw.get_data()[0], x[:, 0] * 1e-3, atol=1e-6)
    np.testing.assert_allclose(raw.get_data()[1], x[:, 1], rtol=1e-3)
    ann = mne.read_annotations(ann_f)
    assert raw.info["meas_date"] == when and ann.orig_time == when
    assert ann.onset[0] == pytest.approx(2.0) and ann.duration[0] == pytest.approx(2.5)


def test_edf_copy_of_a_non_integer_rate_recording_is_padded_to_whole_records(tmp_path):
    """Bonn-like text (173.61 Hz, 4097 samples): EDF+ needs whole data records, so the copy is
    padded with edge values and the padding marked BAD_ACQ_SKIP; the samples themselves are kept."""
    import mne

    from pipelines.screening import write_mne_outputs

    x = 100 * np.sin(np.arange(4097) / 7.0)
    np.savetxt(tmp_path / "Z001.txt", x, fmt="%.4f")
    ivs = [{"start_s": 5.0, "end_s": 9.0, "max_score": 3.0, "probability": 0.99}]
    _, f = write_mne_outputs(tmp_path / "Z001.txt", ivs, tmp_path, "Z001", annotated_copy="edf", sfreq=173.61)
    raw = mne.io.read_raw(f, preload=True, verbose="error")
    assert raw.info["sfreq"] == pytest.approx(173.61, abs=1e-3) and raw.n_times % 173 == 0 and raw.n_times >= 4097
    np.testing.assert_allclose(raw.get_data()[0, :4097] * 1e6, x, atol=np.ptp(x) / 2**15)
    d = dict(zip(raw.annotations.description, zip(raw.annotations.onset, raw.annotations.duration)))
    assert d["medad_abnormal"] == pytest.approx((5.0, 4.0), abs=2e-3)
    assert d["BAD_ACQ_SKIP"][0] == pytest.approx(4097 / 173.61, abs=0.01)


# ---------------------------------------------------------------- short recordings: the amplitude scale
CENTRAL_BURST = (7.0, 13.0)  # 6 s in the middle of a 20 s recording


def test_short_recording_scale_ignores_a_central_burst(tmp_path):
    """A 20 s recording's scale comes from every window of it (filter edges included), so a 6 s
    burst in its middle -- all of the middle 8 s that dropping 6 s filter edges would leave --
    does not move it (was: scale x6 from the burst)."""
    sf = 100
    clean = _burst_signal(20, 1, sf, 3, None)
    burst = _burst_signal(20, 1, sf, 3, CENTRAL_BURST)
    pre = Preprocessor(ScreeningConfig(notch=None), sf, None)
    assert pre.pad == 6.0  # the case that went wrong: 2 x 6 s of edges leave the middle 8 s
    scales = []
    for name, x in (("clean", clean), ("burst", burst)):
        _write_wav(tmp_path / f"{name}.wav", x, sf)
        hdr = pre.header(tmp_path / f"{name}.wav")
        scales.append(pre.scale(tmp_path / f"{name}.wav", hdr, [0])[1].ravel())
    np.testing.assert_allclose(scales[1], scales[0], rtol=0.25)


def test_short_recording_with_a_central_burst_is_flagged_only_there(tmp_path):
    """End to end: a model trained on clean 20 s recordings flags the burst of a 20 s recording,
    not the whole recording (an inflated scale made its quiet parts look abnormal)."""
    model = _wav_model_and_test(tmp_path, 1, CENTRAL_BURST)
    rec = screen_folder(model, tmp_path / "t", tmp_path / "o", plots=False, progress=False)["recordings"][0]
    assert rec["decision"] == "abnormal", rec
    assert all(CENTRAL_BURST[0] - 2.0 <= iv["start_s"] and iv["end_s"] <= CENTRAL_BURST[1] + 2.0
               for iv in rec["intervals"]), rec["intervals"]
    rows = list(csv.DictReader(open(tmp_path / "o" / "t0_window_scores.csv")))
    far = [float(r["score"]) for r in rows if float(r["start_s"]) + 2.0 <= CENTRAL_BURST[0] - 1.0
           or float(r["start_s"]) >= CENTRAL_BURST[1] + 1.0]
    assert len(far) >= 6 and max(far) <= rec["threshold"], (far, rec["threshold"])
