"""Supervised frame screening: `medad images train NORMAL --abnormal ABNORMAL --detector classifier`
(a tiny CNN on synthetic frames: a bright blob marks the abnormal ones), the held-out validation
record in frames.json, screening and `medad explain` on the model, and the clear errors when the
detector and --abnormal do not fit together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from medad.errors import ConfigError  # noqa: E402
from pipelines.frames import FramesConfig, holdout, screen_frames, train_frames  # noqa: E402

SIZE = 32
#: a classifier small enough for a test: 16 px, a few short epochs (its conformance settings + lr)
CLASSIFIER = {"image_size": 16, "epochs": 6, "batch_size": 16, "lr": 3e-3}


def _frames(folder: Path, n: int, seed: int, blob: bool = False, sub: str | None = None,
            colour: tuple[int, int, int] = (250, 250, 80)) -> Path:
    """``n`` noisy pink 0-255 RGB PNG frames; a bright blob (yellow unless ``colour``) at a random
    place when ``blob`` (the abnormal ones). ``sub``: write half of them into this subfolder."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        im = np.stack([170 + 0 * xx, 100 + 0 * xx, 110 + 0 * xx], -1).astype(np.float64)
        im += rng.normal(0, 12, im.shape)
        if blob:
            r, c = rng.integers(8, SIZE - 8, size=2)
            im[(yy - r) ** 2 + (xx - c) ** 2 < 36] = colour
        d = folder / sub if sub and i % 2 else folder
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"f{i:03d}.png"), cv2.cvtColor(np.clip(im, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return folder


def _cfg(**kw) -> FramesConfig:
    return FramesConfig(detector="classifier", detector_params=dict(CLASSIFIER), image_size=16, val_fraction=0.25,
                        **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frames")
    return {"normal": _frames(root / "normal", 40, 0), "abnormal": _frames(root / "abnormal", 40, 1, blob=True,
                                                                         sub="more"),
            "test_normal": _frames(root / "test" / "normal", 8, 2), "test_abnormal": _frames(root / "test" / "abn", 8, 3,
                                                                                           blob=True)}


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "clf"
    train_frames(data["normal"], out, _cfg(), abnormal=data["abnormal"], progress=False)
    return out


def test_frames_json_records_the_supervised_training(model):
    rec = json.loads((model / "frames.json").read_text())
    assert rec["supervised"] is True and rec["detector"] == "classifier"
    # 25 % of each class held out: 10 of 40 normal, 10 of 40 abnormal (the subfolder's frames counted)
    assert rec["classes"]["0"] == {"source": rec["source"], "n_train": 30, "n_val": 10}
    assert rec["classes"]["1"]["n_train"] == 30 and rec["classes"]["1"]["n_val"] == 10
    assert rec["class_weight"] == "balanced"
    assert rec["split"] == {"0": "random share (folder)", "1": "random share (folder)"}
    v = rec["validation"]
    assert v["n_normal"] == 10 and v["n_abnormal"] == 10
    assert v["frame_auroc"] > 0.9
    for k in ("sensitivity", "specificity"):
        assert 0.0 <= v[k] <= 1.0
    # the specificity is measured on held-out normal frames that did not set its threshold
    assert "cross-calibration" in v["specificity_method"] and "none trained on" in v["auroc_items"]
    assert [f["n_measured"] for f in v["specificity_folds"]] == [5, 5]
    # the threshold is the one the model keeps: calibrated on the held-out normal frames
    cal = json.loads((model / "config.json").read_text())
    assert v["threshold"] == pytest.approx(cal["threshold"])


class _Identity:
    """A fitted 'detector' whose score is the item's value, with a given threshold."""

    def __init__(self, threshold: float):
        self.threshold_ = threshold

    def score(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(score=np.asarray(x, np.float64).ravel())


def test_specificity_comes_from_normal_frames_that_did_not_set_the_threshold():
    """A video's held-out normal block whose first half is quiet and second half busy: a
    threshold at fpr from ALL of it flags ~fpr of them (specificity ~0.95, optimistic by
    construction). Cross-calibrated, the quiet half's threshold flags the whole busy half, the
    busy half's flags none of the quiet one: specificity 0.5."""
    from pipelines.frames import _validation_metrics

    normal = np.r_[np.linspace(0.0, 0.1, 10), np.linspace(0.5, 0.6, 10)]
    v = _validation_metrics(_Identity(0.6), normal, [np.full(4, 2.0)], fpr=0.05)
    assert v["specificity"] == 0.5 and v["sensitivity"] == 1.0 and v["frame_auroc"] == 1.0
    f0, f1 = v["specificity_folds"]
    assert (f0["n_calibration"], f0["n_measured"]) == (10, 10)
    assert f0["threshold"] == pytest.approx(0.1) and f0["specificity"] == 0.0
    assert f1["threshold"] == pytest.approx(0.6) and f1["specificity"] == 1.0


def test_too_few_normal_frames_give_no_specificity():
    from pipelines.frames import _validation_metrics

    v = _validation_metrics(_Identity(0.5), np.linspace(0, 1, 6), [np.full(3, 2.0)], fpr=0.05)
    assert v["specificity"] is None and "specificity_folds" not in v
    assert v["specificity_note"].startswith("specificity not estimated: 6 held-out normal frames")
    assert "add normal frames" in v["specificity_note"] and v["sensitivity"] == 1.0


def test_screening_scores_abnormal_frames_above_normal(model, data, tmp_path):
    import csv

    scores = {}
    for kind in ("test_normal", "test_abnormal"):
        s = screen_frames(model, data[kind], tmp_path / kind, progress=False)
        assert s["supervised"] is True and s["maps"] is False and s["overlays"] == []
        with open(tmp_path / kind / "frames.csv") as fh:
            scores[kind] = [float(r["score"]) for r in csv.DictReader(fh)]
    assert min(scores["test_abnormal"]) > max(scores["test_normal"])


def test_several_abnormal_sources_are_classes(data, tmp_path):
    """Python API: each abnormal source is a class (1, 2, ...); the score is still 1 - p(normal)."""
    from medad.detectors.base import Detector

    blue = _frames(tmp_path / "blue", 20, 4, blob=True, colour=(40, 60, 250))
    train_frames(data["normal"], tmp_path / "m", _cfg(), abnormal=[data["abnormal"], blue], progress=False)
    rec = json.loads((tmp_path / "m" / "frames.json").read_text())
    assert rec["classes"]["2"] == {"source": str(blue), "n_train": 15, "n_val": 5}
    v = rec["validation"]
    assert v["n_abnormal"] == 10 + 5 and set(v["per_class"]) == {"1", "2"}
    det = Detector.load(tmp_path / "m")
    assert det.n_classes_ == 3


def test_one_class_detector_with_abnormal_frames_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="drop --abnormal.*--detector classifier"):
        train_frames(data["normal"], tmp_path / "m", FramesConfig(detector="pca", image_size=16),
                     abnormal=data["abnormal"], progress=False)
    assert not (tmp_path / "m").exists()


def test_missing_abnormal_source_is_named_before_reading(data, tmp_path, monkeypatch):
    from medad.errors import ReadError
    import pipelines.frames as frames

    read = []
    monkeypatch.setattr(frames, "prepare_frames", lambda *a, **k: read.append(1))
    with pytest.raises(ReadError, match="no_such_folder"):
        train_frames(data["normal"], tmp_path / "m", _cfg(), abnormal=tmp_path / "no_such_folder", progress=False)
    assert not read  # the normal frames were not read first


def test_supervised_detector_without_abnormal_frames_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="supervised: give abnormal frames too \\(--abnormal"):
        train_frames(data["normal"], tmp_path / "m", _cfg(), progress=False)


def test_video_frames_are_held_out_as_one_block():
    rng = np.random.default_rng(0)
    tr, va = holdout(20, 0.25, rng, contiguous=True)
    assert len(va) == 5 and np.all(np.diff(va) == 1)
    assert sorted(np.r_[tr, va].tolist()) == list(range(20))
    tr, va = holdout(20, 0.25, np.random.default_rng(0), contiguous=False)
    assert len(va) == 5 and not set(tr) & set(va)


def _cli(args: list):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_train_screen_explain(data, tmp_path):
    """The user's path with the shipped config (fewer epochs, smaller frames): train with
    --abnormal, screen, explain one frame (Grad-CAM by default)."""
    cfg = Path(__file__).resolve().parents[1] / "configs" / "images_classifier.yaml"
    m = tmp_path / "m"
    r = _cli(["images", "train", data["normal"], "--abnormal", data["abnormal"], "--config", cfg, "--epochs", "2",
              "--image-size", "16", "--out", m])
    assert r.exit_code == 0, r.output
    assert "frame AUROC" in r.output and "sensitivity" in r.output
    # 8 of the 40 normal frames held out (val_fraction 0.2): too few to estimate a specificity honestly
    assert "specificity not estimated: 8 held-out normal frames" in " ".join(r.output.split())
    saved = json.loads((m / "config.json").read_text())
    assert saved["name"] == "classifier" and saved["params"]["epochs"] == 2
    r = _cli(["images", "screen", m, data["test_abnormal"], "--out", tmp_path / "s"])
    assert r.exit_code == 0, r.output
    frame = data["test_abnormal"] / "f000.png"
    r = _cli(["explain", m, frame, "--out", tmp_path / "e"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e" / "report.html").stat().st_size > 1000
    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert [f["kind"] for f in case["figures"]] == ["gradcam"]  # the default for a classifier
    # the default detector (one-class) with --abnormal: the error says what to do
    r = _cli(["images", "train", data["normal"], "--abnormal", data["abnormal"], "--out", tmp_path / "m2"])
    assert r.exit_code != 0 and "drop --abnormal" in str(r.exception or r.output)
