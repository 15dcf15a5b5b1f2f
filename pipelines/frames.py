"""Frame screening: learn normal images/frames, then score every ``stride``-th frame of a video
or a folder of frames, flag the abnormal ones, group them into time spans and draw the map of
each flagged frame.

Composes :mod:`medad.io.images` (reading, corrupt frames reported and skipped), the detector
registry (any 2D image detector), :mod:`medad.report.overlay` (PNGs) and atomic writers.

Outputs of :func:`screen_frames` in ``out/``:

* ``frames.csv`` -- ``index, time_s, file, score, flagged`` per screened frame (``file``: the image's
  name for a folder of frames, empty for a video);
* ``summary.json`` -- source, model, threshold, flagged spans ``(start_s, end_s, n_frames,
  max_score)``, unreadable frames with the reason;
* ``overlays/frame_<index>.png`` -- image | map | blend for each flagged frame.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medad.errors import ConfigError, InputError, ReadError
from medad.utils import atomic_path, write_json

log = logging.getLogger(__name__)

PREP_FILE = "frames.json"


@dataclass
class FramesConfig:
    """How frames are prepared, trained on and thresholded.

    Args:
        detector: registry name of a 2D image detector.
        detector_params: its parameters.
        image_size: frames are resized to ``image_size`` x ``image_size`` (values scaled to [0, 1]).
        grey: convert frames to one grey channel.
        val_fraction: share of the normal frames held out to calibrate the threshold.
        fpr: share of held-out normal frames flagged (frame threshold).
        pixel_fpr: share of held-out normal pixels above the map threshold (mask contours).
        seed: split and training seed.
    """

    detector: str = "cutpaste"
    detector_params: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    grey: bool = False
    val_fraction: float = 0.2
    fpr: float = 0.05
    pixel_fpr: float = 0.01
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FramesConfig":
        from medad.config import load_config

        raw = load_config(path)
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{path}: unknown frame-screening settings {sorted(unknown)}")
        return cls(**raw)


def prepare_frames(images: list[np.ndarray], image_size: int, grey: bool) -> np.ndarray:
    """RGB/grey uint8-range frames ``(H, W[, 3])`` -> float32 ``(N, C, S, S)`` in [0, 1]."""
    import cv2

    out = []
    for im in images:
        im = np.asarray(im, dtype=np.float32)
        if im.ndim == 2:
            im = im[..., None]
        if grey and im.shape[-1] == 3:
            im = (im @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        elif not grey and im.shape[-1] == 1:
            im = np.repeat(im, 3, axis=-1)
        im = cv2.resize(im, (int(image_size), int(image_size)), interpolation=cv2.INTER_AREA)
        if im.ndim == 2:
            im = im[..., None]
        out.append(np.moveaxis(im, -1, 0) / 255.0)
    return np.stack(out).astype(np.float32)


def frame_preparer(model: str | Path):
    """The preprocessing of a saved frame-screening model as a function: an image as
    :func:`medad.io.images.read_image` returns it (``grey=False``, the file's value range) ->
    ``(1, C, S, S)`` in [0, 1], exactly as :func:`screen_frames` prepares its frames (so
    ``medad explain`` scores a frame as screening did)."""
    from medad.io.images import frame_rgb
    from medad.utils import read_model_json

    prep = read_model_json(Path(model), PREP_FILE, "frame-screening model (train it with `medad images train`)")
    return lambda image: prepare_frames([frame_rgb(image)], prep["image_size"], prep["grey"])


def read_frames(source: str | Path, stride: int = 1, fps: float | None = None) -> tuple[list, list[dict]]:
    """``[(index, time_s, rgb, file)]`` of a video or a folder of frames (``file``: the image's
    name, ``None`` for a video), and the unreadable ones (``fps``: frame rate of a folder of
    frames, default 1; a video's own rate is used)."""
    from medad.io.images import iter_video_frames

    errors: list[dict] = []

    def on_error(index: int, err: ReadError) -> None:
        errors.append({"index": int(index), "error": str(err)})
        log.warning("skipping frame %d: %s", index, err)

    frames = [(f.index, f.time_s, f.image, f.file)
              for f in iter_video_frames(source, stride, fps=fps, on_error=on_error)]
    return frames, errors


def train_frames(normal: str | Path, out: str | Path, cfg: FramesConfig | None = None, *,
                 progress: bool = True):
    """Fit ``cfg.detector`` on normal frames (a folder of images or a video), calibrate it on a
    held-out share of them and save it to ``out`` (with the preprocessing in ``frames.json``)."""
    from medad import registry

    cfg = cfg or FramesConfig()
    frames, errors = read_frames(normal)
    if errors:
        log.warning("%d unreadable normal frames skipped", len(errors))
    if len(frames) < 4:
        raise InputError(f"{normal}: need at least 4 readable normal frames, found {len(frames)}")
    x = prepare_frames([f[2] for f in frames], cfg.image_size, cfg.grey)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x))
    n_val = max(1, int(round(cfg.val_fraction * len(x))))
    val, train = x[order[:n_val]], x[order[n_val:]]
    det = registry.create(cfg.detector, **cfg.detector_params)
    if getattr(det, "supervised", False):
        raise ConfigError(f"detector {cfg.detector!r} is supervised; frame training uses normal frames only")
    if hasattr(det, "train_options"):
        det.train_options = {"progress": progress}
    det.fit(train)
    det.calibrate(val, fpr=cfg.fpr, pixel_fpr=cfg.pixel_fpr)
    out = Path(out)
    det.save(out)
    write_json(out / PREP_FILE, {**asdict(cfg), "n_train": int(len(train)), "n_val": int(len(val)),
                                 "source": str(normal), "unreadable": errors})
    return det


def flagged_spans(times: np.ndarray, scores: np.ndarray, flagged: np.ndarray, step_s: float) -> list[dict]:
    """Group consecutive flagged frames (in screening order) into spans.

    A span runs from its first flagged frame's time to the last one's time plus ``step_s``
    (the time between screened frames)."""
    spans: list[dict] = []
    cur: dict | None = None
    for t, s, f in zip(times, scores, flagged):
        if f:
            if cur is None:
                cur = {"start_s": float(t), "end_s": 0.0, "n_frames": 0, "max_score": float(s)}
            cur["end_s"] = round(float(t) + step_s, 6)  # 1.4, not 1.4000000000000001, in the JSON
            cur["n_frames"] += 1
            cur["max_score"] = max(cur["max_score"], float(s))
        elif cur is not None:
            spans.append(cur)
            cur = None
    if cur is not None:
        spans.append(cur)
    return spans


def screen_frames(model: str | Path, source: str | Path, out: str | Path, *, stride: int = 1,
                  batch_size: int = 32, overlays: bool = True, max_overlays: int = 200,
                  fps: float | None = None) -> dict:
    """Score every ``stride``-th frame of ``source`` with the saved model; write CSV, JSON and
    overlays (see module doc). ``fps``: frame rate of a folder of frames (times and spans in
    seconds; default 1, i.e. frame numbers); a video's own rate is always used. Returns the
    summary dict."""
    from medad.detectors.base import Detector
    from medad.report.overlay import save_overlay

    from medad.utils import read_model_json

    model, out = Path(model), Path(out)
    prep = read_model_json(model, PREP_FILE, "frame-screening model (train it with `medad images train`)")
    det = Detector.load(model)
    if getattr(det, "threshold_", None) is None:
        raise ReadError("model has no calibrated threshold", model)
    if fps is not None and not fps > 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    frames, errors = read_frames(source, stride, fps)
    if not frames:
        raise ReadError("no readable frame to screen", Path(source))
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "overlays").glob("frame_*.png"):  # an earlier run's: not this run's flagged frames
        old.unlink()
    idx = np.array([f[0] for f in frames])
    times = np.array([f[1] for f in frames], dtype=np.float64)
    scores, flagged = np.zeros(len(frames)), np.zeros(len(frames), bool)
    overlay_files: list[str] = []
    has_map = False
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        x = prepare_frames([f[2] for f in chunk], prep["image_size"], prep["grey"])
        res = det.predict(x)
        scores[i:i + len(chunk)] = res.score
        flagged[i:i + len(chunk)] = res.label
        has_map = res.map is not None
        if not overlays or res.map is None:
            continue
        for j in np.flatnonzero(res.label):
            if len(overlay_files) >= max_overlays:
                break
            k = i + int(j)
            img = np.moveaxis(x[j], 0, -1)
            path = out / "overlays" / f"frame_{idx[k]:06d}.png"
            save_overlay(img[..., 0] if img.shape[-1] == 1 else img, res.map[j], path,
                         mask=None if res.mask is None else res.mask[j],
                         title=f"frame {idx[k]}{' ' + frames[k][3] if frames[k][3] else ''}  t={times[k]:.2f}s  "
                               f"score={scores[k]:.4g}  threshold={det.threshold_:.4g}")
            overlay_files.append(str(path.relative_to(out)))
    step_s = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    spans = flagged_spans(times, scores, flagged, step_s)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "time_s", "file", "score", "flagged"])
    for k in range(len(frames)):
        w.writerow([int(idx[k]), f"{times[k]:.4f}", frames[k][3] or "", f"{scores[k]:.6g}", int(flagged[k])])
    with atomic_path(out / "frames.csv") as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    summary = {
        "source": str(source), "model": str(model), "detector": det.name, "stride": int(stride),
        "n_frames_screened": int(len(frames)), "n_flagged": int(flagged.sum()),
        "threshold": float(det.threshold_), "threshold_source": (det.calibration_ or {}).get("source"),
        "spans": spans, "unreadable_frames": errors, "overlays": overlay_files,
        # flagged frames beyond max_overlays get no PNG (their rows are in frames.csv)
        "overlays_not_written": int(flagged.sum() - len(overlay_files)) if overlays and has_map else 0,
    }
    write_json(out / "summary.json", summary)
    return summary
