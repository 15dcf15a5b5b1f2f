"""`medad images train|screen` after user audit 11: a threshold set on too few held-out normal frames
is warned about (as `screen train` does), video files inside a folder are named instead of ignored,
unreadable frames are named on the terminal, and a wrong config or detector name gets an error that
says what it is and lists image detectors only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from medad import registry  # noqa: E402
from medad.errors import ConfigError  # noqa: E402
from medad.evaluation import calibration_warning  # noqa: E402
from pipelines.frames import MAX_NAMED_SKIPS, FramesConfig, other_config_kind, train_frames  # noqa: E402

AUDIT = Path("/tmp/audit11")
REPO = Path(__file__).resolve().parents[1]


def _img(rng: np.random.Generator, h: int = 24, w: int = 24) -> np.ndarray:
    img = np.full((h, w, 3), (110, 110, 190), np.float64) + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _frames(folder: Path, n: int, seed: int = 0, prefix: str = "f") -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{prefix}{i:03d}.png"), _img(rng))
    return folder


def _video(dest: Path) -> Path:
    """A real video: the auditor's test_video.mp4 when there, else a short one written here."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if (AUDIT / "test_video.mp4").is_file():
        shutil.copy(AUDIT / "test_video.mp4", dest)
    else:
        w = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (24, 24))
        rng = np.random.default_rng(3)
        for _ in range(8):
            w.write(_img(rng))
        w.release()
    return dest


def _broken(dest: Path) -> Path:
    """An unreadable .jpg: the auditor's broken.jpg when there, else random bytes."""
    src = AUDIT / "img_train_bad" / "broken.jpg"
    dest.write_bytes(src.read_bytes() if src.is_file() else np.random.default_rng(1).bytes(500))
    return dest


def _main(args, capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the `medad` entry point."""
    from medad.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, *capsys.readouterr()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A pca frame model from 20 normal frames."""
    root = _frames(tmp_path_factory.mktemp("normal"), 20)
    out = tmp_path_factory.mktemp("model") / "m"
    train_frames(root, out, FramesConfig(detector="pca", image_size=16, val_fraction=0.25), progress=False)
    return out


# ------------------------------------------------------------------ 1: too few held-out normal frames
def test_train_warns_on_too_few_held_out_frames(tmp_path, capsys):
    normal = _frames(tmp_path / "tiny", 6)
    code, out, err = _main(["images", "train", normal, "--detector", "pca", "--image-size", "16", "--out",
                            tmp_path / "m"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "m" / "frames.json").read_text())
    assert rec["n_val"] == 1
    w = rec["calibration_warning"]
    assert w == calibration_warning(1, [], 0.05, 0.2, "frames", group=None, fpr_name="fpr")
    assert "1 held-out normal frames cannot resolve fpr=0.05" in w
    assert "add normal frames (about 198 in all, so that 40 are held out at val_fraction=0.2)" in w
    assert "raise fpr (--fpr)" in w and "recording" not in w
    assert f"warning: {w}" in out


def test_train_without_warning_when_enough_frames_are_held_out(tmp_path, capsys):
    # 30 frames, 12 held out: fpr=0.3 needs >= 2 / 0.3 -> 7
    normal = _frames(tmp_path / "n", 30)
    train_frames(normal, tmp_path / "m", FramesConfig(detector="pca", image_size=16, val_fraction=0.4, fpr=0.3),
                 progress=True)
    rec = json.loads((tmp_path / "m" / "frames.json").read_text())
    assert rec["n_val"] == 12 and rec["calibration_warning"] is None
    assert "warning" not in capsys.readouterr().out


def test_calibration_warning_for_items_held_out_themselves():
    assert calibration_warning(40, [], 0.05, 0.2, "frames", group=None, fpr_name="fpr") is None
    w = calibration_warning(25, [], 0.05, 0.5, "frames", group=None, fpr_name="fpr")
    assert w.startswith("only 25 held-out normal frames calibrate fpr=0.05 (a stable threshold needs >= "
                        "2 / fpr = 40)")
    assert "about 79 in all, so that 40 are held out at val_fraction=0.5" in w  # round(0.5 * 79) = 40
    # one source of frames is not "one held-out recording"
    assert "one held-out" not in w and "only training" not in calibration_warning(
        5, ["x"], 0.05, 0.2, "frames", single=True, group=None, fpr_name="fpr")


def test_screening_keeps_its_calibration_warning():
    from pipelines import screening

    assert screening.calibration_warning is calibration_warning
    w = calibration_warning(6, ["a.edf"], 0.05, 0.2)
    assert w.startswith("6 held-out normal windows cannot resolve window_fpr=0.05")
    assert "they all come from one held-out recording (a.edf)" in w
    # 6 windows per held-out recording: 7 of them reach 2 / 0.05 = 40 windows; round(0.2 * 33) = 7
    assert w.endswith("so normal recordings are likely to be flagged abnormal: add normal recordings (about 33 "
                      "in all, so that 7 are held out at val_fraction=0.2), or raise window_fpr (--fpr)")


# ------------------------------------------------------------------ 2: videos inside a folder
def test_screen_names_videos_in_a_folder(tmp_path, model, capsys):
    folder = _frames(tmp_path / "mix", 2)
    _video(folder / "sub" / "clip.mp4")
    code, out, err = _main(["images", "screen", model, folder, "--out", tmp_path / "o", "--no-overlays"], capsys)
    assert code == 0, err
    assert f"note: 1 video file(s) in {folder} not screened: sub/clip.mp4" in out
    assert f"give a video's own path as the source to use its frames, e.g. {folder / 'sub' / 'clip.mp4'}" in out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["videos_not_screened"] == ["sub/clip.mp4"] and s["n_frames_screened"] == 2


def test_screen_folder_of_videos_only_says_so(tmp_path, model, capsys):
    folder = tmp_path / "vids"
    _video(folder / "a.mp4")
    _video(folder / "b.MP4")
    code, _, err = _main(["images", "screen", model, folder, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert "holds no frame images" in err and "only 2 video file(s) (a.mp4, b.MP4)" in err
    assert f"give a video's own path instead of the folder (e.g. {folder / 'a.mp4'})" in err
    # the video itself is screened
    code, _, err = _main(["images", "screen", model, folder / "a.mp4", "--out", tmp_path / "o2", "--no-overlays"],
                         capsys)
    assert code == 0, err


def test_train_names_videos_in_a_folder(tmp_path, capsys):
    folder = _frames(tmp_path / "n", 8)
    _video(folder / "clip.mp4")
    train_frames(folder, tmp_path / "m", FramesConfig(detector="pca", image_size=16), progress=True)
    assert f"note: 1 video file(s) in {folder} not read for training: clip.mp4" in capsys.readouterr().out
    rec = json.loads((tmp_path / "m" / "frames.json").read_text())
    assert rec["videos_not_read"] == {str(folder): ["clip.mp4"]}
    # a folder of videos only, as an abnormal class: named as the class's problem
    vids = tmp_path / "abn"
    _video(vids / "v.mp4")
    with pytest.raises(Exception) as e:
        train_frames(folder, tmp_path / "m2", FramesConfig(detector="classifier", image_size=16),
                     abnormal=[vids], progress=False)
    assert "abnormal class 'abn'" in str(e.value) and "only 1 video file(s) (v.mp4)" in str(e.value)


# ------------------------------------------------------------------ 3: unreadable frames named
def test_screen_names_unreadable_frames(tmp_path, model, capsys):
    folder = _frames(tmp_path / "s", 3)
    n_bad = MAX_NAMED_SKIPS + 2
    bad = [_broken(folder / f"bad{i:02d}.jpg") for i in range(n_bad)]
    code, out, err = _main(["images", "screen", model, folder, "--out", tmp_path / "o", "--no-overlays"], capsys)
    assert code == 0, err
    named = re.findall(r"^skipped: (\S+): (.+)$", out, re.M)
    assert [Path(p) for p, _ in named] == bad[:MAX_NAMED_SKIPS]  # the first ones, in screening order
    assert all(r == "not a readable image (unknown or corrupt format)" for _, r in named)
    assert (f"{n_bad} unreadable frame(s) skipped in {folder} (2 not named above); frames.csv lists each with "
            f"its reason") in out
    rows = (tmp_path / "o" / "frames.csv").read_text().count(",error,")
    assert rows == n_bad


def test_train_names_unreadable_frames(tmp_path, capsys):
    folder = _frames(tmp_path / "n", 8)
    bad = _broken(folder / "broken.jpg")
    code, out, err = _main(["images", "train", folder, "--detector", "pca", "--image-size", "16", "--out",
                            tmp_path / "m"], capsys)
    assert code == 0, err
    assert f"skipped: {bad}: not a readable image (unknown or corrupt format)" in out
    assert f"1 unreadable normal frame(s) skipped in {folder}; frames.json lists each with its reason" in out
    rec = json.loads((tmp_path / "m" / "frames.json").read_text())
    assert len(rec["unreadable"]) == 1 and str(bad) in rec["unreadable"][0]["error"]


# ------------------------------------------------------------------ 4: error messages
def test_recording_screening_config_is_recognised(tmp_path, capsys):
    normal = tmp_path / "none"  # the config is refused before any frame is read
    code, _, err = _main(["images", "train", normal, "--config", REPO / "configs" / "screening_eeg.yaml",
                          "--out", tmp_path / "m"], capsys)
    assert code == 2
    assert "unknown frame-screening settings: screening" in err
    assert "this looks like a recording-screening config (for `medad screen train`)" in err
    flat = tmp_path / "flat.yaml"  # screening settings at the top level, as ScreeningConfig also reads them
    flat.write_text("detector: features\nwindow_seconds: 2.0\nwindow_fpr: 0.01\nval_fraction: 0.2\n")
    with pytest.raises(ConfigError, match="looks like a recording-screening config"):
        FramesConfig.from_yaml(flat)


def test_brain_config_and_typo_are_told_apart(tmp_path):
    with pytest.raises(ConfigError, match=r"looks like a brain-lesion config \(for `medad brain train`\)"):
        FramesConfig.from_yaml(REPO / "configs" / "brain_ae.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("detector: pca\nimage_sise: 32\n")
    with pytest.raises(ConfigError) as e:
        FramesConfig.from_yaml(typo)
    assert "unknown frame-screening settings: image_sise; known: detector, detector_params, image_size" in str(e.value)
    assert "looks like" not in str(e.value)
    # settings of both other kinds, or of none: no guess
    assert other_config_kind({"window_seconds": 2, "preprocessing": {}}) is None
    assert other_config_kind({"image_sise": 3}) is None


def _listed(err: str) -> set[str]:
    """The detector names an error lists (after 'one-class:' and 'supervised (with --abnormal):')."""
    return {n for part in re.findall(r"(?:one-class|supervised \(with --abnormal\)): ([\w, ]+)", err)
            for n in re.split(r",\s*", part.strip()) if n}


def test_unknown_detector_lists_image_detectors_only(tmp_path, capsys):
    code, _, err = _main(["images", "train", _frames(tmp_path / "n", 4), "--detector", "cutpast", "--out",
                          tmp_path / "m"], capsys)
    assert code == 2
    assert "unknown detector 'cutpast' (did you mean 'cutpaste'?)" in err
    assert _listed(err) == set(registry.available("image"))
    assert not _listed(err) & set(registry.available("signal"))
    with pytest.raises(ConfigError) as e:  # a signal detector: the same list
        train_frames(tmp_path / "n", tmp_path / "m", FramesConfig(detector="features"), progress=False)
    assert "takes signal input, not images" in str(e.value)
    assert _listed(str(e.value)) == set(registry.available("image"))


def test_registry_filters_by_input_kind():
    every = registry.available()
    image, signal = registry.available("image"), registry.available("signal")
    assert image and signal and not set(image) & set(signal)
    assert set(image) | set(signal) | set(registry.available("features")) == set(every)
    assert all(registry.get(n).input_kind == "image" for n in image)
    assert "cutpaste" in image and "features" in signal
