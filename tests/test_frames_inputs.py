"""Inputs and outputs of `medad images train|screen` found wanting in a user audit: numeric options
checked before any frame is read, subfolders searched, a progress bar, a frames.csv row for every
unreadable frame, overlays named after their source and drawn at its resolution."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from medad.errors import ConfigError  # noqa: E402
from pipelines.frames import FramesConfig, screen_frames, train_frames  # noqa: E402


def _img(rng: np.random.Generator, h: int = 40, w: int = 40, defect: bool = False) -> np.ndarray:
    """A grey-pink frame with mild noise (BGR for cv2); the defect is a bright green square."""
    img = np.full((h, w, 3), (110, 110, 190), np.float64) + rng.normal(0, 3, (h, w, 3))
    if defect:
        img[h // 4:h // 2, w // 4:w // 2] = (60, 250, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A pca frame model trained on a NESTED folder (frames only in subfolders)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("normal")
    for sub in ("day1", "day2"):
        (root / sub).mkdir()
        for i in range(6):
            cv2.imwrite(str(root / sub / f"n{i}.png"), _img(rng))
    out = tmp_path_factory.mktemp("model") / "m"
    train_frames(root, out, FramesConfig(detector="pca", image_size=16, val_fraction=0.25), progress=False)
    return out


def _main(args, capsys) -> tuple[int, str]:
    """Exit code and stderr of the `medad` entry point (a MedadError: 'error: ...', code 2)."""
    from medad.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


# ------------------------------------------------------------------ 2: numbers checked first
@pytest.mark.parametrize("args, option", [
    (["--image-size", "0"], "--image-size"),
    (["--image-size", "8"], "--image-size"),
    (["--fpr", "1.5"], "--fpr"),
    (["--fpr", "0"], "--fpr"),
    (["--epochs", "0"], "--epochs"),
])
def test_train_options_are_checked_before_reading(tmp_path, capsys, args, option):
    # the data folder does not exist: the option must be named first, with no cv2 traceback
    code, err = _main(["images", "train", tmp_path / "no_such_folder", "--detector", "pca", *args,
                       "--out", tmp_path / "m"], capsys)
    assert code == 2 and err.startswith("error: "), err
    assert option in err and "no_such_folder" not in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_screen_options_are_checked_before_reading(tmp_path, capsys):
    code, err = _main(["images", "screen", tmp_path / "no_model", tmp_path / "no_frames", "--stride", "0",
                       "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--stride" in err and "no_model" not in err, err
    for kw, msg in [({"batch_size": 0}, "batch_size"), ({"max_overlays": -1}, "max_overlays"),
                    ({"fps": float("nan")}, "fps")]:
        with pytest.raises(ConfigError, match=msg):
            screen_frames(tmp_path / "no_model", tmp_path / "no_frames", tmp_path / "o", **kw)


def test_config_values_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        FramesConfig(val_fraction=1.0).validate()
    with pytest.raises(ConfigError, match="image_size"):
        FramesConfig(image_size=64.5).validate()
    with pytest.raises(ConfigError, match="unknown detector"):  # built before any frame is read
        train_frames(tmp_path / "no_such_folder", tmp_path / "m", FramesConfig(detector="nope"))
    (tmp_path / "bad.yaml").write_text("detector: pca\nimage_size: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*image_size"):
        FramesConfig.from_yaml(tmp_path / "bad.yaml")


# ------------------------------------------------------------------ 5: subfolders searched
def test_subfolders_are_searched_in_natural_order(model, tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "screen"
    for sub, names in [("b", ["x.png"]), ("a", ["f10.png", "f2.png"])]:
        (src / sub).mkdir(parents=True)
        for n in names:
            cv2.imwrite(str(src / sub / n), _img(rng))
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    cv2.imwrite(str(linked / "l1.png"), _img(rng))
    os.symlink(linked, src / "c_link")  # a linked folder is followed
    screen_frames(model, src, tmp_path / "o", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "o" / "frames.csv")))
    assert [r["file"] for r in rows] == ["a/f2.png", "a/f10.png", "b/x.png", "c_link/l1.png"]
    empty = tmp_path / "empty" / "sub"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not a frame")
    with pytest.raises(Exception, match="subfolders included"):
        screen_frames(model, empty.parent, tmp_path / "o2", progress=False)
    from typer.testing import CliRunner

    from medad.cli import app

    for cmd in ("train", "screen"):
        assert "subfolders" in CliRunner().invoke(app, ["images", cmd, "--help"]).output


# ------------------------------------------------------------------ 3: progress bar
def test_screening_shows_progress(model, tmp_path, capsys):
    rng = np.random.default_rng(2)
    src = tmp_path / "f"
    src.mkdir()
    for i in range(5):
        cv2.imwrite(str(src / f"f{i}.png"), _img(rng))
    screen_frames(model, src, tmp_path / "o", batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "screen f" in err and "5/5" in err and "frame" in err
    screen_frames(model, src, tmp_path / "o", progress=False)
    assert "5/5" not in capsys.readouterr().err


# ------------------------------------------------------------------ 4: rows, overlay names, resolution
def test_unreadable_rows_and_overlays_at_source_resolution(model, tmp_path, monkeypatch):
    import medad.report.overlay as overlay

    drawn = {}
    real = overlay.save_overlay

    def spy(image, amap, path, **kw):
        drawn[path.name] = (np.shape(image), np.shape(amap), None if kw.get("mask") is None else kw["mask"].shape)
        return real(image, amap, path, **kw)

    monkeypatch.setattr(overlay, "save_overlay", spy)
    rng = np.random.default_rng(3)
    src = tmp_path / "f"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "ok1.png"), _img(rng, 80, 96))
    cv2.imwrite(str(src / "sub" / "lesion.png"), _img(rng, 80, 96, defect=True))
    cv2.imwrite(str(src / "sub" / "lesion.jpg"), _img(rng, 80, 96, defect=True))  # same stem
    (src / "sub" / "bad.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "o" / "overlays").mkdir(parents=True)
    (tmp_path / "o" / "overlays" / "stale.png").write_bytes(b"an earlier run's")
    summary = screen_frames(model, src, tmp_path / "o", progress=False)
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "o" / "frames.csv"))}
    assert list(rows) == ["ok1.png", "sub/bad.png", "sub/lesion.jpg", "sub/lesion.png"]
    bad = rows["sub/bad.png"]
    assert bad["status"] == "error" and "bad.png" in bad["error"] and bad["score"] == "" and bad["flagged"] == ""
    assert all(r["status"] == "ok" and r["error"] == "" for f, r in rows.items() if f != "sub/bad.png")
    assert [e["index"] for e in summary["unreadable_frames"]] == [1]
    assert rows["sub/lesion.png"]["flagged"] == rows["sub/lesion.jpg"]["flagged"] == "1"
    # named after the source file (subfolder joined by '__'; a second 'lesion' gets its index)
    assert summary["overlays"] == ["overlays/sub__lesion.png", "overlays/sub__lesion_f000003.png"]
    assert sorted(p.name for p in (tmp_path / "o" / "overlays").iterdir()) == ["sub__lesion.png",
                                                                                "sub__lesion_f000003.png"]
    # drawn on the 80 x 96 source grid, not the 16 px working grid
    assert drawn["sub__lesion.png"] == ((80, 96, 3), (80, 96), (80, 96))


def test_video_overlays_are_named_after_the_video(model, tmp_path):
    clip = tmp_path / "endo clip.avi"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert vw.isOpened()
    rng = np.random.default_rng(4)
    for t in range(6):
        vw.write(_img(rng, 48, 64, defect=t == 3))
    vw.release()
    summary = screen_frames(model, clip, tmp_path / "o", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "o" / "frames.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 6 and {r["file"] for r in rows} == {""}
    assert "overlays/endo clip_f000003.png" in summary["overlays"]
