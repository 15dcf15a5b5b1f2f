"""Frame screening: learn normal images/frames, then score every ``stride``-th frame of a video
or a folder of frames, flag the abnormal ones, group them into time spans and draw the map of
each flagged frame.

Composes :mod:`medad.io.images` (reading, corrupt frames reported and skipped), the detector
registry (any 2D image detector), :mod:`medad.report.overlay` (PNGs) and atomic writers.

:func:`train_frames` learns normal frames alone (a one-class detector), or normal against abnormal
frames (a supervised detector such as ``classifier``, when abnormal frames are given); either way
the frame threshold comes from held-out normal frames.

Outputs of :func:`screen_frames` in ``out/``:

* ``frames.csv`` -- ``index, time_s, file, score, flagged, status, error`` per screened frame
  (``file``: the image's path below the folder for a folder of frames, empty for a video); an
  unreadable frame has a row too, with ``status`` ``error``, the reason in ``error`` and no score.
  A model trained on several abnormal classes adds ``abnormal_class, class_probability``: for a
  flagged frame the most likely abnormal class and its probability ``p(class)`` (the score is
  ``1 - p(normal)``, the sum over every abnormal class), empty for the others;
* ``summary.json`` -- source, model, threshold, flagged spans ``(start_s, end_s, n_frames,
  max_score)``, unreadable frames with the reason, ``videos_not_screened`` (the video files inside
  a folder: not read); with several abnormal classes also
  ``class_names``, ``flagged_by_class`` and each span's ``classes`` (its flagged frames per
  most likely class);
* ``overlays/<image path>.png`` (a folder of images: the image's path below the folder, ``/`` as
  ``__``, without its suffix) or ``overlays/<video stem>_f<index>.png`` (a video) -- image | map |
  blend for each flagged frame, drawn at the source image's resolution (the map upsampled to it);
  none when the detector makes no map (``summary.json`` ``maps``: false, e.g. a classifier, whose
  maps ``medad explain`` draws with Grad-CAM).

A folder of frames is searched with its subfolders (links to folders followed), frames in natural
order of their paths. Video files inside a folder are not read: they are named (``summary.json``
``videos_not_screened``; ``frames.json`` ``videos_not_read`` in training) with a note to give each
video's own path. Frames are read, scored and drawn batch by batch, so a long video is not held in
memory, and a progress bar counts the screened frames. With ``progress`` (the command line), the
first :data:`MAX_NAMED_SKIPS` unreadable frames are named on the terminal (``skipped: PATH:
REASON``), then how many more; every one is in the outputs with its reason.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from medad.errors import ConfigError, InputError, ReadError
from medad.utils import atomic_path, write_json

if TYPE_CHECKING:
    from medad.io.images import VideoFrame

log = logging.getLogger(__name__)

PREP_FILE = "frames.json"
#: smallest working side length: below it no image detector has a patch or a layer to work with
MIN_IMAGE_SIZE = 16
FRAME_FIELDS = ("index", "time_s", "file", "score", "flagged", "status", "error")
#: extra frames.csv columns of a model trained on several abnormal classes
CLASS_FIELDS = ("abnormal_class", "class_probability")
#: the name of class 0 (normal frames) in ``frames.json`` ``class_names``
NORMAL_NAME = "normal"
#: unreadable frames named one by one on the terminal (per source); the others are counted
MAX_NAMED_SKIPS = 10
#: video files in a folder named in a note (the others are counted)
MAX_NAMED_VIDEOS = 5


def _say(message: str, progress: bool) -> None:
    """A line for the user: on the terminal (above any progress bar) with ``progress``, else a
    logged warning."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        log.warning("%s", message)


def _listed(names: Sequence[str], k: int) -> str:
    """The first ``k`` of ``names``, comma-separated, with how many more."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, value: Any, minimum: int, option: str | None = None) -> None:
    """Clear :class:`ConfigError` unless ``value`` is a whole number >= ``minimum`` (``option``:
    the command-line spelling, named beside ``name``)."""
    if not (_is_int(value) and value >= minimum):
        raise ConfigError(f"{name}{f' ({option})' if option else ''} must be a whole number >= {minimum}, "
                          f"got {value!r}")


def check_share(name: str, value: Any, option: str | None = None) -> None:
    """Clear :class:`ConfigError` unless ``value`` is a number strictly between 0 and 1."""
    if not (_is_number(value) and 0.0 < float(value) < 1.0):
        raise ConfigError(f"{name}{f' ({option})' if option else ''} must be a number between 0 and 1 "
                          f"(exclusive), got {value!r}")


@dataclass
class FramesConfig:
    """How frames are prepared, trained on and thresholded.

    Args:
        detector: registry name of a 2D image detector.
        detector_params: its parameters.
        image_size: frames are resized to ``image_size`` x ``image_size`` (values scaled to [0, 1]).
        grey: convert frames to one grey channel.
        val_fraction: share of the frames of each class held out of training (a random share of a
            folder, a contiguous block of a video): the normal ones calibrate the threshold, with
            the abnormal ones (supervised training) they give the validation figures.
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
            kind = other_config_kind(raw)
            raise ConfigError(f"unknown frame-screening settings: {', '.join(sorted(map(str, unknown)))}; "
                              + (f"this looks like {kind}, not a frame-screening config (configs/images_*.yaml)"
                                 if kind else f"known: {', '.join(cls.__dataclass_fields__)}"), path)
        try:
            return cls(**raw).validate()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def validate(self) -> "FramesConfig":
        """Check the numeric settings (before any frame is read); returns ``self``. Each error
        names the setting and its command-line option."""
        if not isinstance(self.detector, str) or not self.detector:
            raise ConfigError(f"detector (--detector) must be a registry name, got {self.detector!r}")
        from medad.config import check_detector_params

        check_detector_params(self.detector_params)
        check_int("image_size", self.image_size, MIN_IMAGE_SIZE, "--image-size")
        check_share("val_fraction", self.val_fraction)
        check_share("fpr", self.fpr, "--fpr")
        if self.pixel_fpr is not None:
            check_share("pixel_fpr", self.pixel_fpr)
        check_int("seed", self.seed, 0)
        return self


def other_config_kind(raw: Mapping[str, Any]) -> str | None:
    """What other medad config the settings ``raw`` (not a frame-screening config) look like, said
    for an error message: a recording-screening config (its settings under ``screening:``, as
    :meth:`pipelines.screening.ScreeningConfig.from_yaml` reads them, or at the top level) or a
    brain-lesion config -- when every setting that is not a frame-screening one is a setting of
    that kind and of no other; ``None`` when they fit neither or both."""
    from dataclasses import fields

    if isinstance(raw.get("screening"), Mapping):
        return "a recording-screening config (for `medad screen train`)"
    from pipelines.brain_lesions import BrainLesionConfig
    from pipelines.screening import ScreeningConfig

    unknown = set(raw) - set(FramesConfig.__dataclass_fields__)
    kinds = [what for c, what in ((ScreeningConfig, "a recording-screening config (for `medad screen train`)"),
                                  (BrainLesionConfig, "a brain-lesion config (for `medad brain train`)"))
             if unknown <= {f.name for f in fields(c)}]
    return kinds[0] if unknown and len(kinds) == 1 else None


def image_detectors() -> str:
    """The registry's image detectors (:func:`medad.registry.available`), one-class and supervised
    apart, for messages."""
    from medad import registry

    names = registry.available("image")
    sup = [n for n in names if registry.get(n).supervised]
    return (f"one-class: {', '.join(n for n in names if n not in sup)}; supervised (with --abnormal): "
            f"{', '.join(sup)}")


def check_image_detector(name: str) -> None:
    """Clear :class:`ConfigError` when ``name`` is no registered detector, naming the image
    detectors only (and the closest name), before anything is built or read."""
    import difflib

    from medad import registry

    if name in registry.available():
        return
    close = difflib.get_close_matches(name, registry.available("image"), n=1)
    raise ConfigError(f"unknown detector {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                      f"image detectors: {image_detectors()}")


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


@dataclass
class FrameSource:
    """A video file or a folder of frame images (subfolders included), opened for reading.

    ``n_frames``: the frames in the source (a video's declared count, 0 if unknown); ``fps``:
    frames per second (a video's own rate, :data:`medad.io.images.DEFAULT_VIDEO_FPS` when it declares
    none, as :func:`medad.io.images.iter_video_frames` assumes; a folder's ``fps`` argument, default 1).
    ``videos``: the video files inside a folder, which are not read (see :meth:`videos_note`)."""

    path: Path
    n_frames: int
    fps: float
    files: list[Path] | None = None  # a folder's frame images; None for a video
    videos: list[Path] = field(default_factory=list)

    @classmethod
    def open(cls, source: str | Path, fps: float | None = None) -> "FrameSource":
        """Check that ``source`` can be read (clear :class:`ReadError` otherwise) and count its frames."""
        from medad.io.images import DEFAULT_VIDEO_FPS, frame_files, video_info

        p = Path(source)
        if p.is_dir():
            videos = folder_videos(p)
            try:
                files = frame_files(p)
            except ReadError as e:
                if not videos:
                    raise
                raise ReadError(f"{e.problem}, only {len(videos)} video file(s) ("
                                f"{_listed([v.relative_to(p).as_posix() for v in videos], MAX_NAMED_VIDEOS)}); "
                                f"videos inside a folder are not read: give a video's own path instead of the "
                                f"folder (e.g. {videos[0]})", p) from None
            return cls(p, len(files), float(fps or 1.0), files, videos)
        info = video_info(p)
        rate = float(info.get("fps") or 0.0)
        return cls(p, max(int(info.get("frames") or 0), 0),
                   rate if rate > 0 and math.isfinite(rate) else DEFAULT_VIDEO_FPS)

    @property
    def video_names(self) -> list[str]:
        """:attr:`videos` as their paths below the folder (``/`` separated), as the outputs name them."""
        return [v.relative_to(self.path).as_posix() for v in self.videos]

    def videos_note(self, verb: str) -> str | None:
        """A note naming the video files of a folder that were not ``verb`` (e.g. "screened") and
        how to use them, or ``None`` when there is none."""
        if not self.videos:
            return None
        names = self.video_names
        return (f"note: {len(names)} video file(s) in {self.path} not {verb}: {_listed(names, MAX_NAMED_VIDEOS)} "
                f"(only a folder's frame images are read; give a video's own path as the source to use its "
                f"frames, e.g. {self.videos[0]})")

    def n_read(self, stride: int) -> int | None:
        """How many frames a walk at ``stride`` visits (None when the video declares no count)."""
        return -(-self.n_frames // stride) if self.n_frames else None

    def file(self, index: int) -> str:
        """The image of frame ``index`` as a path below the folder ('' for a video)."""
        return self.files[index].relative_to(self.path).as_posix() if self.files is not None else ""

    def overlay_name(self, index: int) -> str:
        """Overlay file stem of frame ``index``: the image's path below the folder without its
        suffix (subfolders joined by '__'), or ``<video stem>_f<index>``."""
        if self.files is None:
            return f"{self.path.stem}_f{index:06d}"
        return "__".join(Path(self.file(index)).with_suffix("").parts)

    def frames(self, stride: int = 1, on_error: Callable[[int, ReadError], None] | None = None
               ) -> Iterator[VideoFrame]:
        """Every ``stride``-th frame (indices and times those of the source); unreadable frames go to
        ``on_error(index, ReadError)`` and the walk goes on."""
        from medad.io.images import iter_video_frames

        check_int("stride", stride, 1, "--stride")
        yield from iter_video_frames(self.path, stride, fps=self.fps, on_error=on_error, files=self.files)


def folder_videos(folder: Path) -> list[Path]:
    """The video files in ``folder`` (subfolders included, as frames are searched), sorted."""
    from medad.io.images import VIDEO_SUFFIXES
    from medad.utils import walk_files

    return sorted(f for f in walk_files(folder) if f.suffix.lower() in VIDEO_SUFFIXES)


def _skip_reporter(src: FrameSource, errors: list[dict], progress: bool,
                   on_row: Callable[[int, ReadError], None] | None = None
                   ) -> tuple[Callable[[int, ReadError], None], Callable[[str, str], None]]:
    """``on_error`` for :meth:`FrameSource.frames`, which keeps each unreadable frame of ``src`` in
    ``errors`` (``{index, error}``; ``on_row`` is called too) and names the first
    :data:`MAX_NAMED_SKIPS` of them on the terminal (``skipped: PATH: REASON``, as ``medad screen
    run`` names recordings), and ``done(what, where)``, which says how many were skipped and how many
    not named (``what``: the frames' kind and a space, or ''; ``where``: the output that lists every one)."""

    def on_error(index: int, err: ReadError) -> None:
        errors.append({"index": int(index), "error": str(err)})
        if on_row is not None:
            on_row(index, err)
        if len(errors) <= MAX_NAMED_SKIPS:  # a video's frame: its problem says which one
            _say(f"skipped: {err.path if err.path is not None else src.path}: {err.problem}", progress)

    def done(what: str, where: str) -> None:
        if errors:
            more = len(errors) - MAX_NAMED_SKIPS
            _say(f"{len(errors)} unreadable {what}frame(s) skipped in {src.path}"
                 f"{f' ({more} not named above)' if more > 0 else ''}; {where} lists each with its reason", progress)

    return on_error, done


def _read_source(src: FrameSource, cfg: FramesConfig, what: str, progress: bool
                 ) -> tuple[np.ndarray, list[dict], bool]:
    """Every readable frame of ``src`` prepared as :func:`screen_frames` prepares it
    (``(N, C, S, S)``, possibly ``N == 0``), the unreadable ones ``{index, error}`` (named as
    :func:`_skip_reporter` says) and whether the source is a video (its frames are consecutive:
    held out as one block, see :func:`holdout`)."""
    from tqdm.auto import tqdm

    errors: list[dict] = []
    on_error, done = _skip_reporter(src, errors, progress)

    # frames are shrunk to the working size as they are read: a long video is not held whole
    xs = [prepare_frames([f.image], cfg.image_size, cfg.grey)
          for f in tqdm(src.frames(1, on_error), total=src.n_read(1), desc=f"read {what} frames", unit="frame",
                        disable=not progress)]
    done(f"{what} ", "frames.json")
    c = 1 if cfg.grey else 3
    x = np.concatenate(xs) if xs else np.zeros((0, c, cfg.image_size, cfg.image_size), np.float32)
    return x, errors, src.files is None


def holdout(n: int, share: float, rng: np.random.Generator, contiguous: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of ``n`` frames with ``round(share * n)`` (at least 1, at most
    ``n - 1``) held out: a random share, or one contiguous block at a random place when the frames
    are consecutive frames of a video (neighbouring frames are near copies: a random share would
    validate on frames the detector has all but seen)."""
    n_val = min(n - 1, max(1, int(round(share * n))))
    if contiguous:
        start = int(rng.integers(0, n - n_val + 1))
        val = np.arange(start, start + n_val)
        return np.setdiff1d(np.arange(n), val), val
    order = rng.permutation(n)
    return order[n_val:], order[:n_val]


#: fewer held-out normal frames than this: no specificity is estimated (a threshold at fpr from
#: half of them would rest on a handful of frames)
MIN_SPECIFICITY_FRAMES = 10


def _validation_metrics(det, normal_val: np.ndarray, abnormal_val: list[np.ndarray], fpr: float,
                        names: Sequence[str] | None = None) -> dict:
    """Frame AUROC of held-out normal vs held-out abnormal frames (every abnormal class together;
    none of them was trained on), sensitivity at the model's threshold, and specificity by 2-fold
    cross-calibration on the held-out normal frames (:func:`medad.evaluation.cross_calibration`: the model's
    threshold was set on all of them, so their own share flagged is ``fpr`` by construction).

    With several abnormal classes, ``per_class`` (keys ``"1"``, ``"2"``, ...; ``names``: their
    names) gives each class's one-vs-normal AUROC and sensitivity at the same threshold, and,
    for a detector with ``predict_proba``, how its flagged frames were named (the most likely
    abnormal class: ``flagged_named``) and the share named right (``naming_accuracy``)."""
    from medad.evaluation import auroc, cross_calibration

    s_norm = det.score(normal_val).score
    r_abn = [det.score(v) for v in abnormal_val]
    s_abn = [r.score for r in r_abn]
    y = np.concatenate([np.zeros(len(s_norm), bool)] + [np.ones(len(s), bool) for s in s_abn])
    s = np.concatenate([s_norm, *s_abn])
    cc = cross_calibration([np.asarray(v, np.float64).reshape(1) for v in s_norm], fpr,
                           min_groups=MIN_SPECIFICITY_FRAMES, what="frames")
    out = {"frame_auroc": auroc(y, s), "auroc_items": "all held-out normal vs all held-out abnormal frames "
                                                      "(none trained on)",
           "threshold": float(det.threshold_),
           "sensitivity": float(np.mean(np.concatenate(s_abn) > det.threshold_)),
           "specificity": cc["specificity"], "specificity_method": cc["specificity_method"],
           "n_normal": int(len(s_norm)), "n_abnormal": int(len(s) - len(s_norm))}
    if "folds" in cc:
        out["specificity_folds"] = cc["folds"]
    else:
        out["specificity_note"] = cc["specificity_note"]
    if len(s_abn) > 1:
        names = list(names) if names is not None else [str(k) for k in range(1, len(s_abn) + 1)]
        out["per_class"] = {str(k): {"name": names[k - 1], "n_val": int(len(sk)),
                                     "frame_auroc": auroc(np.r_[np.zeros(len(s_norm)), np.ones(len(sk))],
                                                          np.r_[s_norm, sk]),
                                     "sensitivity": float(np.mean(sk > det.threshold_))}
                            for k, sk in enumerate(s_abn, start=1)}
        if hasattr(det, "predict_proba"):
            n_right = n_flagged = 0
            for k, r in enumerate(r_abn, start=1):
                hit = r.score > det.threshold_
                named = most_likely_abnormal(_scored_proba(det, r)[hit])[0]
                rec = out["per_class"][str(k)]
                rec["flagged_named"] = {n: int(np.sum(named == j)) for j, n in enumerate(names, start=1)}
                rec["naming_accuracy"] = float(np.mean(named == k)) if len(named) else None
                n_right, n_flagged = n_right + int(np.sum(named == k)), n_flagged + len(named)
            out["naming_accuracy"] = n_right / n_flagged if n_flagged else None
            out["naming_items"] = ("held-out abnormal frames above the threshold, named by their most likely "
                                   "abnormal class")
    return out


def _scored_proba(det, res) -> np.ndarray:
    """The class probabilities ``(N, K)`` a detector with ``predict_proba`` gave with its scores
    ``res`` (:class:`medad.detectors.classifier.ClassifierResult`: one forward pass makes both, so
    the flagged items are not run through the network again)."""
    proba = getattr(res, "proba", None)
    if proba is None:
        raise TypeError(f"{type(det).__name__} has predict_proba but gave no class probabilities with its scores")
    return np.asarray(proba)


def most_likely_abnormal(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` (class 0 normal) -> the most likely abnormal class of each
    item (``1 .. K-1``) and its probability."""
    proba = np.asarray(proba, np.float64).reshape(-1, np.shape(proba)[-1])
    k = np.argmax(proba[:, 1:], axis=1) + 1
    return k, proba[np.arange(len(k)), k]


def abnormal_classes(abnormal: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None,
                     normal: str | Path | None = None) -> list[tuple[str, Path]]:
    """The abnormal classes as ``(name, source)``, in the order given.

    ``abnormal``: one source, several, or a mapping ``{name: source}``. A source given as a string
    ``NAME=SOURCE`` (and not itself an existing path) is named ``NAME``; otherwise a class is named
    after its folder (a video: its file name without suffix). Clear :class:`ConfigError` for an
    unusable name (empty, ``normal``, with a path separator or a control character) and for two
    classes with the same name (case ignored). ``normal``: the normal source, checked first with
    :func:`check_sources` (a source given twice, or nested with another)."""
    if abnormal is None:
        return []
    if isinstance(abnormal, Mapping):
        items = [(str(k), Path(v)) for k, v in abnormal.items()]
    else:
        items = []
        for a in [abnormal] if isinstance(abnormal, (str, Path)) else list(abnormal):
            name, sep, src = str(a).partition("=")
            if isinstance(a, str) and sep and not Path(a).exists() and not any(c in name for c in "/\\"):
                items.append((name.strip(), Path(src)))
            else:
                p = Path(a)
                items.append(((p if p.name else p.resolve()).name if p.is_dir() or not p.suffix else p.stem, p))
    if normal is not None:  # a source given twice says so, not that two classes share its name
        check_sources(Path(normal), items)
    seen: dict[str, Path] = {}
    for name, src in items:
        if not name or name != name.strip() or any(c in name for c in "/\\") or not name.isprintable():
            raise ConfigError(f"abnormal class name {name!r} (for {src}) must be non-empty, without '/', '\\', "
                              f"surrounding spaces or control characters; name a class with --abnormal NAME=FOLDER")
        if name.lower() == NORMAL_NAME:
            raise ConfigError(f"abnormal class name {name!r} (for {src}) is the name of the normal class; "
                              f"name it otherwise with --abnormal NAME=FOLDER")
        if name.lower() in seen:
            raise ConfigError(f"two abnormal classes are named {name!r}: {seen[name.lower()]} and {src}; "
                              f"name them apart with --abnormal NAME=FOLDER")
        seen[name.lower()] = src
    return items


def check_sources(normal: Path, classes: list[tuple[str, Path]]) -> None:
    """Clear :class:`InputError` when a source is given twice, an abnormal source is the normal one,
    or one folder lies inside another (folders are searched with their subfolders: its frames
    would be read as both classes)."""
    named = [(NORMAL_NAME, Path(normal))] + list(classes)
    real = [p.resolve() for _, p in named]
    for j in range(1, len(named)):
        for i in range(j):
            (ni, pi), (nj, pj), ri, rj = named[i], named[j], real[i], real[j]
            what = "the normal source" if i == 0 else f"abnormal class {ni!r}"
            if ri == rj and i:
                raise InputError(f"abnormal source given twice (classes {ni!r} and {nj!r}): give each source once", pj)
            if ri == rj:
                raise InputError(f"abnormal class {nj!r} is the normal source: normal and abnormal frames must come "
                                 f"from different folders", pj)
            inner = next(((a, b) for a, b in ((ri, rj), (rj, ri)) if b in a.parents and b.is_dir() and a.is_dir()),
                         None)
            if inner is not None:
                raise InputError(f"abnormal class {nj!r} ({pj}) and {what} ({pi}) are nested folders: folders are "
                                 f"searched with their subfolders, so {inner[0]}'s frames would be read as both; "
                                 f"give folders side by side", pj)


def _check_detector(det, name: str, abnormal: list) -> None:
    """A 2D image detector, supervised exactly when abnormal frames are given (clear
    :class:`ConfigError` saying what to do otherwise)."""
    if getattr(det, "input_kind", None) != "image":
        raise ConfigError(f"detector {name!r} takes {getattr(det, 'input_kind', '?')} input, not images; "
                          f"choose an image detector ({image_detectors()})")
    supervised = bool(getattr(det, "supervised", False))
    if supervised and not abnormal:
        raise ConfigError(f"detector {name!r} is supervised: give abnormal frames too (--abnormal FOLDER_OR_VIDEO), "
                          f"or choose a detector that learns from normal frames only (e.g. --detector cutpaste)")
    if abnormal and not supervised:
        raise ConfigError(f"detector {name!r} learns from normal frames only and cannot use abnormal frames: "
                          f"drop --abnormal, or choose a supervised detector (--detector classifier)")
    if abnormal and int(getattr(det, "normal_class", 0)) != 0:
        raise ConfigError(f"normal_class must be 0 for frame training (normal frames are class 0, abnormal "
                          f"sources 1, 2, ...), got {det.normal_class}")


def _open_class(name: str, source: Path) -> FrameSource:
    """:meth:`FrameSource.open` of an abnormal class's source; its error names the class."""
    try:
        return FrameSource.open(source)
    except ReadError as e:
        raise ReadError(f"abnormal class {name!r}: {e.problem}", e.path if e.path is not None else source) from None


def train_frames(normal: str | Path, out: str | Path, cfg: FramesConfig | None = None, *,
                 abnormal: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None = None,
                 progress: bool = True):
    """Fit ``cfg.detector`` on frames (a folder of images, subfolders included, or a video),
    calibrate its threshold on held-out normal frames and save it to ``out`` (with the
    preprocessing and the training record in ``frames.json``).

    Without ``abnormal``: a one-class detector learns the normal frames. With ``abnormal`` (one
    source, or several: abnormal classes 1, 2, ..., named as :func:`abnormal_classes` says, e.g.
    ``"polyp=data/polyps"`` or ``{"polyp": "data/polyps"}``): a supervised detector (e.g.
    ``classifier``) learns normal frames (class 0) against them; the score is the abnormality
    ``1 - p(normal)``, and with several classes ``frames.json`` also keeps ``class_names`` and
    the per-class validation figures (``validation.per_class``). A source given twice, an abnormal
    source that is (or is nested with) the normal one, and two classes of one name are refused
    before any frame is read. Every class keeps ``cfg.val_fraction`` of its
    frames out of training (a random share of a folder, one contiguous block of a video); the
    threshold flags ``cfg.fpr`` of the held-out normal frames, and the held-out frames of both
    kinds give the validation frame AUROC and sensitivity (``frames.json``, ``validation``); the
    specificity comes from 2-fold cross-calibration on the held-out normal frames
    (:func:`medad.evaluation.cross_calibration`), as the frames that set the threshold cannot measure it honestly.

    Too few held-out normal frames for ``cfg.fpr`` (:func:`medad.evaluation.calibration_warning`)
    give a warning, printed with ``progress`` (else logged) and kept in ``frames.json``
    (``calibration_warning``, ``None`` when there is none); so do video files inside a source
    folder, which are not read (``videos_not_read``: source -> their paths below it)."""
    from medad import registry
    from medad.evaluation import calibration_warning

    cfg = (cfg or FramesConfig()).validate()
    # the detector is built before any frame is read: a bad name or parameter fails at once
    check_image_detector(cfg.detector)
    det = registry.create(cfg.detector, **cfg.detector_params)
    _check_detector(det, cfg.detector, [abnormal] if abnormal else [])
    named = abnormal_classes(abnormal, normal)
    abnormal = [a for _, a in named]
    # every source is opened (and a missing or empty one named) before any frame is read
    src, abnormal_srcs = FrameSource.open(normal), [_open_class(name, a) for name, a in named]
    for s_ in [src, *abnormal_srcs]:
        note = s_.videos_note("read for training")
        if note:
            _say(note, progress)
    rng = np.random.default_rng(cfg.seed)
    x, errors, is_video = _read_source(src, cfg, "normal", progress)
    if len(x) < 4:
        raise InputError(f"{normal}: need at least 4 readable normal frames, found {len(x)}")
    tr, va = holdout(len(x), cfg.val_fraction, rng, is_video)
    train, val = x[tr], x[va]
    split = {"0": "contiguous block (video)" if is_video else "random share (folder)"}  # held out, per class
    if hasattr(det, "train_options"):
        det.train_options = {"progress": progress}
    record: dict[str, Any] = {"supervised": bool(abnormal)}
    if abnormal:
        xs_tr, ys_tr, abn_val = [train], [np.zeros(len(train), np.int64)], []
        classes = {"0": {"source": str(normal), "n_train": int(len(train)), "n_val": int(len(val))}}
        unreadable = {}
        for k, ((name, a), src_a) in enumerate(zip(named, abnormal_srcs), start=1):
            xa, err_a, vid_a = _read_source(src_a, cfg, "abnormal" if len(named) == 1 else name, progress)
            if len(xa) < 2:
                raise InputError(f"{a}: need at least 2 readable abnormal frames (one to train on, one held out), "
                                 f"found {len(xa)}" + (f" (abnormal class {name!r})" if len(named) > 1 else ""))
            tr_a, va_a = holdout(len(xa), cfg.val_fraction, rng, vid_a)
            xs_tr.append(xa[tr_a])
            ys_tr.append(np.full(len(tr_a), k, np.int64))
            abn_val.append(xa[va_a])
            classes[str(k)] = {"source": str(a), "n_train": int(len(tr_a)), "n_val": int(len(va_a))}
            split[str(k)] = "contiguous block (video)" if vid_a else "random share (folder)"
            if err_a:
                unreadable[str(a)] = err_a
        det.fit(np.concatenate(xs_tr), y=np.concatenate(ys_tr))
    else:
        det.fit(train)
    det.calibrate(val, fpr=cfg.fpr, pixel_fpr=cfg.pixel_fpr)  # normal frames only, supervised or not
    # the held-out frames themselves are the calibration items (a share of them, not whole sources)
    warning = calibration_warning(len(val), [], cfg.fpr, cfg.val_fraction, "frames", group=None, fpr_name="fpr")
    if warning:
        _say(f"warning: {warning}", progress)
    if abnormal:
        record.update(abnormal=[str(a) for a in abnormal], classes=classes, unreadable_abnormal=unreadable,
                      class_weight=getattr(det, "class_weight", None),
                      validation=_validation_metrics(det, val, abn_val, cfg.fpr, [n for n, _ in named]))
        if len(named) > 1:  # one abnormal class: frames.json as before (the class needs no name)
            record["class_names"] = {str(k): n for k, n in enumerate([NORMAL_NAME] + [n for n, _ in named])}
    videos_not_read = {str(s_.path): s_.video_names for s_ in [src, *abnormal_srcs] if s_.videos}
    out = Path(out)
    det.save(out)
    write_json(out / PREP_FILE, {**asdict(cfg), "n_train": int(len(train)), "n_val": int(len(val)),
                                 "source": str(normal), "unreadable": errors, "split": split,
                                 "calibration_warning": warning, "videos_not_read": videos_not_read, **record})
    return det


def flagged_spans(times: np.ndarray, scores: np.ndarray, flagged: np.ndarray, step_s: float,
                  classes: Sequence[str] | None = None) -> list[dict]:
    """Group consecutive flagged frames (in screening order) into spans.

    A span runs from its first flagged frame's time to the last one's time plus ``step_s``
    (the time between screened frames). ``classes``: each frame's most likely abnormal class;
    each span then counts its flagged frames per class (``classes``, most frequent first)."""
    spans: list[dict] = []
    cur: dict | None = None
    for i, (t, s, f) in enumerate(zip(times, scores, flagged)):
        if f:
            if cur is None:
                cur = {"start_s": float(t), "end_s": 0.0, "n_frames": 0, "max_score": float(s)}
                if classes is not None:
                    cur["classes"] = {}
            cur["end_s"] = round(float(t) + step_s, 6)  # 1.4, not 1.4000000000000001, in the JSON
            cur["n_frames"] += 1
            cur["max_score"] = max(cur["max_score"], float(s))
            if classes is not None:
                cur["classes"][classes[i]] = cur["classes"].get(classes[i], 0) + 1
        elif cur is not None:
            spans.append(cur)
            cur = None
    if cur is not None:
        spans.append(cur)
    for sp in spans:
        if "classes" in sp:
            sp["classes"] = dict(sorted(sp["classes"].items(), key=lambda kv: -kv[1]))
    return spans


def _overlay_views(frame: np.ndarray, amap: np.ndarray, pixel_threshold: float | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The source frame in [0, 1], the map upsampled from the working grid to the frame's own
    resolution (the frame is not shrunk: a 64 px overlay is pixelated) and the mask drawn from the
    upsampled map (smooth contours, not working-grid blocks)."""
    import cv2

    h, w = frame.shape[:2]
    m = cv2.resize(np.asarray(amap, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    mask = None if pixel_threshold is None else m > pixel_threshold
    return np.asarray(frame, np.float32) / 255.0, m, mask


def _write_frames_csv(rows: list[dict], path: Path, fields: Sequence[str] = FRAME_FIELDS) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["index"]):
        w.writerow({k: r.get(k, "") for k in fields})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def screen_frames(model: str | Path, source: str | Path, out: str | Path, *, stride: int = 1,
                  batch_size: int = 32, overlays: bool = True, max_overlays: int = 200,
                  fps: float | None = None, progress: bool = True) -> dict:
    """Score every ``stride``-th frame of ``source`` with the saved model; write CSV, JSON and
    overlays (see module doc). ``fps``: frame rate of a folder of frames (times and spans in
    seconds; default 1, i.e. frame numbers); a video's own rate is always used. ``progress``: a
    tqdm bar of the frames screened. Returns the summary dict."""
    from tqdm.auto import tqdm

    from medad.detectors.base import Detector
    from medad.report.overlay import save_overlay
    from medad.utils import read_model_json

    check_int("stride", stride, 1, "--stride")
    check_int("batch_size", batch_size, 1)
    check_int("max_overlays", max_overlays, 0)
    if fps is not None and not (_is_number(fps) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps must be positive (--fps), got {fps}")
    model, out = Path(model), Path(out)
    prep = read_model_json(model, PREP_FILE, "frame-screening model (train it with `medad images train`)")
    det = Detector.load(model)
    if getattr(det, "threshold_", None) is None:
        raise ReadError("model has no calibrated threshold", model)
    # several abnormal classes (class 0 normal): flagged frames are named by their most likely class
    class_names = [prep["class_names"][str(k)] for k in range(1, len(prep.get("class_names") or {}))]
    if class_names and not hasattr(det, "predict_proba"):
        raise ReadError("model records abnormal classes but its detector gives no class probabilities", model)
    src = FrameSource.open(source, fps)
    note = src.videos_note("screened")
    if note:
        _say(note, progress)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "overlays").glob("*.png"):  # an earlier run's: not this run's flagged frames
        old.unlink()

    rows: list[dict] = []  # one per visited frame, unreadable ones included
    errors: list[dict] = []
    pending_errors = 0  # unreadable frames not yet counted on the bar

    def error_row(index: int, err: ReadError) -> None:
        nonlocal pending_errors
        rows.append({"index": int(index), "time_s": f"{index / src.fps:.4f}", "file": src.file(index),
                     "status": "error", "error": str(err)})
        pending_errors += 1

    on_error, errors_done = _skip_reporter(src, errors, progress, error_row)

    times: list[float] = []
    scores: list[float] = []
    flagged: list[bool] = []
    frame_classes: list[str] = []  # most likely abnormal class of each scored frame ('' unflagged)
    overlay_files: list[str] = []
    used_names: set[str] = set()
    has_map = False
    bar = tqdm(total=src.n_read(stride), desc=f"screen {src.path.name}", unit="frame", disable=not progress)

    def score_batch(chunk: list) -> None:
        nonlocal has_map, pending_errors
        x = prepare_frames([f.image for f in chunk], prep["image_size"], prep["grey"])
        res = det.predict(x)
        has_map = res.map is not None
        if class_names and np.any(res.label):
            lab_idx = np.flatnonzero(np.asarray(res.label, bool))
            named, p_named = most_likely_abnormal(_scored_proba(det, res)[lab_idx])  # from the scoring pass
            named_at = dict(zip(lab_idx.tolist(), zip(named.tolist(), p_named.tolist())))
        for j, f in enumerate(chunk):
            s, lab = float(res.score[j]), bool(res.label[j])
            times.append(float(f.time_s))
            scores.append(s)
            flagged.append(lab)
            rows.append({"index": int(f.index), "time_s": f"{f.time_s:.4f}", "file": f.file or "",
                         "score": f"{s:.6g}", "flagged": int(lab), "status": "ok", "error": ""})
            if class_names:
                k, pk = named_at[j] if lab else (0, None)
                frame_classes.append(class_names[k - 1] if lab else "")
                rows[-1].update(abnormal_class=frame_classes[-1], class_probability="" if pk is None else f"{pk:.4f}")
            if not (lab and overlays and has_map) or len(overlay_files) >= max_overlays:
                continue
            name = src.overlay_name(f.index)
            if name in used_names:  # e.g. a.jpg beside a.png
                name = f"{name}_f{f.index:06d}"
            used_names.add(name)
            path = out / "overlays" / f"{name}.png"
            img, amap, mask = _overlay_views(f.image, res.map[j], res.pixel_threshold)
            save_overlay(img, amap, path, mask=mask, threshold=res.pixel_threshold,
                         label=f"anomaly score ({prep.get('detector') or type(det).__name__} map units); "
                               "cyan line: pixel threshold",
                         title=f"frame {f.index}{' ' + f.file if f.file else f'  t={f.time_s:.2f}s'}  "
                               f"score={s:.4g}  threshold={det.threshold_:.4g}")  # a folder's frames have no time
            overlay_files.append(str(path.relative_to(out)))
        bar.update(len(chunk) + pending_errors)
        pending_errors = 0
        bar.set_postfix(flagged=int(sum(flagged)), refresh=False)

    try:
        chunk: list = []
        for f in src.frames(stride, on_error):
            chunk.append(f)
            if len(chunk) == batch_size:
                score_batch(chunk)
                chunk = []
        if chunk:
            score_batch(chunk)
        bar.update(pending_errors)
    finally:
        bar.close()
    if not scores:
        raise ReadError(f"no readable frame to screen ({len(errors)} unreadable)", src.path)
    errors_done("", "frames.csv")
    t = np.asarray(times, np.float64)
    step_s = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    spans = flagged_spans(t, np.asarray(scores), np.asarray(flagged, bool), step_s,
                          frame_classes if class_names else None)
    _write_frames_csv(rows, out / "frames.csv", FRAME_FIELDS + CLASS_FIELDS if class_names else FRAME_FIELDS)
    n_flagged = int(sum(flagged))
    summary = {
        "source": str(source), "model": str(model), "detector": det.name, "stride": int(stride),
        "n_frames_screened": len(scores), "n_flagged": n_flagged,
        "threshold": float(det.threshold_), "threshold_source": (det.calibration_ or {}).get("source"),
        "supervised": bool(prep.get("supervised", False)), "maps": has_map,
        "spans": spans, "unreadable_frames": errors, "overlays": overlay_files,
        "videos_not_screened": src.video_names,
        # flagged frames beyond max_overlays get no PNG (their rows are in frames.csv)
        "overlays_not_written": n_flagged - len(overlay_files) if overlays and has_map else 0,
    }
    if class_names:
        summary["class_names"] = class_names
        summary["flagged_by_class"] = {n: frame_classes.count(n) for n in class_names}
    write_json(out / "summary.json", summary)
    return summary
