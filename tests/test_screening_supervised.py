"""Supervised recording screening: `medad screen train NORMAL --abnormal ABNORMAL` with a
supervised window classifier (weak, recording-level labels), threshold from held-out normal
windows, validation on held-out recordings of both classes; `medad screen run` and `medad
explain` (Grad-CAM) on the model; clear errors for detector / mode combinations that cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FS = 100.0


def _cli(args: list):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _recordings(folder: Path, n: int, seed: int, spikes: bool = False) -> Path:
    """``n`` 20 s single-channel text recordings: alpha rhythm + noise; ``spikes``: a train of
    sharp transients every 0.5 s throughout (an abnormal recording: every window shows it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(20 * FS)) / FS
    xs = np.sin(2 * np.pi * 10 * t + rng.uniform(0, 6, (n, 1))) + 0.7 * rng.standard_normal((n, len(t)))
    if spikes:
        onsets = (rng.uniform(0.2, 0.5, (n, 1)) + np.arange(0, 19.5, 0.5)) * FS
        for row, k in zip(xs, onsets.astype(int)):
            row[k[:, None] + np.arange(4)] += np.array([4.0, -6.0, 3.0, -1.0])
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(xs):
        np.savetxt(folder / f"{folder.name}{i:02d}.txt", x, fmt="%.4f")
    return folder


CONFIG = """screening:
  detector: cnn1d
  detector_params: {channels: [4, 8], dilations: [1], normalize: none, epochs: 10, batch_size: 32, lr: 0.005}
  bandpass: [0.5, 40.0]
  notch: null
  window_seconds: 2.0
  step_seconds: 1.0
  chunk_seconds: 20.0
  window_fpr: 0.05
  min_windows: 2
  val_fraction: 0.34
  text_sfreq: 100
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    normal = _recordings(root / "normal", 6, 0)
    abnormal = _recordings(root / "abnormal", 4, 1, spikes=True)
    (root / "cfg.yaml").write_text(CONFIG)
    r = _cli(["screen", "train", normal, "--abnormal", abnormal, "--config", root / "cfg.yaml",
              "--out", root / "model"])
    assert r.exit_code == 0, r.output
    assert "validation on held-out recordings: window AUROC" in r.output
    return root, r.output


def test_model_records_supervised_training(trained):
    root, _ = trained
    info = json.loads((root / "model" / "screening.json").read_text())
    assert info["supervised"] is True and "weak" in info["labels"]
    tr, va = info["abnormal_train_recordings"], info["abnormal_val_recordings"]
    assert len(va) >= 1 and len(tr) + len(va) == 4 and not set(tr) & set(va)
    assert all(r.startswith("abnormal") for r in tr + va)
    assert all(r.startswith("normal") for r in info["train_recordings"] + info["val_recordings"])
    bal = info["class_balance"]
    assert bal["windows"]["normal"] == info["n_train_windows"] and bal["windows"]["abnormal"] > 0
    assert "class_weight='balanced'" in bal["handling"]
    # balanced weights: inverse class frequency, so the rarer class weighs more
    w = bal["loss_weights"]
    assert (w["abnormal"] > w["normal"]) == (bal["windows"]["abnormal"] < bal["windows"]["normal"])
    v = info["validation"]
    assert v["n_abnormal_recordings"] == len(va) and v["n_normal_recordings"] == len(info["val_recordings"])
    assert v["window_auroc"] > 0.8  # spike trains are easy to tell apart
    assert v["recording_sensitivity"] is not None and v["recording_specificity"] is not None
    # the normal side is measured on held-out normal recordings that did not set its threshold
    assert "cross-calibration" in v["specificity_method"] and "specificity not estimated" not in root_output(trained)
    assert [f["n_measured"] for f in v["specificity_folds"]] == [1, 1] and v["n_normal_recordings"] == 2
    # the threshold is honest: from the held-out NORMAL windows at window_fpr (not from abnormal ones)
    val = np.asarray(info["val_scores"])
    assert "held-out normal" in info["calibration"]["source"]
    assert np.mean(val > info["threshold"]) <= 0.05 + 1.0 / len(val)


def root_output(trained) -> str:
    return trained[1]


def test_printed_validation_line_names_the_cross_calibration(trained):
    line = next(x for x in root_output(trained).splitlines() if x.startswith("validation on held-out"))
    assert "2-fold cross-calibration on the 2 held-out normal recordings" in line
    assert "recording specificity" in line and "of normal windows flagged" in line


def _fake_validation(monkeypatch, normal_scores: list[np.ndarray], threshold: float, min_windows: int = 1):
    """validate_supervised on recordings whose window scores are given: the normal ones as
    training hands them over (starts, scores), the abnormal one through ``screen_recording``
    replaced by one returning every window at 5."""
    from types import SimpleNamespace

    import pipelines.screening as scr

    cfg = scr.ScreeningConfig(window_seconds=1.0, step_seconds=1.0, min_windows=min_windows, window_fpr=0.05)
    model = SimpleNamespace(threshold=threshold, cfg=cfg, val_scores=np.concatenate(normal_scores))
    table = {"a0": np.full(20, 5.0)}

    def fake(m, path):
        s = np.asarray(table[Path(path).name], np.float64)
        return {"scores": s, "starts": np.arange(len(s), dtype=np.float64),
                "intervals": scr.flagged_intervals(np.arange(len(s)), s, m.threshold, 1.0, m.cfg.min_windows)}

    monkeypatch.setattr(scr, "screen_recording", fake)
    normal = [(np.arange(len(s), dtype=np.float64), np.asarray(s, np.float64)) for s in normal_scores]
    return scr.validate_supervised(model, normal, [Path("a0")], [])


def test_specificity_comes_from_normal_recordings_that_did_not_set_the_threshold(monkeypatch):
    """The threshold set on ALL held-out normal windows flags none of the two normal recordings
    here (specificity 1 at the model's threshold: optimistic by construction). Cross-calibrated,
    a threshold from the quiet recording flags the busy one, and one from the busy recording
    flags none of the quiet one: specificity 0.5, half the normal windows flagged."""
    quiet, busy = np.linspace(0.0, 0.1, 20), np.linspace(0.8, 0.9, 20)
    v = _fake_validation(monkeypatch, [quiet, busy], threshold=0.9)
    assert v["recording_specificity"] == 0.5 and v["normal_windows_flagged"] == 0.5
    assert v["recording_sensitivity"] == 1.0 and v["abnormal_windows_flagged"] == 1.0
    f0, f1 = v["specificity_folds"]
    assert f0["threshold"] == pytest.approx(0.1) and f0["specificity"] == 0.0  # quiet -> busy flagged
    assert f1["threshold"] == pytest.approx(0.9) and f1["specificity"] == 1.0
    # the decision rule is screen run's: with min_windows 30 no run is long enough to flag a recording
    v = _fake_validation(monkeypatch, [quiet, busy], threshold=0.9, min_windows=30)
    assert v["recording_specificity"] == 1.0 and v["normal_windows_flagged"] == 0.5


def test_one_held_out_normal_recording_gives_no_specificity(monkeypatch):
    v = _fake_validation(monkeypatch, [np.linspace(0, 1, 20)], threshold=0.95)
    assert v["recording_specificity"] is None and v["normal_windows_flagged"] is None
    assert v["specificity_note"].startswith("specificity not estimated: 1 held-out normal recording")
    assert "add normal recordings" in v["specificity_note"] and v["window_auroc"] == 1.0
    from pipelines.screening import validation_text

    assert "specificity not estimated" in validation_text(v)


def test_screen_run_flags_abnormal_recordings(trained, tmp_path):
    root, _ = trained
    res = {}
    for name, spikes in (("testn", False), ("testa", True)):
        folder = _recordings(tmp_path / name, 3, 7, spikes=spikes)
        r = _cli(["screen", "run", root / "model", folder, "--out", tmp_path / f"out_{name}", "--no-plots"])
        assert r.exit_code == 0, r.output
        res[name] = json.loads((tmp_path / f"out_{name}" / "results.json").read_text())["recordings"]
    assert all(r["decision"] == "abnormal" for r in res["testa"])
    # a threshold from ~40 held-out normal windows may flag a short span of a normal recording;
    # the abnormal ones are flagged (nearly) throughout and score higher
    seconds = {k: sum(r["flagged_seconds"] for r in v) for k, v in res.items()}
    assert seconds["testa"] >= 45 and seconds["testa"] > 2 * seconds["testn"]
    assert min(r["max_score"] for r in res["testa"]) > max(r["max_score"] for r in res["testn"])


def test_explain_uses_gradcam_on_the_supervised_model(trained, tmp_path):
    root, _ = trained
    folder = _recordings(tmp_path / "one", 1, 9, spikes=True)
    r = _cli(["explain", root / "model", folder / "one00.txt", "--out", tmp_path / "e", "--top-k", "1"])
    assert r.exit_code == 0, r.output
    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert case["decision"] == "abnormal" and case["model"] == "CNN1DDetector"
    assert [f["png"].split("_")[0] for f in case["figures"]] == ["gradcam"]  # classifiers: Grad-CAM by default
    assert (tmp_path / "e" / case["figures"][0]["png"]).is_file()


@pytest.mark.parametrize("args, expect", [
    (["--abnormal", "ABN"], ["one-class", "cnn1d", "--abnormal"]),           # features (default) + abnormal
    (["--detector", "seq_ae", "--abnormal", "ABN"], ["one-class", "cnn1d"]),
    (["--detector", "cnn1d"], ["supervised", "--abnormal FOLDER", "seq_ae"]),  # supervised, normal only
    (["--config", "configs/screening_ecg_beats.yaml", "--abnormal", "ABN"], ["unit: beats", "one-class"]),
])
def test_detector_and_training_data_must_fit(tmp_path, args, expect):
    """Refused before any recording is read (no model written), saying what to do."""
    normal = _recordings(tmp_path / "n", 2, 0)
    abnormal = _recordings(tmp_path / "a", 2, 1, spikes=True)
    root = Path(__file__).resolve().parents[1]
    args = [abnormal if a == "ABN" else root / a if a.startswith("configs/") else a for a in args]
    r = _cli(["screen", "train", normal, "--text-sfreq", "100", "--out", tmp_path / "m", *args])
    assert r.exit_code != 0, r.output
    from medad.errors import ConfigError

    assert isinstance(r.exception, ConfigError), r.exception
    text = " ".join(str(r.exception).split())
    for e in expect:
        assert e in text, text
    assert not (tmp_path / "m").exists()


def test_hold_out_and_balance_by_sampling():
    """Recordings of each class are held out by recording (one abnormal at least from 2); a
    detector without class weights gets the larger class subsampled to the smaller one."""
    from pipelines.screening import _hold_out, _labelled

    rng = np.random.default_rng(0)
    tr, va = _hold_out([Path("a"), Path("b")], 0.2, rng)
    assert len(va) == 1 and len(tr) == 1 and set(tr) | set(va) == {Path("a"), Path("b")}
    assert _hold_out([Path("a")], 0.2, rng) == ([Path("a")], [])

    class NoWeights:
        def get_params(self):
            return {"epochs": 1}

    x, y, bal = _labelled(NoWeights(), np.zeros((30, 1, 8)), np.ones((6, 1, 8)))
    assert len(x) == 12 and y.tolist() == [0] * 6 + [1] * 6 and "subsampled to 6" in bal["handling"]
    assert bal["windows"] == {"normal": 30, "abnormal": 6}
