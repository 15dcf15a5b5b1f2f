"""2D image and video readers on real PNG/JPG from ../shared/data, generated videos and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medad.config import data_root
from medad.errors import InputError, ReadError
from medad.io.images import describe_image, iter_video_frames, read_image, video_info

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="../shared/data (or $MEDAD_DATA_ROOT) not present")

N_FRAMES, FPS, W, H = 20, 10, 64, 48


def _frame(i: int) -> np.ndarray:
    """Frame i: flat grey level 10*i (BGR for OpenCV), so content identifies the index."""
    return np.full((H, W, 3), 10 * i, np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    import cv2

    p = tmp_path_factory.mktemp("vid") / "clip.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for i in range(N_FRAMES):
        w.write(_frame(i))
    w.release()
    return p


# ------------------------------------------------------------------ images


@needs_data
def test_grey_png_real():
    f = sorted((ROOT / "mri/brain_tumor_mri_4class/train/notumor").glob("*.png"))[0]
    rec = read_image(f)
    assert rec.shape == (128, 128)
    assert rec.data.dtype == np.float32
    assert 0 <= rec.data.min() and rec.data.max() <= 255 and rec.data.max() > 1  # original range
    assert rec.meta["format"] == "PNG"
    assert read_image(f, grey=False).shape == (128, 128, 3)
    d = describe_image(rec)
    assert d["channels"] == 1 and d["shape"] == [128, 128]


@needs_data
def test_rgb_jpg_real():
    from PIL import Image

    f = sorted((ROOT / "endoscopy/kvasir_seg/train/images").glob("*.jpg"))[0]
    rec = read_image(f)
    assert rec.shape == (256, 256, 3)
    np.testing.assert_array_equal(rec.data, np.asarray(Image.open(f).convert("RGB"), np.float32))
    g = read_image(f, grey=True).data
    assert g.shape == (256, 256)
    ref = np.asarray(Image.open(f).convert("L"), np.float32)
    assert np.abs(g - ref).max() <= 1.0  # PIL rounds to uint8


def test_rgba_and_16bit_png(tmp_path):
    from PIL import Image

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rec = read_image(tmp_path / "a.png")
    assert rec.shape == (10, 12, 3) and rec.data[..., 0].max() == 200
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)
    Image.fromarray(deep).save(tmp_path / "d.png")
    rec16 = read_image(tmp_path / "d.png")
    assert rec16.shape == (10, 12) and rec16.data.max() == deep.max()  # range kept, not clipped


def test_missing_image(tmp_path):
    with pytest.raises(ReadError, match="not found") as e:
        read_image(tmp_path / "x.png")
    assert "x.png" in str(e.value)


@pytest.mark.parametrize("name,content,msg", [
    ("empty.png", b"", "empty"),
    ("garbage.png", b"not a png" * 30, "not a readable image"),
    ("garbage.jpg", b"\xff\xd8\xff" + b"\x00" * 100, "corrupt|not a readable"),
    ("notes.txt", b"hello", "unsupported image format"),
])
def test_bad_images(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ReadError, match=msg) as e:
        read_image(p)
    assert name in str(e.value)


@needs_data
def test_truncated_real_jpeg(tmp_path):
    raw = sorted((ROOT / "endoscopy/kvasir_seg/train/images").glob("*.jpg"))[0].read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="truncated") as e:
        read_image(p)
    assert "cut.jpg" in str(e.value)


# ------------------------------------------------------------------ video


def test_video_info_and_stride(video):
    info = video_info(video)
    assert info["frames"] == N_FRAMES and info["fps"] == pytest.approx(FPS)
    assert (info["width"], info["height"]) == (W, H)
    frames = list(iter_video_frames(video, stride=3))
    assert [f.index for f in frames] == list(range(0, N_FRAMES, 3))
    for idx, t, img in frames:
        assert t == pytest.approx(idx / FPS)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert abs(float(img.mean()) - 10 * idx) < 4  # MJPG is lossy; content matches index


def test_corrupt_frame_reported_rest_yielded(video, tmp_path):
    raw = bytearray(video.read_bytes())
    soi = [i for i in range(len(raw) - 1) if raw[i] == 0xFF and raw[i + 1] == 0xD8]
    assert len(soi) == N_FRAMES
    raw[soi[5] + 20: soi[5] + 200] = b"\x00" * 180  # destroy frame 5's JPEG data, keep the AVI index
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(raw))
    errors = []
    frames = list(iter_video_frames(bad, on_error=lambda i, e: errors.append((i, e))))
    assert [i for i, _ in errors] == [5]
    assert isinstance(errors[0][1], ReadError) and "bad.avi" in str(errors[0][1])
    assert [f.index for f in frames] == [i for i in range(N_FRAMES) if i != 5]
    for f in frames:
        assert abs(float(f.image.mean()) - 10 * f.index) < 4


def test_video_errors(tmp_path):
    with pytest.raises(ReadError, match="not found"):
        list(iter_video_frames(tmp_path / "none.avi"))
    fake = tmp_path / "fake.avi"
    fake.write_bytes(b"this is no video" * 100)
    with pytest.raises(ReadError, match="fake.avi"):
        list(iter_video_frames(fake))
    (tmp_path / "x.txt").write_text("text")
    with pytest.raises(ReadError, match="unsupported video format"):
        list(iter_video_frames(tmp_path / "x.txt"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ReadError, match="no frame images"):
        list(iter_video_frames(tmp_path / "emptydir"))
    with pytest.raises(InputError):
        list(iter_video_frames(fake, stride=0))


def test_frames_from_folder_with_a_corrupt_one(tmp_path):
    from PIL import Image

    for i in range(12):
        Image.fromarray(_frame(i)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "frame7.png").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("ignored")
    errors = []
    frames = list(iter_video_frames(tmp_path, stride=2, fps=5.0, on_error=lambda i, e: errors.append(i)))
    # natural order: frame10 after frame9; frame7 is odd so never visited with stride 2
    assert [f.index for f in frames] == [0, 2, 4, 6, 8, 10]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 20, 40, 60, 80, 100]
    assert frames[1].time_s == pytest.approx(0.4)
    assert errors == []
    errors = []
    frames = list(iter_video_frames(tmp_path, on_error=lambda i, e: errors.append(i)))
    assert errors == [7] and len(frames) == 11
