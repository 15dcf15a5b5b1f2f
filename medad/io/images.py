"""2D images (PNG/JPG/BMP/TIFF) and video frames.

:func:`read_image` returns an :class:`~medad.io.records.ImageRecord` with float32 data in the
file's own value range, ``(H, W)`` grey or ``(H, W, 3)`` RGB. :func:`iter_video_frames` walks a
video file (OpenCV) or a folder of frame images with a stride; frames that cannot be decoded are
reported through a callback and skipped, never crashing the walk. Every failure raises
:class:`~medad.errors.ReadError` naming the file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from medad.errors import InputError, ReadError
from medad.io.records import ImageRecord
from medad.io.volumes import _short

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".m4v", ".webm")

# After this many undecodable frames in a row the video is treated as ended (broken tail).
_MAX_CONSECUTIVE_BAD = 25
DEFAULT_VIDEO_FPS = 25.0  # a video that declares no frame rate: a common one; its times are then approximate


def natural_key(name: str) -> list:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _to_array(img, p: Path, grey: bool | None) -> tuple[np.ndarray, str]:
    """PIL image -> float32 array (HxW or HxWx3) in the file's own value range."""
    mode = img.mode
    if mode == "P":  # palette: expand to what the palette holds
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if mode == "RGBA" else "L")  # alpha carries no anatomy
        mode = img.mode
    if mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ReadError(f"unsupported image layout {arr.shape} (mode {img.mode})", p)
    arr = arr.astype(np.float32)
    if grey is True and arr.ndim == 3:
        # ITU-R 601 luma, as PIL's convert("L") but without rounding to uint8
        arr = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    elif grey is False and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr, mode


def read_image(path: str | Path, *, grey: bool | None = None) -> ImageRecord:
    """Read a 2D image.

    Args:
        path: PNG, JPEG, BMP or TIFF file.
        grey: ``None`` keeps what the file stores (grey -> ``(H, W)``, colour -> ``(H, W, 3)``;
            alpha dropped); ``True`` converts colour to grey; ``False`` makes grey RGB.

    Raises:
        ReadError: missing, empty, truncated, corrupt or non-image file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ReadError("file not found", p)
    if p.is_dir():
        raise ReadError("is a folder, expected an image file", p)
    suf = p.suffix.lower()
    if suf not in IMAGE_SUFFIXES:
        raise ReadError(f"unsupported image format {suf or '(no extension)'}; expected one of "
                        f"{', '.join(IMAGE_SUFFIXES)}", p)
    if p.stat().st_size == 0:
        raise ReadError("file is empty", p)
    try:
        with Image.open(p) as img:
            img.load()  # force decoding now: truncated data raises here
            fmt = img.format
            size = img.size
            n_frames = getattr(img, "n_frames", 1)
            arr, mode = _to_array(img, p, grey)
    except ReadError:
        raise
    except UnidentifiedImageError:
        raise ReadError("not a readable image (unknown or corrupt format)", p) from None
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError for damaged files
        raise ReadError(f"corrupt or truncated image: {_short(e)}", p) from None
    if arr.size == 0:
        raise ReadError("image has no pixels", p)
    meta = {"format": fmt, "mode": mode, "width": size[0], "height": size[1]}
    if n_frames > 1:
        meta["n_frames"] = n_frames  # only the first page/frame is read
    return ImageRecord(data=arr, path=p, meta=meta, subject_id=p.stem)


def describe_image(record: ImageRecord) -> dict[str, Any]:
    """Facts for ``medad inspect``."""
    d = record.data
    return {"kind": "image", "path": str(record.path), "shape": list(d.shape),
            "channels": 1 if d.ndim == 2 else int(d.shape[2]), **record.meta,
            "dtype": str(d.dtype), "min": float(d.min()), "max": float(d.max())}


# ------------------------------------------------------------------------------------- video


@dataclass
class VideoFrame:
    """One frame: index in the source, time in seconds, RGB uint8 ``(H, W, 3)``, and for a folder
    of frames the image's file name (``None`` for a video)."""

    index: int
    time_s: float
    image: np.ndarray
    file: str | None = None

    def __iter__(self):  # unpack as (index, time_s, image)
        return iter((self.index, self.time_s, self.image))


ErrorCallback = Callable[[int, ReadError], None]


def _report(on_error: ErrorCallback | None, index: int, err: ReadError) -> None:
    if on_error is None:
        log.warning("skipping frame %d: %s", index, err)
    else:
        on_error(index, err)


def _open_capture(p: Path):
    import os

    import cv2

    # FFmpeg prints decoder complaints straight to stderr; damaged frames are reported by us
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise ReadError("not a readable video (OpenCV could not open it)", p)
    return cap


def video_info(path: str | Path) -> dict[str, Any]:
    """Frames, fps, size and duration of a video file or a folder of frames."""
    import cv2

    p = Path(path)
    if p.is_dir():
        files = frame_files(p)
        return {"kind": "frames", "path": str(p), "frames": len(files)}
    _check_video_path(p)
    cap = _open_capture(p)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        ok, _ = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ReadError("video holds no decodable frame", p)
    return {"kind": "video", "path": str(p), "frames": n, "fps": fps, "width": w, "height": h,
            "duration_s": n / fps if fps > 0 else None}


def _check_video_path(p: Path) -> None:
    if not p.exists():
        raise ReadError("file not found", p)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise ReadError(f"unsupported video format {p.suffix or '(no extension)'}; expected one of "
                        f"{', '.join(VIDEO_SUFFIXES)} or a folder of frame images", p)
    if p.stat().st_size == 0:
        raise ReadError("file is empty", p)


def frame_files(folder: str | Path) -> list[Path]:
    """The frame images of a folder, subfolders (and linked folders) included, in natural order of
    their paths below ``folder`` ('a/f2' before 'a/f10' before 'b/f1'); a clear error when there is none."""
    from medad.utils import walk_files

    folder = Path(folder)
    files = [f for f in walk_files(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ReadError(f"folder (subfolders included) holds no frame images ({', '.join(IMAGE_SUFFIXES)})", folder)
    return sorted(files, key=lambda f: [natural_key(part) for part in f.relative_to(folder).parts])


def iter_video_frames(path: str | Path, stride: int = 1, *, fps: float | None = None,
                      on_error: ErrorCallback | None = None,
                      files: Sequence[Path] | None = None) -> Iterator[VideoFrame]:
    """Yield every ``stride``-th frame of a video file or of a folder of frame images.

    Args:
        path: video file (anything OpenCV's FFmpeg backend opens) or folder of images (subfolders
            included, :func:`frame_files` order; each frame's ``file`` is its path below the folder).
        stride: keep frames 0, stride, 2*stride, ... (indices are those of the source).
        fps: frame rate for a folder of frames (default 1.0); for video files the file's own.
        on_error: called as ``on_error(frame_index, ReadError)`` for each frame that cannot be
            decoded; the walk goes on. Without it such frames are logged as warnings.
        files: a folder's :func:`frame_files`, when the caller has listed them already (the
            folder is then not walked again, and indices match the caller's list).

    Yields:
        :class:`VideoFrame` (unpacks as ``index, time_s, rgb``), RGB uint8.

    Raises:
        ReadError: missing path, not a video, a video with no decodable frame, an empty folder.
    """
    if int(stride) < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    stride = int(stride)
    p = Path(path)
    if p.is_dir():
        yield from _iter_folder(p, stride, fps or 1.0, on_error, files)
    else:
        _check_video_path(p)
        yield from _iter_video(p, stride, on_error)


def frame_rgb(data: np.ndarray) -> np.ndarray:
    """An image read by :func:`read_image` (``grey=False``) as a uint8 RGB frame, as video frames
    are handed out (16-bit images rescaled to 0-255)."""
    if data.max() > 255:
        data = data * (255.0 / data.max())
    return np.clip(data, 0, 255).astype(np.uint8)


def _iter_folder(p: Path, stride: int, fps: float, on_error: ErrorCallback | None,
                 files: Sequence[Path] | None = None) -> Iterator[VideoFrame]:
    files = frame_files(p) if files is None else list(files)
    for i in range(0, len(files), stride):
        try:
            rgb = read_image(files[i], grey=False).data
        except ReadError as e:
            _report(on_error, i, e)
            continue
        yield VideoFrame(i, i / fps, frame_rgb(rgb), file=files[i].relative_to(p).as_posix())


def _iter_video(p: Path, stride: int, on_error: ErrorCallback | None) -> Iterator[VideoFrame]:
    import cv2

    cap = _open_capture(p)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if fps <= 0 or not np.isfinite(fps):
            fps = DEFAULT_VIDEO_FPS
        n_declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        i = 0
        n_good = 0
        bad_run = 0
        while True:
            if i % stride:
                ok = cap.grab()  # skip without decoding
                frame = None
            else:
                ok, frame = cap.read()
            if not ok or (frame is None and i % stride == 0):
                # a failed read before the declared end is a damaged frame; after it, the end
                if i >= n_declared or bad_run >= _MAX_CONSECUTIVE_BAD:
                    break
                bad_run += 1
                if i % stride == 0:
                    _report(on_error, i, ReadError(f"frame {i} could not be decoded", p))
                i += 1
                continue
            bad_run = 0
            if frame is not None:
                n_good += 1
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
                else:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yield VideoFrame(i, i / fps, frame)
            i += 1
    finally:
        cap.release()
    if n_good == 0 and i == 0:
        raise ReadError("video holds no decodable frame", p)
