"""Screening audit 11 (``medad screen train/run``): each test fails on the code before its fix.

1. A single-channel model screened channel 0 of ANY recording without saying so (a model of
   plain-text EEG screened Fp1 of a 5-channel EDF; an ECG beat model found "beats" in heart
   sounds); results did not say which channel was screened.
2. A plain-text file with several columns was flattened into one interleaved channel.
3. A truncated WAV gave scipy's "mmap length is greater than file size".
4. / 5. README: the caveats of ``normalize: recording`` and of the EDF+ copies; the ECG recipe
   never named ``train_exclude_beats``, and training on PVC-laden "normal" records said nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_pipeline_screening import ECG_FS, FS, _ecg, _eeg, _write_ecg, _write_edf

from medad.errors import ConfigError, ReadError
from pipelines.screening import (
    ScreeningConfig, ScreeningModel, beat_outlier_check, match_channels, outlier_beats, screen_folder,
    train_screening,
)

ROOT = Path(__file__).resolve().parents[1]
EDF_NAMES = ["Fp1", "Fp2", "C3", "C4", "ECG"]


def _hdr(names, fmt="mne", path="x.edf"):
    return SimpleNamespace(ch_names=list(names), format=fmt, path=Path(path))


def _cli(args):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------- 1. channels
def test_match_channels_rules():
    edf = _hdr(EDF_NAMES)
    # by name (case aside): no warning
    assert match_channels(["c3"], edf) == ([2], None)
    # the model's channel missing from a named recording: refused, saying how to choose
    with pytest.raises(ReadError, match=r"trained on channel 'Cz'.*--channels NAME") as e:
        match_channels(["Cz"], edf)
    assert "Fp1, Fp2, C3, C4, ECG" in e.value.problem and e.value.path == Path("x.edf")
    # a model of an unnamed channel (trained on plain text) and 5 named channels: which one is unknown
    with pytest.raises(ReadError, match=r"no name .*which of this recording's channels.*--channels NAME"):
        match_channels(["Z001"], edf, by_position=True)
    # ... a single named channel: the only choice, screened with a warning
    idx, note = match_channels(["Z001"], _hdr(["EEG"]), by_position=True)
    assert idx == [0] and "no name" in note and "'EEG'" in note
    # plain text has no names: same count -> by position, a warning unless the model too was unnamed
    txt = _hdr(["S001"], "text", "S001.txt")
    assert match_channels(["Z001"], txt, by_position=True) == ([0], None)
    idx, note = match_channels(["Fp1"], txt)
    assert idx == [0] and "plain text has no channel names" in note and "Fp1" in note
    with pytest.raises(ReadError, match=r"2 column\(s\).*--channels col1"):
        match_channels(["Fp1"], _hdr(["col1", "col2"], "text", "t.txt"))
    # channels chosen in the model's place (--channels): by name; a missing one says what it may be
    assert match_channels(["Z001"], edf, by_position=True, chosen=["fp2"]) == ([1], None)
    with pytest.raises(ReadError, match=r"chosen with --channels not found: 'Fp1' \(did you mean 'EEG Fp1-Ref'\?\)"):
        match_channels(["Z001"], _hdr(["EEG Fp1-Ref", "EEG C3-Ref"]), by_position=True, chosen=["Fp1"])
    # beat mode: another lead named like an ECG lead, with a warning; no ECG-like lead: refused
    idx, note = match_channels(["MLII"], _hdr(["V5", "V2"], "wfdb"), beats=True)
    assert idx == [0] and "'MLII' is missing" in note and "'V5'" in note
    with pytest.raises(ReadError, match=r"ECG lead 'MLII' is missing .*audio.*not screened"):
        match_channels(["MLII"], _hdr(["audio"], "wav", "h.wav"), beats=True)
    # several channels: every one by name, else refused with what is missing
    assert match_channels(["C4", "Fp1"], edf) == ([3, 0], None)
    with pytest.raises(ReadError, match=r"lacks channels the model needs \(1 of 2\): O1"):
        match_channels(["C4", "O1"], edf)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A model trained on single-column plain-text EEG (as on Bonn: the channel has no name), and
    a folder holding a text recording, a 5-channel EDF whose Fp1 holds spikes and a 1-channel EDF."""
    root = tmp_path_factory.mktemp("audit11")
    normals, test = root / "normals", root / "test"
    normals.mkdir()
    test.mkdir()
    for i in range(5):
        np.savetxt(normals / f"Z{i:03d}.txt", _eeg(30, 1, seed=i)[0] * 1e6, fmt="%.3f")
    np.savetxt(test / "Z100.txt", _eeg(30, 1, seed=100)[0] * 1e6, fmt="%.3f")
    x = _eeg(30, 5, seed=101)
    x[0] = _eeg(30, 1, seed=102, spikes=(10.0, 20.0))[0]  # seizure-like spikes on Fp1 only
    x[1:] = _eeg(30, 4, seed=103)
    _write_edf(test / "multi.edf", x, names=EDF_NAMES)
    _write_edf(test / "single.edf", _eeg(30, 1, seed=104), names=["EEG"])
    cfg = ScreeningConfig(bandpass=[0.5, 40.0], notch=None, text_sfreq=FS, window_fpr=0.02, val_fraction=0.4,
                          detector_params={"amplitude": True})
    model = train_screening(normals, root / "model", cfg, progress=False)
    return root, model, test


def test_text_trained_model_refuses_an_unchosen_channel_and_screens_a_chosen_one(text_model):
    root, model, test = text_model
    info = json.loads((model / "screening.json").read_text())
    assert info["channel_match"] == "position" and ScreeningModel.load(model).by_position
    s = screen_folder(model, test, root / "o", progress=False, plots=False)
    rows = {r["record_id"]: r for r in s["recordings"]}
    assert rows["multi"]["status"] == "error" and "--channels" in rows["multi"]["error"]
    assert "Fp1, Fp2, C3, C4, ECG" in rows["multi"]["error"]
    assert rows["Z100"]["status"] == "ok" and rows["Z100"]["channels"] == ["Z100"] and rows["Z100"]["warning"] is None
    assert rows["single"]["status"] == "ok" and rows["single"]["channels"] == ["EEG"]
    assert "no name" in rows["single"]["warning"]
    assert s["model_channels"] == ["Z000"] and s["channel_match"] == "position" and s["n_channel_warnings"] == 1
    table = {r["record_id"]: r for r in csv.DictReader(open(root / "o" / "results.csv"))}
    assert table["Z100"]["channels"] == "Z100" and table["multi"]["channels"] == ""
    assert "no name" in table["single"]["warning"]
    # the clinician names the channel: Fp1 is screened (and its spikes found), the text file as before
    s = screen_folder(model, test, root / "o2", progress=False, plots=False, channels=["Fp1"])
    rows = {r["record_id"]: r for r in s["recordings"]}
    assert rows["multi"]["status"] == "ok" and rows["multi"]["channels"] == ["Fp1"]
    assert rows["multi"]["warning"] is None and rows["multi"]["decision"] == "abnormal"
    assert rows["Z100"]["status"] == "ok" and rows["Z100"]["warning"] is None
    assert rows["single"]["status"] == "error" and "'Fp1'" in rows["single"]["error"]
    assert s["channels_chosen"] == ["Fp1"]
    # as many channels as the model has, checked before any recording is read
    with pytest.raises(ConfigError, match=r"takes 1 channel\(s\).*--channels names 2"):
        screen_folder(model, test, root / "o3", progress=False, channels=["Fp1", "Fp2"])
    assert not (root / "o3").exists()


def test_cli_screen_run_channels(text_model, tmp_path):
    root, model, test = text_model
    r = _cli(["screen", "run", model, test / "multi.edf", "--out", tmp_path / "o", "--channels", "C3",
              "--no-overlays"])
    assert r.exit_code == 0, r.output
    row = next(csv.DictReader(open(tmp_path / "o" / "results.csv")))
    assert row["status"] == "ok" and row["channels"] == "C3"
    r = _cli(["screen", "run", model, test / "multi.edf", "--out", tmp_path / "o2"])
    assert isinstance(r.exception, ReadError) and "--channels" in str(r.exception)


def test_old_text_model_without_channel_match_is_read_as_unnamed(text_model, tmp_path):
    """A model saved before ``channel_match`` was recorded: a channel named after one of its
    training recordings is a plain-text one (unnamed)."""
    import shutil

    root, model, _ = text_model
    old = tmp_path / "old"
    shutil.copytree(model, old)
    info = json.loads((old / "screening.json").read_text())
    del info["channel_match"]
    (old / "screening.json").write_text(json.dumps(info))
    assert ScreeningModel.load(old).by_position
    info["channels"] = ["EEG C3"]
    (old / "screening.json").write_text(json.dumps(info))
    assert not ScreeningModel.load(old).by_position


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_ecg_beat_model_refuses_heart_sounds(tmp_path):
    """An ECG beat model (lead MLII) on heart-sound WAVs found 'beats' in the audio and flagged
    them; now each WAV is skipped with the reason, and the channel screened is in results."""
    from scipy.io import wavfile

    normals, test = tmp_path / "n", tmp_path / "t"
    normals.mkdir()
    test.mkdir()
    for i in range(3):
        _write_ecg(normals, f"n{i}", _ecg(40, seed=i)[0])
    _write_ecg(test, "e", _ecg(40, seed=9)[0])
    rng = np.random.default_rng(0)
    wavfile.write(test / "heart.wav", 2000, (rng.normal(0, 0.1, 2000 * 20) * 32767).astype(np.int16))
    cfg = ScreeningConfig.from_yaml(ROOT / "configs" / "screening_ecg_beats.yaml")
    cfg.chunk_seconds = 20.0
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    s = screen_folder(model, test, tmp_path / "o", progress=False, plots=False)
    rows = {r["record_id"]: r for r in s["recordings"]}
    assert rows["e"]["status"] == "ok" and rows["e"]["channels"] == ["MLII"]
    assert rows["heart"]["status"] == "error" and "'MLII' is missing" in rows["heart"]["error"]


# ---------------------------------------------------------------------------- 2. text columns
def test_text_table_is_read_one_channel_a_column(tmp_path):
    from medad.io.signals import describe, iter_signal_chunks, read_header, read_signal

    a, b = np.arange(100.0), -np.arange(100.0) - 1000
    f = tmp_path / "twocol.txt"
    np.savetxt(f, np.stack([a, b], 1), fmt="%.1f")
    d = describe(f, sfreq=100)
    assert d["n_channels"] == 2 and d["n_times"] == 100 and d["channels"] == ["col1", "col2"]
    rec = read_signal(f, sfreq=100)
    np.testing.assert_array_equal(rec.data, np.stack([a, b]))
    hdr = read_header(f, sfreq=100)
    (_, x), = iter_signal_chunks(f, 10.0, header=hdr, picks=["col2"])
    np.testing.assert_array_equal(x[0], b)
    # comma-separated the same
    f2 = tmp_path / "twocol_comma.txt"
    np.savetxt(f2, np.stack([a, b], 1), fmt="%.1f", delimiter=",")
    np.testing.assert_array_equal(read_signal(f2, sfreq=100).data, np.stack([a, b]))


def test_wrapped_signal_still_reads_as_one_channel_and_ambiguity_is_a_choice(tmp_path):
    from medad.io.signals import read_signal

    x = np.arange(23.0)
    f = tmp_path / "wrapped.txt"  # Wang-Chung style: 5 values a line, the last line shorter
    f.write_text("\n".join(" ".join(f"{v:g}" for v in x[i:i + 5]) for i in range(0, 23, 5)) + "\n")
    rec = read_signal(f, sfreq=10)
    assert rec.data.shape == (1, 23) and rec.meta["layout"] == "wrapped"
    np.testing.assert_array_equal(rec.data[0], x)
    with pytest.raises(ReadError, match=r"not a table \(text_layout: columns\)"):
        read_signal(f, sfreq=10, text_layout="columns")
    # every line full: a table by default; text_layout='wrapped' reads it as one signal
    full = tmp_path / "full.txt"
    full.write_text("\n".join(" ".join(f"{v:g}" for v in x[i:i + 4]) for i in range(0, 20, 4)) + "\n")
    assert read_signal(full, sfreq=10).data.shape == (4, 5)
    np.testing.assert_array_equal(read_signal(full, sfreq=10, text_layout="wrapped").data[0], x[:20])
    # one line: one signal
    one = tmp_path / "one.txt"
    one.write_text(" ".join(f"{v:g}" for v in x) + "\n")
    assert read_signal(one, sfreq=10).data.shape == (1, 23)
    # as many values a line as lines, or lines of different lengths: say how to choose, naming the file
    square = tmp_path / "square.txt"
    square.write_text("1 2 3\n4 5 6\n7 8 9\n")
    with pytest.raises(ReadError, match=r"ambiguous.*Say which: --text-layout columns\|wrapped") as e:
        read_signal(square, sfreq=10)
    assert e.value.path == square
    assert read_signal(square, sfreq=10, text_layout="columns").data.shape == (3, 3)
    r = _cli(["inspect", square, "--text-sfreq", "10", "--text-layout", "columns", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["n_channels"] == 3
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2 3\n4 5\n6 7 8\n9 10 11\n")
    with pytest.raises(ReadError, match=r"line 1 holds 3 values, line 2 2.*--text-layout wrapped"):
        read_signal(ragged, sfreq=10)
    assert read_signal(ragged, sfreq=10, text_layout="wrapped").data.shape == (1, 11)
    with pytest.raises(ConfigError, match="text_layout must be one of"):
        read_signal(ragged, sfreq=10, text_layout="rows")


def test_screening_reads_text_columns_and_takes_the_layout_option(text_model, tmp_path):
    """A single-channel text model does not screen one column of a two-column file unasked; the
    layout is a config key and a CLI option."""
    root, model, _ = text_model
    f = tmp_path / "twocol.txt"
    np.savetxt(f, np.stack([_eeg(30, 1, seed=200)[0], _eeg(30, 1, seed=201)[0]], 1) * 1e6, fmt="%.3f")
    r = screen_folder(model, f, tmp_path / "o", progress=False, plots=False)["recordings"][0]
    assert r["status"] == "error" and "2 column(s)" in r["error"] and "--channels col1" in r["error"]
    r = screen_folder(model, f, tmp_path / "o2", progress=False, plots=False, channels=["col2"])["recordings"][0]
    assert r["status"] == "ok" and r["channels"] == ["col2"] and r["duration_s"] == pytest.approx(30.0)
    with pytest.raises(ConfigError, match="text_layout"):
        ScreeningConfig(text_layout="rows").validate()
    res = _cli(["screen", "run", model, f, "--out", tmp_path / "o3", "--text-layout", "rows"])
    assert res.exit_code == 2 and "--text-layout" in res.output
    res = _cli(["screen", "run", model, f, "--out", tmp_path / "o4", "--text-layout", "wrapped", "--no-overlays"])
    assert res.exit_code == 0, res.output  # read as one (interleaved) signal: what the user asked for
    row = next(csv.DictReader(open(tmp_path / "o4" / "results.csv")))
    assert row["status"] == "ok" and float(row["duration_s"]) == pytest.approx(60.0)


# ---------------------------------------------------------------------------- 3. truncated WAV
def test_truncated_wav_is_named_as_truncated(tmp_path):
    from scipy.io import wavfile

    from medad.io.signals import read_signal

    f = tmp_path / "whole.wav"
    wavfile.write(f, 1000, np.arange(1000, dtype=np.int16))
    data = f.read_bytes()
    for name, cut in (("half.wav", 1000), ("header_only.wav", 44)):
        g = tmp_path / name
        g.write_bytes(data[:cut])
        with pytest.raises(ReadError, match=r"WAV file is truncated \(incomplete\)") as e:
            read_signal(g)
        assert e.value.path == g and "mmap" not in e.value.problem
    assert read_signal(f).n_times == 1000


# ---------------------------------------------------------------------------- 5. beat outliers
def test_outlier_beats_counts_far_beats_only():
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, (400, 30)).astype(np.float32)
    assert outlier_beats(normal) == 0
    odd = normal.copy()
    odd[:60, :26] += 12.0  # 15 % beats far from the median beat (shape columns; the last 4 are RR)
    assert outlier_beats(odd) == 60
    check = beat_outlier_check([("a", 400, 0)], [("b", 400, 60)], 0.05, None)
    assert "train_exclude_beats" in check["warning"] and "b (15.0 %)" in check["warning"]
    assert "warning" not in beat_outlier_check([("a", 400, 2)], [("b", 400, 3)], 0.05, None)


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_beat_training_warns_about_abnormal_beats_in_normal_records(tmp_path, capsys):
    """Normal records holding many PVC-like beats: screen train warns and names the key; with
    the beats listed and train_exclude_beats set, no warning."""
    normals = tmp_path / "n"
    normals.mkdir()
    for i in range(3):
        x, peaks, odd = _ecg(60, seed=i, ectopic=tuple(range(3, 70, 6)))  # about 15 % ectopic beats
        _write_ecg(normals, f"n{i}", x)
        (normals / f"n{i}_pvc_beats.csv").write_text(",PVC\n" + "".join(f"{k},{p}\n" for k, p in
                                                                      enumerate(peaks[odd])))
    cfg = ScreeningConfig.from_yaml(ROOT / "configs" / "screening_ecg_beats.yaml")
    cfg.chunk_seconds = 20.0
    model = train_screening(normals, tmp_path / "m", cfg, progress=True)
    out = capsys.readouterr().out
    assert "warning:" in out and "train_exclude_beats" in out
    info = json.loads((model / "screening.json").read_text())
    assert info["outlier_beats"]["train"]["outliers"] > 0.1 * info["outlier_beats"]["train"]["beats"]
    cfg.train_exclude_beats = "{record}_pvc_beats.csv"
    model = train_screening(normals, tmp_path / "m2", cfg, progress=False)
    check = json.loads((model / "screening.json").read_text())["outlier_beats"]
    assert "warning" not in check and check["train"]["outliers"] <= 0.01 * check["train"]["beats"]


# ---------------------------------------------------------------------------- 4. / 5. README
def _screening_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### Screen recordings")
    return text[start:text.index("\n### ", start + 1)]


def test_readme_screening_section_states_the_caveats_and_the_ecg_key():
    sec = _screening_section()
    assert "train_exclude_beats" in sec  # the ECG recipe gives the figures it quotes only with it
    assert "normalize: recording" in sec and "BAD_ACQ_SKIP" in sec
    assert "--channels" in sec and "--text-layout" in sec
