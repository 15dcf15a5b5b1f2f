"""`medad screen train|run` on awkward inputs (from a user audit): recordings in linked
subfolders, EEG files carrying ECG / respiration / flat channels, recordings of different
montages, too few held-out calibration windows, bad numeric options, text files screened with
an EDF-trained model, and flat (silent) recordings. Small synthetic recordings only."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medad.errors import ConfigError, ReadError
from pipelines.screening import (
    ScreeningConfig, calibration_warning, list_recordings, non_eeg_kind, screen_folder, train_screening,
)

FS = 100.0
EEG_NAMES = ["EEG Fp1-Ref", "EEG C3-Ref", "EEG O1-Ref", "EEG Cz-Ref", "ECG EKG-Ref", "EEG Effort-Ref"]


def _cli(args: list) -> "object":
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _texts(folder: Path, n: int, seed: int, seconds: float = 20.0) -> Path:
    """``n`` single-channel text recordings: a 2 Hz rhythm in noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    for i in range(n):
        x = np.sin(2 * np.pi * 2 * t + rng.uniform(0, 6)) + 0.5 * rng.standard_normal(len(t))
        np.savetxt(folder / f"r{seed}_{i:02d}.txt", x, fmt="%.5f")
    return folder


def _fif(path: Path, seed: int, names=EEG_NAMES, seconds: float = 30.0, types="eeg") -> Path:
    """A FIF recording: EEG-like noise on every channel, the ECG larger, ``EEG Cz-Ref`` at 2 % of
    the others' level (the reference electrode itself); ``types``: MNE channel types."""
    import mne

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(names), int(seconds * FS))) * 20e-6
    for i, c in enumerate(names):
        x[i] *= {"EEG Cz-Ref": 0.02, "ECG EKG-Ref": 8.0}.get(c, 1.0)
    raw = mne.io.RawArray(x, mne.create_info(list(names), FS, types), verbose="error")
    raw.save(str(path), overwrite=True, verbose="error")
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text_model")
    cfg = ScreeningConfig(text_sfreq=FS, notch=None, chunk_seconds=20.0, window_fpr=0.05)
    return train_screening(_texts(root / "normal", 6, 0), root / "model", cfg, progress=False)


@pytest.fixture(scope="module")
def eeg_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eeg")
    for i in range(3):
        _fif(folder / f"sub-{i}_raw.fif", seed=i)
    return folder


# ---------------------------------------------------------------------------- 1. linked subfolders
def test_recordings_in_linked_subfolders_are_found(tmp_path, text_model):
    """A site folder linked into the screened folder is searched (it was not: "no recordings
    found"); a link back up does not make the walk loop or list a recording twice."""
    site = _texts(tmp_path / "elsewhere" / "site1", 2, 5)
    folder = tmp_path / "study"
    folder.mkdir()
    os.symlink(site, folder / "site1")
    os.symlink(folder, folder / "site1_loop")  # a link to an ancestor
    found = list_recordings(folder)
    assert [p.name for p in found] == ["r5_00.txt", "r5_01.txt"]
    assert all(p.parent == folder / "site1" for p in found)
    r = _cli(["screen", "run", text_model, folder, "--out", tmp_path / "out", "--no-plots"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)


# ---------------------------------------------------------------------------- 2. channels
@pytest.mark.parametrize("name,kind", [
    ("ECG EKG-Ref", "ECG"), ("EKG", "ECG"), ("II", "ECG"), ("EMG chin", "EMG"), ("Chin", "EMG"),
    ("EOG LOC-A2", "EOG"), ("ROC", "EOG"), ("Resp Thorax", "respiration"), ("EEG Effort-Ref", "respiration"),
    ("Airflow", "respiration"), ("SpO2", "SpO2 / pulse"), ("Pulse", "SpO2 / pulse"),
    ("STI 014", "trigger / event"), ("STI014", "trigger / event"), ("Status", "trigger / event"),
    ("Event", "trigger / event"), ("EDF Annotations", "trigger / event"), ("Trigger", "trigger / event"),
    ("EEG Fp1-Ref", None), ("EEG Cz-Ref", None), ("F7-T3", None), ("T3-T5", None), ("Fpz", None),
    ("A1", None), ("POz", None), ("TP9", None), ("EEG O2-LE", None),
])
def test_non_eeg_channel_names(name, kind):
    assert non_eeg_kind(name) == kind


def test_eeg_channel_types_drop_non_eeg_and_flat_channels(eeg_folder, tmp_path, capsys):
    """channel_types: eeg (configs/screening_eeg.yaml) keeps the EEG channels only and says at
    training which were dropped and why; channel_types: all keeps every channel (as before)."""
    cfg = ScreeningConfig(channel_types="eeg", notch=None, chunk_seconds=20.0, window_fpr=0.05)
    train_screening(eeg_folder, tmp_path / "m", cfg)
    said = capsys.readouterr().out
    info = json.loads((tmp_path / "m" / "screening.json").read_text())
    assert info["channels"] == ["EEG Fp1-Ref", "EEG C3-Ref", "EEG O1-Ref"]
    why = {d["channel"]: d["reason"] for d in info["dropped_channels"]}
    assert why["ECG EKG-Ref"].startswith("ECG") and why["EEG Effort-Ref"].startswith("respiration")
    assert why["EEG Cz-Ref"].startswith("flat")
    assert "dropped 3" in said and all(c in said for c in why)
    cfg = ScreeningConfig(channel_types="all", notch=None, chunk_seconds=20.0, window_fpr=0.05)
    train_screening(eeg_folder, tmp_path / "all", cfg, progress=False)
    assert json.loads((tmp_path / "all" / "screening.json").read_text())["channels"] == EEG_NAMES
    # the shipped EEG config asks for it
    assert ScreeningConfig.from_yaml(Path(__file__).parents[1] / "configs" / "screening_eeg.yaml").channel_types == "eeg"
    with pytest.raises(ConfigError, match="channel_types"):
        ScreeningConfig(channel_types="EEG only").validate()


def test_eeg_channel_types_use_the_types_a_fif_file_stores(tmp_path):
    """A FIF channel typed ECG or stim is dropped whatever its name; "misc" is judged by its name."""
    names = ["EEG C3-Ref", "EEG O1-Ref", "EEG P3-Ref", "BIO001", "STI 014", "Resp"]
    types = ["eeg", "eeg", "eeg", "ecg", "stim", "misc"]
    folder = tmp_path / "typed"
    folder.mkdir()
    for i in range(2):
        _fif(folder / f"s{i}_raw.fif", i, names=names, types=types)
    cfg = ScreeningConfig(channel_types="eeg", notch=None, chunk_seconds=20.0, window_fpr=0.05)
    train_screening(folder, tmp_path / "m", cfg, progress=False)
    info = json.loads((tmp_path / "m" / "screening.json").read_text())
    assert info["channels"] == names[:3]
    why = {d["channel"]: d["reason"] for d in info["dropped_channels"]}
    assert why["BIO001"].startswith("type 'ecg'") and why["STI 014"].startswith("type 'stim'")
    assert why["Resp"] == "respiration by its name"


def test_no_shared_channel_names_the_files_and_cli_channels(tmp_path, eeg_folder):
    """Recordings of different montages: the error names each file and its channel count and
    points to --channels; `screen train --channels` picks channels without editing YAML."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _fif(mixed / "bipolar_raw.fif", 0, names=["F7-C3", "C3-T5"])
    _fif(mixed / "referential_raw.fif", 1, names=["EEG Fp1-Ref", "EEG C3-Ref", "EEG O1-Ref"])
    with pytest.raises(ConfigError) as e:
        train_screening(mixed, tmp_path / "m", ScreeningConfig(notch=None, chunk_seconds=20.0), progress=False)
    msg = str(e.value)
    assert "bipolar_raw.fif: 2 channel(s)" in msg and "referential_raw.fif: 3 channel(s)" in msg
    assert "--channels" in msg
    r = _cli(["screen", "train", eeg_folder, "--channels", "EEG C3-Ref, EEG O1-Ref", "--window-fpr", "0.05",
              "--out", tmp_path / "picked"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "picked" / "screening.json").read_text())["channels"] == ["EEG C3-Ref",
                                                                                           "EEG O1-Ref"]
    r = _cli(["screen", "train", eeg_folder, "--channels", " , ", "--out", tmp_path / "none"])
    assert r.exit_code == 2 and "--channels" in r.output and not (tmp_path / "none").exists()


def test_channels_named_loosely_are_suggested_or_matched(tmp_path, eeg_folder):
    """`--channels "Fp1, C3"` on recordings whose channels are 'EEG Fp1-Ref'...: refused before
    training, saying what each name probably is, the full channel list and the --channels value
    spelled as the recordings do (not the screening-time 'another montage' advice). A name equal
    but for case is taken, spelled as the recording does."""
    r = _cli(["screen", "train", eeg_folder, "--channels", "Fp1, c3", "--out", tmp_path / "m"])
    assert isinstance(r.exception, ConfigError), r.output
    msg = str(r.exception)
    assert "channels 'Fp1' (did you mean 'EEG Fp1-Ref'?), 'c3' (did you mean 'EEG C3-Ref'?) not found in" in msg
    assert "sub-0_raw.fif" in msg and "6 channel(s): " + ", ".join(EEG_NAMES) in msg
    assert "--channels 'EEG Fp1-Ref,EEG C3-Ref'" in msg and "another montage" not in msg
    assert not (tmp_path / "m").exists()
    r = _cli(["screen", "train", eeg_folder, "--channels", "eeg c3-ref, EEG O1-REF", "--window-fpr", "0.05",
              "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "screening.json").read_text())["channels"] == ["EEG C3-Ref", "EEG O1-Ref"]


def test_channel_suggestions():
    from pipelines.screening import channel_suggestions, find_channel

    names = ["EEG Fp1-Ref", "EEG Fp2-Ref", "EEG C3-Ref", "EEG C4-Ref", "fp1", "FP1"]
    assert find_channel("Fp1", names) is None  # 'fp1' and 'FP1': which one is ambiguous
    assert channel_suggestions("Fp1", names) == ["fp1", "FP1"]
    assert find_channel("eeg c4-ref", names) == 3 and find_channel("EEG C4-Ref", names) == 3
    assert channel_suggestions("C3", names) == ["EEG C3-Ref"]  # a whole token of one channel only
    assert set(channel_suggestions("EEG C5-Ref", names)[:2]) == {"EEG C3-Ref", "EEG C4-Ref"}  # close spellings
    assert channel_suggestions("Ref", names[:2]) == []  # a token of two channels: neither is suggested
    assert channel_suggestions("ECG", names) == []


# ---------------------------------------------------------------------------- 3. calibration
def test_calibration_warning_says_what_to_do():
    w = calibration_warning(6, ["a.edf"], 0.05, 0.2)
    assert "cannot resolve window_fpr=0.05" in w and "one held-out recording (a.edf)" in w
    assert "add normal recordings" in w and "flagged abnormal" in w
    w = calibration_warning(150, ["a", "b", "c"], 0.01, 0.2)  # resolvable, but under 2 / fpr = 200
    assert "only 150" in w and "200" in w and "one held-out" not in w
    assert calibration_warning(5000, ["a", "b"], 0.01, 0.2) is None
    assert "only training recording (x.txt)" in calibration_warning(400, ["x.txt"], 0.01, 0.2, single=True)


def test_single_recording_training_says_what_it_calibrates_on(tmp_path, capsys):
    """One normal recording: no "calibrating on 0"; what calibration uses instead, and a warning
    line saying what to do (kept in screening.json)."""
    normal = _texts(tmp_path / "one", 1, 3, seconds=60.0)
    train_screening(normal, tmp_path / "m", ScreeningConfig(text_sfreq=FS, notch=None, chunk_seconds=20.0,
                                                            window_fpr=0.05))
    said = capsys.readouterr().out
    assert "calibrating on 0" not in said and "its last 20% of windows" in said
    warn = next(line for line in said.splitlines() if line.startswith("warning:"))
    assert "only training recording" in warn and "add normal recordings" in warn
    cal = json.loads((tmp_path / "m" / "screening.json").read_text())["calibration"]
    assert cal["warning"] == warn[len("warning: "):] and "last" in cal["source"]


# ---------------------------------------------------------------------------- 4. numeric options
@pytest.mark.parametrize("option,value", [("--window-fpr", "0"), ("--window-fpr", "1"), ("--window-fpr", "-0.1"),
                                          ("--sfreq", "0"), ("--text-sfreq", "-5")])
def test_bad_numeric_option_is_refused_before_any_reading(tmp_path, option, value):
    """--window-fpr 0 used to end in ZeroDivisionError after fitting: now a usage error naming
    the option, before the (here absent) folder is even looked at."""
    r = _cli(["screen", "train", tmp_path / "absent", option, value, "--out", tmp_path / "m"])
    assert r.exit_code == 2 and option in r.output and "not found" not in r.output
    assert not (tmp_path / "m").exists()


def test_bad_numbers_in_config_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="window_fpr must be between 0 and 1"):
        train_screening(tmp_path / "absent", tmp_path / "m", ScreeningConfig(window_fpr=0.0))
    for key, value in [("min_windows", 0), ("val_fraction", 1.0), ("workers", 0), ("text_sfreq", 0)]:
        with pytest.raises(ConfigError, match=key):
            ScreeningConfig(**{key: value}).validate()
    y = tmp_path / "s.yaml"
    y.write_text("screening:\n  window_fpr: 1.5\n")
    with pytest.raises(ConfigError) as e:
        ScreeningConfig.from_yaml(y)
    assert "window_fpr" in str(e.value) and "s.yaml" in str(e.value)


# ---------------------------------------------------------------------------- 5. text rate, flat recordings
def test_screen_run_text_sfreq_for_a_model_trained_without_one(tmp_path, eeg_folder):
    """A model trained on FIF/EDF has no text rate: screening a text file says to give one with
    --text-sfreq, and `screen run --text-sfreq` screens it."""
    r = _cli(["screen", "train", eeg_folder, "--channels", "EEG C3-Ref", "--window-fpr", "0.05",
              "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    texts = _texts(tmp_path / "texts", 1, 7)
    r = _cli(["screen", "run", tmp_path / "m", texts, "--out", tmp_path / "o1", "--no-plots"])
    assert isinstance(r.exception, ReadError) and "--text-sfreq" in str(r.exception)  # `medad`: exit code 2
    r = _cli(["screen", "run", tmp_path / "m", texts, "--out", tmp_path / "o2", "--no-plots", "--text-sfreq", "100"])
    assert r.exit_code == 0, r.output
    assert [row["status"] for row in csv.DictReader(open(tmp_path / "o2" / "results.csv"))] == ["ok"]
    r = _cli(["screen", "run", tmp_path / "m", texts, "--out", tmp_path / "o3", "--text-sfreq", "0"])
    assert r.exit_code == 2 and "--text-sfreq" in r.output and not (tmp_path / "o3").exists()
    assert "warning" not in r.output  # a model trained without a text rate has none to differ from


def test_screen_run_warns_when_text_sfreq_differs_from_training(tmp_path, text_model):
    """The model learnt 100 Hz text recordings; --text-sfreq 173.61 resamples them silently to
    another signal: a warning naming both rates (not a refusal); within 1 % no warning."""
    texts = _texts(tmp_path / "texts", 1, 8)
    r = _cli(["screen", "run", text_model, texts, "--out", tmp_path / "o", "--no-plots", "--text-sfreq", "173.61"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("warning:"))
    assert "--text-sfreq 173.61 Hz" in line and "(text_sfreq 100 Hz)" in line
    assert json.loads((tmp_path / "o" / "results.json").read_text())["warnings"] == [line[len("warning: "):]]
    r = _cli(["screen", "run", text_model, texts, "--out", tmp_path / "o2", "--no-plots", "--text-sfreq", "100.5"])
    assert r.exit_code == 0 and "warning:" not in r.output, r.output
    assert "warnings" not in json.loads((tmp_path / "o2" / "results.json").read_text())


def test_flat_recording_is_an_error_row_not_abnormal(tmp_path, text_model, capsys):
    """A silent WAV and a constant text file are reported as errors naming the file, not scored
    (a flat recording's windows are all zero, which scored as very abnormal); the others run."""
    from scipy.io import wavfile

    folder = _texts(tmp_path / "mixed", 1, 9)
    wavfile.write(folder / "silent.wav", int(FS), np.zeros(int(20 * FS), np.int16))
    np.savetxt(folder / "constant.txt", np.full(int(20 * FS), 3.25), fmt="%.2f")
    summary = screen_folder(text_model, folder, tmp_path / "out", plots=False)
    said = capsys.readouterr()
    rows = {Path(r["file"]).name: r for r in summary["recordings"]}
    for name in ("silent.wav", "constant.txt"):
        assert rows[name]["status"] == "error" and rows[name]["error"] == "flat signal (all samples equal)"
        assert f"{name}: flat signal (all samples equal)" in said.out + said.err
    assert rows["r9_00.txt"]["status"] == "ok"
    # in training, a flat normal recording is skipped and named, not learnt
    normal = _texts(tmp_path / "normal", 3, 11)
    np.savetxt(normal / "zeros.txt", np.zeros(int(20 * FS)), fmt="%.1f")
    train_screening(normal, tmp_path / "m", ScreeningConfig(text_sfreq=FS, notch=None, chunk_seconds=20.0,
                                                            window_fpr=0.05, val_fraction=0.34), progress=False)
    skipped = json.loads((tmp_path / "m" / "screening.json").read_text())["skipped"]
    assert [(Path(s["file"]).name, s["error"]) for s in skipped] == [("zeros.txt", "flat signal (all samples equal)")]
