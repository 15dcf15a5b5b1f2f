"""Screen a folder of recordings: which recordings, and which time spans in them, are abnormal.

Train on normal recordings only, or supervised on normal and abnormal recordings::

    model = train_screening("normals/", "model/", ScreeningConfig(detector="features"))
    model = train_screening("normals/", "model/", ScreeningConfig(detector="cnn1d"), abnormal_folder="seizures/")

then screen any folder (EDF/BDF/FIF, WFDB, WAV, text)::

    summary = screen_folder("model/", "new_recordings/", "out/")

Every recording is streamed in chunks (``iter_signal_chunks``): filtered (zero-phase band-pass,
notch), resampled, normalised per recording (robust scale: the median over its windows; for a
long recording, over snippets spread across it), cut into overlapping windows and scored by the
detector. Windows above the threshold (calibrated on held-out normal windows at
``window_fpr``) that form runs of at least ``min_windows`` become flagged intervals; a recording
with any flagged interval is abnormal.

**Channels**: a model screens the channels it was trained on, found in each recording by name;
it is never applied silently to another channel (:func:`match_channels`). Where names cannot be
compared -- plain text has none, a model trained on plain text has none -- channels are matched
by position when the counts agree, with a warning in the results; beat mode takes another lead
named like an ECG lead, with a warning. Otherwise (the model's channel missing, several channels
for a model of unnamed ones) the recording is skipped with the reason, and ``medad screen run
--channels NAME`` names the channel(s) to screen in the model's place.

Outputs in ``out/``: ``results.csv`` and ``results.json`` (one row per recording with the
channel(s) screened and any channel warning, bad recordings reported with their error), and per
screened recording ``<id>_window_scores.csv``,
BIDS-style ``<id>_events.tsv``; ``<id>-annot.fif`` (MNE annotations) and, if asked, an
annotated copy of the recording as FIF or EDF+ (any input format); for WFDB records a
``<id>.medad`` annotation file (flagged spans, and every detected beat labelled ``N`` or ``Q`` =
inside a flagged span); one PNG per flagged recording with the abnormal spans shaded. The
pipeline composes medad pieces; its own logic is only the streaming and the interval bookkeeping.

**Supervised training** (window mode; ``medad screen train NORMAL --abnormal ABNORMAL``,
``train_screening(..., abnormal_folder=...)``, ``configs/screening_eeg_supervised.yaml``): a
supervised signal detector (``cnn1d``, ``cnn2d``, ``lstm``, ``gru``, ``nmn``) learns normal vs
abnormal windows. Labels are weak, by recording: every window of a normal recording is 0, every
window of an abnormal recording 1 (its normal-looking stretches too). Both folders go through the
same preprocessing, channels and windowing; class imbalance is left to the detector's
``class_weight`` (inverse class frequency). Recordings of each class are held out by recording
(``val_fraction``); the threshold still comes from the held-out NORMAL windows at
``window_fpr``, and the held-out recordings of both classes are screened as ``screen run`` does
for the validation figures in ``screening.json`` (:func:`validate_supervised`; the specificity by
2-fold cross-calibration on the held-out normal recordings, as those set the threshold). Each
held-out recording is read once: a normal one gives its calibration windows and its scores in
one pass after the fit. The
score is the abnormal probability; ``screen run`` and ``medad explain`` (Grad-CAM by default)
treat the model like any other. Beat mode is one-class and takes no abnormal recordings.

**Beat mode** (``unit: beats``, ECG; ``configs/screening_ecg_beats.yaml``): the items are heart
beats instead of windows. R peaks are found chunk by chunk on the ECG lead (after the configured
filter and resampling); every beat (``beat_before`` to ``beat_after`` s around its R peak) is
linearly detrended, divided by the recording's median beat std, and reduced to the features of
the MIT-BIH benchmark (:func:`medad.transforms.signal.beat_template_features`): the beat minus
the recording's own median beat (a label-free patient template) plus 4 RR features relative to
the recording. A ``features`` detector with a shape block and an RR block scores them; the
threshold flags ``window_fpr`` of the beats of held-out normal recordings. Outputs per recording:
``<id>_beat_scores.csv`` (sample, time_s, score, flagged), a WFDB annotation file ``<id>.medad``
with every beat (``N``; ``Q`` with aux ``medad_abnormal score=...`` when flagged) plus the
flagged spans (runs of at least ``min_windows`` flagged beats), ``events.tsv`` and the PNG.

Beat mode also takes any one-class **signal detector** (``detector: seq_ae``, ``seq_predictor``;
``configs/screening_ecg_beats_ae.yaml``): it scores the beat minus the recording's median beat at
full resolution as one channel ``(N, 1, before + after)``, and a ``features`` detector
(``rr_detector_params``, Mahalanobis by default) scores the 4 RR features; the two scores are
robust z-scored on the held-out normal beats and averaged
(:class:`medad.detectors.fusion.ScoreFusion`, the MIT-BIH benchmark's fusion), and the threshold
comes from the same held-out beats. Image or supervised detectors are refused with a ConfigError.
With ``rr_channels: SCALE`` the signal detector instead gets the 4 RR features itself, as 4
constant channels ``SCALE * log(ratio)`` beside the beat ``(N, 5, before + after)``
(:func:`medad.transforms.signal.beat_rr_channels`, :class:`~medad.detectors.beats.RRChannelModel`): one model, no fusion
(``configs/screening_ecg_beats_rr.yaml``, the MIT-BIH benchmark's deep model chosen on training
records). Otherwise either beat model's score is the mean of a beat-shape part and an RR part (:class:`BeatPart`);
``medad explain`` (:func:`explain_recording`) explains the shape part over the beat's samples
(the kNN model by KernelSHAP / LIME) and the RR part over the 4 RR features.

**Per-site normalisation** (``site_normalize: folder|subfolder``, or ``medad screen run
--site-normalize``): recordings from another site or device shift feature levels (gain,
electrodes, filters). With the option, the feature vectors of all windows (beats) of the screened
folder -- or of each subfolder, one per site -- are robust z-scored (median, IQR) against that
group's own statistics, and put on the training features' scale before scoring, in place of
the training set's statistics. Assumption: most items of each group are normal (a folder of
mostly abnormal recordings would look normal). Needs feature vectors: the ``features``
detector, or beat mode with any detector (its input is the beat features); every
recording of the folder is featurised before any is scored (features are held in memory).
"""

from __future__ import annotations

import csv
import importlib
import io
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from medad.detectors.base import Detector
from medad.detectors.beats import RRChannelModel
from medad.errors import ConfigError, InputError, MedadError, ReadError
from medad.evaluation import calibration_warning

MODEL_CONFIG = "screening.json"
NO_TEXT_RATE = ("plain-text recording has no sampling rate: give it with --text-sfreq HZ (medad screen train / run) "
                "or text_sfreq in the screening config")
DETECTOR_DIR = "detector"


@dataclass
class ScreeningConfig:
    """How recordings are preprocessed, windowed, scored and turned into decisions.

    Attributes:
        detector: registry name of the window detector (``"features"`` is the classical baseline).
        detector_params: its parameters (``sfreq`` is filled in when the detector takes one).
        sfreq: working sampling rate (every recording is resampled to it); ``None``: the rate of
            the first training recording.
        bandpass: ``[low, high]`` Hz (either may be null), or null for none.
        notch: mains frequency to remove (50 or 60), or null.
        window_seconds / step_seconds: window length and hop (overlap = window - step).
        normalize: ``"recording"`` (per-channel robust scale of the whole recording, estimated
            from snippets; keeps "louder than usual" information), ``"window"`` (each window
            on its own: fully amplitude-blind) or ``"none"``.
        channels: channel names to use (default: those of the first training recording). At
            screening a recording is screened on the model's channels, found by name
            (:func:`match_channels`: where names cannot be compared -- plain text, a model trained
            on unnamed channels -- by position, with a warning unless neither side has names; else
            it is skipped with the reason; ``medad screen run --channels`` names others to use in
            their place).
        channel_types: ``"all"``, or ``"eeg"``: when ``channels`` is not set, keep EEG channels
            only -- drop those whose name says ECG/EKG, EMG, EOG, respiration (resp, effort,
            breath, airflow), SpO2, pulse, or trigger/stim/status/event/annotation
            (:func:`non_eeg_kind`), and those flat in training (level below
            :data:`FLAT_RELATIVE` of the median channel's in at least half of the training
            recordings checked); training says which were dropped and why.
        chunk_seconds: recordings are read and processed this much at a time.
        window_fpr: share of held-out normal windows (beat mode: beats) above the threshold.
        min_windows: consecutive flagged windows (beat mode: beats) needed to make a flagged interval.
        val_fraction: share of training recordings held out for calibration (by recording);
            with a single training recording, its last ``val_fraction`` of windows. Supervised
            training holds out this share of the abnormal recordings too (for validation).
        max_train_windows: windows (beats) kept for fitting (evenly subsampled beyond that; per
            class in supervised training).
        max_window_bytes: memory cap for the collected training windows.
        text_sfreq: sampling rate of plain-text recordings (they carry none).
        text_layout: how plain-text recordings lay out their values: ``"auto"`` (a table of equal
            lines: one channel a column, one time sample a line; a signal wrapped over lines with a
            shorter last one: one channel), ``"columns"`` or ``"wrapped"`` (one signal, all values
            in file order); see :func:`medad.io.signals._text_read`.
        filter_method: ``"fft"`` (squared-magnitude response applied in the frequency domain,
            fast on long chunks) or ``"sos"`` (``sosfiltfilt``); both zero-phase, same filter.
        workers: threads that read, filter and score chunks in parallel.
        ecg_beats: for WFDB input whose (first used) channel is an ECG lead, also find R peaks
            and annotate every beat (``N``, or ``Q`` inside flagged spans) in the output WFDB
            annotation file.
        unit: ``"windows"`` (fixed windows on a time grid) or ``"beats"`` (ECG beat mode, see the
            module docstring): the ``features`` detector, or any one-class signal detector
            (``seq_ae``, ``seq_predictor``) fused with an RR model (``rr_detector_params``).
        beat_before / beat_after: seconds kept before / after each R peak (beat mode).
        beat_step: beat shape sampled every this many samples (beat mode; default about 90 Hz:
            4 at 360 Hz, for the ``features`` detector; every sample for a signal detector).
        rr_detector_params: beat mode with a signal detector: parameters of the ``features``
            detector (precomputed features) on the 4 RR features whose score is fused with the
            signal detector's (:class:`medad.detectors.fusion.ScoreFusion`).
        rr_channels: beat mode with a signal detector: instead of that fusion, give the detector
            the 4 RR features as constant input channels ``rr_channels * log(ratio)`` beside the
            beat (:class:`~medad.detectors.beats.RRChannelModel`; ``None``: the fusion).
        train_exclude_beats: beat mode, training only: name pattern (``{record}`` = record id) of
            a CSV next to each normal recording listing R-peak samples (last column, one header
            line) of known abnormal beats, e.g. ``"{record}_pvc_beats.csv"``; detected beats
            within 50 ms of a listed one are left out of fitting, calibration and the
            recording's template. Recordings without such a file are used whole.
        site_normalize: ``"none"``, ``"folder"`` or ``"subfolder"``: at screening, robust z-score
            the features of the screened items against the statistics of the whole folder or of
            each subfolder (a site); see the module docstring. ``features`` detector or beat mode.
        seed: seeds the detector and the recording split.
    """

    detector: str = "features"
    detector_params: dict[str, Any] = field(default_factory=dict)
    sfreq: float | None = None
    bandpass: list[float | None] | None = field(default_factory=lambda: [0.5, 45.0])
    notch: float | None = 50.0
    window_seconds: float = 2.0
    step_seconds: float = 1.0
    normalize: str = "recording"
    channels: list[str] | None = None
    channel_types: str = "all"
    chunk_seconds: float = 300.0
    window_fpr: float = 0.01
    min_windows: int = 2
    val_fraction: float = 0.2
    max_train_windows: int = 20000
    max_window_bytes: int = 512 * 2**20
    text_sfreq: float | None = None
    text_layout: str = "auto"
    filter_method: str = "fft"
    ecg_beats: bool = True
    workers: int = 2
    unit: str = "windows"
    beat_before: float = 0.25
    beat_after: float = 0.45
    beat_step: int | None = None
    rr_detector_params: dict[str, Any] = field(default_factory=lambda: {"model": "mahalanobis"})
    rr_channels: float | None = None
    train_exclude_beats: str | None = None
    site_normalize: str = "none"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScreeningConfig":
        """From a mapping; unknown keys are a clear error. ``fpr`` (the name of the option,
        ``--fpr``, and of the frame-screening key) is accepted for ``window_fpr``."""
        from medad.config import dataclass_from_dict

        d = dict(d or {})
        if "fpr" in d:
            if "window_fpr" in d:
                raise ConfigError("give fpr or window_fpr (the same setting), not both")
            d["window_fpr"] = d.pop("fpr")
        return dataclass_from_dict(cls, d, "screening")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ScreeningConfig":
        from medad.config import load_config

        cfg = load_config(path)
        try:  # a wrong key or value is reported with the file it is in
            out = cls.from_dict(cfg.get("screening", cfg))
            out.validate()
        except ConfigError as e:
            raise ConfigError(e.problem, path) from None
        except (TypeError, ValueError) as e:  # e.g. a list where a mapping or number belongs
            raise ConfigError(f"invalid screening settings: {e}", path) from None
        return out

    def validate(self) -> None:
        from medad.config import check_detector_params

        check_detector_params(self.detector_params)
        if self.window_seconds <= 0 or not 0 < self.step_seconds <= self.window_seconds:
            raise ConfigError(f"need 0 < step_seconds <= window_seconds, got {self.step_seconds}, {self.window_seconds}")
        if self.normalize not in ("recording", "window", "none"):
            raise ConfigError(f"normalize must be 'recording', 'window' or 'none', got {self.normalize!r}")
        check_numbers(self)
        if self.channel_types not in CHANNEL_TYPES:
            raise ConfigError(f"channel_types must be one of {', '.join(CHANNEL_TYPES)}, got {self.channel_types!r}")
        if self.channels is not None and (isinstance(self.channels, str) or not all(
                isinstance(c, str) and c for c in self.channels)):
            raise ConfigError(f"channels must be a list of channel names, got {self.channels!r}")
        from medad.io.signals import check_text_layout

        check_text_layout(self.text_layout)
        if self.filter_method not in ("fft", "sos"):
            raise ConfigError(f"filter_method must be 'fft' or 'sos', got {self.filter_method!r}")
        if self.chunk_seconds < 4 * self.window_seconds:
            raise ConfigError("chunk_seconds must be at least 4 x window_seconds")
        if self.unit not in ("windows", "beats"):
            raise ConfigError(f"unit must be 'windows' or 'beats', got {self.unit!r}")
        if self.unit == "beats":
            if self.beat_signal:
                check_beat_detector(self.detector)
            if self.rr_channels is not None and (not self.beat_signal or not float(self.rr_channels) > 0):
                raise ConfigError(f"rr_channels ({self.rr_channels}) needs unit: beats with a signal detector and a "
                                  f"positive scale (e.g. 5); leave it null for the RR fusion")
            if self.beat_fusion:
                if not isinstance(self.rr_detector_params, dict):
                    raise ConfigError(f"rr_detector_params must be a mapping (name: value), got "
                                      f"{self.rr_detector_params!r}")
            if self.beat_before <= 0 or self.beat_after <= 0:
                raise ConfigError(f"beat_before and beat_after must be positive, got {self.beat_before}, "
                                  f"{self.beat_after}")
            if self.beat_step is not None and int(self.beat_step) < 1:
                raise ConfigError(f"beat_step must be >= 1, got {self.beat_step}")
        check_site_normalize(self.site_normalize, self.detector, self.unit)

    @property
    def beat_signal(self) -> bool:
        """Beat mode with a signal detector (on the beat minus its template), not ``features``."""
        return self.unit == "beats" and self.detector != "features"

    @property
    def beat_fusion(self) -> bool:
        """Beat mode with a signal detector fused with an RR model (no ``rr_channels``)."""
        return self.beat_signal and not self.rr_channels

    def beat_step_at(self, sfreq: float) -> int:
        """Beat shape sampling step at ``sfreq``: ``beat_step``, else every sample for a signal
        detector and about 90 Hz for the ``features`` detector."""
        if self.beat_step:
            return int(self.beat_step)
        return 1 if self.beat_signal else max(1, int(round(sfreq / 90.0)))

    def beat_samples(self, sfreq: float) -> tuple[int, int]:
        """Samples kept before and after each R peak at ``sfreq``."""
        return int(round(self.beat_before * sfreq)), int(round(self.beat_after * sfreq))


SITE_MODES = ("none", "folder", "subfolder")
CHANNEL_TYPES = ("all", "eeg")

#: numeric settings checked before any data is read: name -> (test, what it must be)
NUMBER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "window_fpr": (lambda v: 0 < v < 1, "between 0 and 1 (exclusive), e.g. 0.01"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.2"),
    "sfreq": (lambda v: v > 0, "a positive rate in Hz"),
    "text_sfreq": (lambda v: v > 0, "a positive rate in Hz"),
    "window_seconds": (lambda v: v > 0, "positive"),
    "chunk_seconds": (lambda v: v > 0, "positive"),
    "min_windows": (lambda v: v >= 1 and float(v).is_integer(), "a whole number >= 1"),
    "max_train_windows": (lambda v: v >= 2 and float(v).is_integer(), "a whole number >= 2"),
    "max_window_bytes": (lambda v: v > 0, "positive"),
    "workers": (lambda v: v >= 1 and float(v).is_integer(), "a whole number >= 1"),
}


def number_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` setting (:data:`NUMBER_RULES`), or ``None`` (also for
    ``None``: unset); the CLI uses it to name its own option."""
    if value is None or name not in NUMBER_RULES:
        return None
    ok, what = NUMBER_RULES[name]
    try:
        v = float(value)
        good = math.isfinite(v) and ok(v)
    except (TypeError, ValueError):
        good = False
    return None if good else f"{name} must be {what}, got {value!r}"


def check_numbers(cfg: ScreeningConfig) -> None:
    """ConfigError naming the first numeric setting of ``cfg`` out of range (e.g. window_fpr=0,
    which would only fail after fitting)."""
    for name in NUMBER_RULES:
        problem = number_problem(name, getattr(cfg, name))
        if problem:
            raise ConfigError(problem)


def signal_detectors(supervised: bool) -> list[str]:
    """Registry names of the signal detectors that are (or are not) supervised."""
    from medad import registry

    return sorted(n for n in registry.available()
                  if registry.get(n).input_kind == "signal" and registry.get(n).supervised == supervised)


def check_beat_detector(name: str) -> None:
    """Clear error for a detector beat mode cannot train: beat mode fits on normal beats only,
    so it takes the ``features`` detector or a one-class detector of signal input."""
    from medad import registry

    cls = registry.get(name)  # an unknown name is a ConfigError listing the known ones
    if cls.input_kind != "signal" or cls.supervised:
        why = (f"takes {cls.input_kind} input" if cls.input_kind != "signal"
               else "is supervised (needs labelled abnormal beats; beat mode trains on normal recordings only)")
        raise ConfigError(f"unit: beats cannot use detector {name!r}: it {why}; use one of "
                          f"{', '.join(signal_detectors(False))}")


def check_supervised(cfg: ScreeningConfig, abnormal: bool) -> None:
    """Clear error, before any recording is read, when the detector and the training data do not
    go together: abnormal recordings (supervised training) need window mode and a supervised
    signal detector, and a supervised detector needs abnormal recordings."""
    from medad import registry

    if abnormal and cfg.unit == "beats":
        raise ConfigError("unit: beats is one-class (it learns normal beats only) and takes no abnormal recordings "
                          "(--abnormal): train it on normal recordings alone, or use window mode (unit: windows) "
                          f"with a supervised detector ({', '.join(signal_detectors(True))})")
    if cfg.detector == "features":  # registered on import (see _detector)
        importlib.import_module("medad.detectors.features")
    cls = registry.get(cfg.detector)  # an unknown name is a ConfigError listing the known ones
    if cls.input_kind != "signal":  # said now, not after every recording is read
        raise ConfigError(f"detector {cfg.detector!r} takes {cls.input_kind} input; screening needs a signal "
                          f"detector: {', '.join(sorted(signal_detectors(False) + signal_detectors(True)))}")
    if abnormal and not cls.supervised:
        raise ConfigError(f"detector {cfg.detector!r} is one-class (it learns normal recordings only) and cannot use "
                          f"abnormal recordings (--abnormal): choose a supervised detector -- "
                          f"{', '.join(signal_detectors(True))} (e.g. --detector cnn1d, or --config "
                          f"configs/screening_eeg_supervised.yaml) -- or leave out --abnormal")
    if not abnormal and cls.supervised:
        raise ConfigError(f"detector {cfg.detector!r} is supervised (it learns normal vs abnormal windows): give a "
                          f"folder of abnormal recordings too (CLI: --abnormal FOLDER; train_screening(..., "
                          f"abnormal_folder=...)), or use a one-class detector that learns normal recordings only: "
                          f"{', '.join(signal_detectors(False))}")


def check_site_normalize(mode: str, detector: str, unit: str = "windows") -> None:
    """Clear error when per-site normalisation is asked for where it cannot work: it rescales
    feature vectors, so the model must score features: the ``features`` detector, or beat mode
    (any detector there scores the beat features: the beat minus its template and RR)."""
    if mode not in SITE_MODES:
        raise ConfigError(f"site_normalize must be one of {', '.join(SITE_MODES)}, got {mode!r}")
    if mode != "none" and detector != "features" and unit != "beats":
        raise ConfigError(f"site_normalize={mode!r} z-scores feature vectors and needs the 'features' detector "
                          f"(or unit: beats); detector {detector!r} scores raw windows (use normalize: recording "
                          f"or window for amplitude robustness there)")


# ---------------------------------------------------------------------------- files
def list_recordings(folder: str | Path) -> list[Path]:
    """Signal files under ``folder`` (recursively; WFDB records once, by their ``.hea``)."""
    from medad.io.signals import ANNOT_SUFFIXES, is_signal_file
    from medad.utils import walk_files

    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ReadError("folder not found", folder)
    # documentation next to data (README.txt, SOURCE.txt, ...) is not a recording, nor are MNE
    # annotation files (``*-annot.fif``, as screening itself writes them beside the data)
    docs = ("readme", "source", "license", "licence", "notes", "changelog")
    # walk_files follows links to folders (a site folder linked into a study folder), never looping
    out = [p for p in walk_files(folder) if is_signal_file(p) and not p.name.lower().startswith(docs)
           and not p.name.lower().endswith(ANNOT_SUFFIXES)]
    if not out:
        raise ReadError("no recordings found (EDF/BDF/FIF, WFDB .hea, WAV, text)", folder)
    return out


# ---------------------------------------------------------------------------- preprocessing
class Preprocessor:
    """Streams one recording as preprocessed windows on a fixed time grid.

    Chunks are read with enough context (``pad`` seconds each side) that filter and resampling
    edge effects never reach a window, except at the very start and end of the recording.
    """

    def __init__(self, cfg: ScreeningConfig, sfreq: float, channels: list[str] | None, *,
                 by_position: bool = False, chosen: Sequence[str] | None = None):
        self.cfg = cfg
        self.sfreq = float(sfreq)
        self.channels = channels
        self.by_position = bool(by_position)  # the model's channels have no names (see match_channels)
        self.chosen = list(chosen) if chosen else None  # channels to use in their place (--channels)
        low = cfg.bandpass[0] if cfg.bandpass else None
        self.pad = 4.0 if low is None else float(min(30.0, max(4.0, 3.0 / low)))
        self._sos: dict[float, Any] = {}

    def header(self, path: Path):
        from medad.io.signals import read_header

        return read_header(path, sfreq=self.cfg.text_sfreq, text_layout=self.cfg.text_layout)

    def match(self, hdr) -> tuple[list[int], str | None]:
        """The recording's channels to use (indices, the model's order) and a warning when
        they were matched without names; a ReadError when they cannot be (:func:`match_channels`)."""
        if self.channels is None:
            return list(range(len(hdr.ch_names))), None
        return match_channels(self.channels, hdr, by_position=self.by_position, chosen=self.chosen,
                              beats=self.cfg.unit == "beats")

    def picks(self, hdr) -> list[int]:
        return self.match(hdr)[0]

    def filter(self, x: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
        from medad.transforms.signal import filter_sos, resample, zero_phase

        cfg = self.cfg
        low, high = (cfg.bandpass or [None, None])[:2]
        if fs not in self._sos:
            self._sos[fs] = filter_sos(fs, low, high, notch_freq=cfg.notch)
        x = zero_phase(x, self._sos[fs], fs, method=cfg.filter_method)
        if abs(fs - self.sfreq) > 1e-6:
            x = resample(x, fs, self.sfreq)
        return x, self.sfreq

    def scale(self, path: Path, hdr, picks: list[int], n_pieces: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (center, scale) of the recording for ``normalize="recording"``.

        The median, over the recording's windows (``window_seconds`` every ``step_seconds``, the
        scoring grid), of each window's median and robust scale (:func:`robust_scale`), so
        abnormal stretches -- a minority of windows -- do not shift it. A recording up to
        ``n_pieces`` snippets long is filtered whole and every window of it counts, the first and
        last included: they are scored too, and the zero-phase filter odd-extends the ends, so
        its edges stay close to the rest (dropping ``pad`` seconds of edges would leave only the
        middle 8 s of a 20 s recording, which one burst fills). A longer recording gives
        ``n_pieces`` 10 s snippets spread over it, each read with ``pad`` seconds of context on
        both sides that are dropped after filtering; it is never read whole.
        """
        from medad.transforms.signal import robust_scale

        if self.cfg.normalize != "recording":
            return np.zeros((len(picks), 1), np.float32), np.ones((len(picks), 1), np.float32)
        med, sc = robust_scale(self._spread_windows(path, hdr, picks, n_pieces), axis=-1, eps=1e-12)  # (P, C, 1)
        return np.median(med, axis=0).astype(np.float32), np.median(sc, axis=0).astype(np.float32)

    def levels(self, path: Path, hdr, picks: list[int]) -> np.ndarray:
        """Per-channel level of the filtered recording (median over its windows, read as
        :meth:`scale` reads them, of each window's standard deviation): finds flat channels."""
        return np.median(self._spread_windows(path, hdr, picks).std(-1), axis=0)

    def _spread_windows(self, path: Path, hdr, picks: list[int], n_pieces: int = 32) -> np.ndarray:
        """Filtered windows ``(P, C, n)`` of a whole short recording, or of ``n_pieces`` snippets
        spread over a long one (see :meth:`scale`)."""
        from medad.io.signals import iter_signal_chunks

        dur = hdr.n_times / hdr.sfreq
        snippet = 10.0
        span = snippet + 2 * self.pad
        n = max(1, int(round(self.cfg.window_seconds * self.sfreq)))
        hop = max(1, int(round(self.cfg.step_seconds * self.sfreq)))

        def windows_of(start: float, stop: float, edge: float) -> np.ndarray:
            """(P, C, n) windows of [start, stop) after filtering, ``edge`` s dropped each side."""
            _, x = next(iter_signal_chunks(path, stop - start + 1.0, picks=picks, header=hdr, start_seconds=start,
                                           stop_seconds=stop, sfreq=self.cfg.text_sfreq))
            y, fs = self.filter(x, hdr.sfreq)
            e = int(round(edge * fs))
            y = y[:, e: y.shape[1] - e]
            if y.shape[1] < n:  # shorter than a window: the whole of it is the one window
                return y[None]
            return np.lib.stride_tricks.sliding_window_view(y, n, axis=1)[:, ::hop].transpose(1, 0, 2)

        if dur <= n_pieces * span:  # short: every window of it
            return windows_of(0.0, dur, 0.0)
        # long: snippets spread over the recording, their filter edges dropped
        return np.concatenate([windows_of(float(a), float(a + span), self.pad)
                               for a in np.linspace(0, dur - span, n_pieces)])

    def windows(self, path: Path, hdr=None, fn: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                workers: int | None = None) -> Iterator[Any]:
        """Yield ``(start times (n,), windows (n, C, W))`` batches for one recording, in time order,
        or ``fn(starts, windows)`` of each batch (run in the worker threads: scoring overlaps reading).

        Each chunk owns the grid windows that start in ``[c0 + pad, c0 + step + pad)`` (the first
        from 0), so chunks are independent and are processed by ``workers`` threads (NumPy, SciPy
        FFTs and MNE's reading release the GIL).
        """
        from concurrent.futures import ThreadPoolExecutor

        from medad.io.signals import iter_signal_chunks

        cfg = self.cfg
        hdr = hdr or self.header(path)
        if hdr.sfreq is None:
            raise ReadError(NO_TEXT_RATE, path)
        picks = self.picks(hdr)
        med, sc = self.scale(path, hdr, picks)
        fs_in = float(hdr.sfreq)
        dur = hdr.n_times / fs_in
        W, pad = cfg.window_seconds, self.pad
        if dur < W:
            raise ReadError(f"recording of {dur:.2f} s is shorter than one window ({W} s)", path)
        core = max(cfg.chunk_seconds, 4 * W)
        n_chunk = int(round((core + 2 * pad + W) * fs_in))
        step_s = (n_chunk - int(round((2 * pad + W) * fs_in))) / fs_in  # as iter_signal_chunks rounds it
        lo, hi = np.full(len(picks), np.inf), np.full(len(picks), -np.inf)

        def chunks():  # the raw range of every channel, to tell a flat (silent, all-zero) recording
            nonlocal lo, hi
            for c0, x in iter_signal_chunks(path, n_chunk / fs_in, (2 * pad + W), picks=picks, header=hdr,
                                            sfreq=cfg.text_sfreq):
                if x.shape[1]:
                    lo, hi = np.minimum(lo, x.min(1)), np.maximum(hi, x.max(1))
                yield c0, x

        def work(item):
            c0, x = item
            out = self._cut(c0, x, fs_in, dur, step_s, med, sc)
            return out if fn is None else fn(*out)

        n_workers = max(1, int(workers if workers is not None else cfg.workers))
        if n_workers == 1:
            for item in chunks():
                yield work(item)
        else:
            with ThreadPoolExecutor(n_workers) as ex:
                pending = []
                for item in chunks():  # bounded read-ahead: at most 2 x workers chunks in memory
                    pending.append(ex.submit(work, item))
                    if len(pending) >= 2 * n_workers:
                        yield pending.pop(0).result()
                for fut in pending:
                    yield fut.result()
        # known only once every sample was read: a constant recording has nothing to score (its
        # filtered, normalised windows are all zero, which the detector would call very abnormal)
        if np.all(hi <= lo):
            raise ReadError("flat signal (all samples equal" + (f" in each of the {len(picks)} channels used)"
                                                                if len(picks) > 1 else ")"), path)

    def _cut(self, c0: float, x: np.ndarray, fs_in: float, dur: float, step_s: float,
             med: np.ndarray, sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filter one chunk and cut the grid windows it owns."""
        from medad.transforms.signal import robust_zscore

        cfg = self.cfg
        W, S, pad = cfg.window_seconds, cfg.step_seconds, self.pad
        y, fs = self.filter(x, fs_in)
        n_w = int(round(W * fs))
        c1 = c0 + x.shape[1] / fs_in
        a = 0.0 if c0 <= 0 else c0 + pad
        b = c0 + step_s + pad if c1 < dur - 1e-9 else dur
        j0 = int(math.ceil(a / S - 1e-9))
        j1 = int(math.floor(min((b - 1e-9) / S, (dur - W) / S + 1e-9)))  # start < b and start + W <= dur
        if c1 >= dur - 1e-9:
            j1 = int(math.floor((dur - W) / S + 1e-9))
        starts = np.arange(j0, j1 + 1) * S
        if len(starts) == 0:
            return starts.astype(np.float64), np.zeros((0, y.shape[0], n_w), np.float32)
        if y.shape[1] < n_w:
            y = np.pad(y, ((0, 0), (0, n_w - y.shape[1])))
        idx = np.minimum(np.round((starts - c0) * fs).astype(int), y.shape[1] - n_w)
        view = np.lib.stride_tricks.sliding_window_view(y, n_w, axis=1)  # (C, n, W)
        w = np.ascontiguousarray(view[:, idx].transpose(1, 0, 2))
        if cfg.normalize == "recording":
            w = (w - med[None]) / sc[None]
        elif cfg.normalize == "window":
            w = robust_zscore(w)
        return starts.astype(np.float64), w.astype(np.float32, copy=False)


    def beat_channel(self, hdr) -> int:
        """The ECG lead beats are found on: the model's lead as :func:`match_channels` finds it;
        without a model lead (choosing the first training recording's), the first channel named
        like an ECG lead, else channel 0."""
        if self.channels:
            return self.match(hdr)[0][0]
        return next((i for i, c in enumerate(hdr.ch_names) if looks_like_ecg(c)), 0)

    def beats(self, path: Path, hdr=None, *, channel: int | None = None,
              cut: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """R peaks (samples at the working rate) of one recording and, with ``cut``, its beats
        ``(N, before + after)`` (filtered, resampled; not yet normalised).

        The recording is read in chunks that overlap by twice a margin (filter pad + beat span +
        1 s); each chunk owns the peaks in ``[c0 + margin, c0 + step + margin)`` (the first from
        0, the last to the end), so every beat is found and cut away from a chunk's edges.
        """
        from medad.io.signals import iter_signal_chunks
        from medad.transforms.signal import beat_windows, detect_r_peaks

        cfg = self.cfg
        hdr = hdr or self.header(path)
        if hdr.sfreq is None:
            raise ReadError(NO_TEXT_RATE, path)
        fs_in, fs = float(hdr.sfreq), self.sfreq
        dur = hdr.n_times / fs_in
        if dur < 2.0:
            raise ReadError(f"recording of {dur:.2f} s is too short to find beats (need 2 s)", path)
        before, after = cfg.beat_samples(fs)
        margin = self.pad + max(cfg.beat_before, cfg.beat_after) + 1.0
        core = max(cfg.chunk_seconds, 4 * margin)
        n_chunk = int(round((core + 2 * margin) * fs_in))
        step_s = (n_chunk - int(round(2 * margin * fs_in))) / fs_in  # as iter_signal_chunks rounds it
        ch = self.beat_channel(hdr) if channel is None else channel
        peaks, beats = [], []
        for c0, x in iter_signal_chunks(path, n_chunk / fs_in, 2 * margin, picks=[ch], header=hdr,
                                        sfreq=cfg.text_sfreq):
            y, _ = self.filter(x, fs_in)
            last = c0 + x.shape[1] / fs_in >= dur - 1e-9
            p = detect_r_peaks(y[0], fs)
            t = c0 + p / fs
            own = (t >= c0 + margin) if c0 > 0 else np.ones(len(p), bool)
            if not last:
                own &= t < c0 + step_s + margin
            p = p[own]
            peaks.append(p + int(round(c0 * fs)))
            if cut:
                beats.append(beat_windows(y[0], p, before, after)[:, 0])
        pk = np.concatenate(peaks)
        # the same beat found by two chunks a sample or two apart: keep the first
        keep = np.r_[True, np.diff(pk) > int(0.2 * fs)] if len(pk) else np.zeros(0, bool)
        return pk[keep], (np.concatenate(beats)[keep] if cut else None)


# ---------------------------------------------------------------------------- beat features
BEAT_MATCH_SECONDS = 0.05  # a listed beat and a detected R peak closer than this are the same beat


def match_beats(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """For each of the sorted times ``a``, the index of the nearest of the sorted times ``b``
    when it lies within ``tol``, else -1."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(b) == 0:
        return np.full(len(a), -1)
    i = np.searchsorted(b, a)
    lo, hi = np.clip(i - 1, 0, len(b) - 1), np.clip(i, 0, len(b) - 1)
    j = np.where(np.abs(b[lo] - a) <= np.abs(b[hi] - a), lo, hi)
    return np.where(np.abs(b[j] - a) <= tol, j, -1)


def beat_features(beats: np.ndarray, rr: np.ndarray, step: int) -> np.ndarray:
    """Features of the beats ``(N, T)`` of ONE recording (the benchmark's chain): linearly
    detrended, divided by the recording's median beat std, minus the recording's median beat
    (every ``step``-th sample), plus 4 RR features (:func:`medad.transforms.signal.beat_template_features`)."""
    from medad.transforms.signal import beat_template_features, detrend, group_std_normalise

    g = np.zeros(len(beats), dtype=int)
    b = group_std_normalise(detrend(beats)[:, None], g)[:, 0]
    return beat_template_features(b, g, rr, step)


def recording_beat_features(pre: Preprocessor, path: Path, hdr=None,
                            exclude: str | None = None, channel: int | None = None) -> dict[str, Any]:
    """R peaks, per-beat features and beat envelope of one recording. ``exclude``: the
    ``train_exclude_beats`` pattern; listed beats are dropped (their RR intervals still count
    for their neighbours). ``channel``: the ECG lead (default :meth:`Preprocessor.beat_channel`)."""
    from medad.datasets.signals import read_beat_csv, rr_features
    from medad.io.signals import record_id_from_path

    hdr = hdr or pre.header(path)
    peaks, beats = pre.beats(path, hdr, channel=channel)
    if len(peaks) < 3:
        raise ReadError(f"found {len(peaks)} beat(s); beat mode needs an ECG lead with at least 3", path)
    fs = pre.sfreq
    rr = rr_features(peaks, fs)
    keep = np.ones(len(peaks), bool)
    if exclude:
        f = Path(path).parent / exclude.format(record=record_id_from_path(path))
        if f.is_file():
            listed = np.sort(read_beat_csv(f) / float(hdr.sfreq))
            keep = match_beats(peaks / fs, listed, BEAT_MATCH_SECONDS) < 0
    if keep.sum() < 3:
        raise ReadError("fewer than 3 beats left after excluding the listed abnormal beats", path)
    feats = beat_features(beats[keep], rr[keep], pre.cfg.beat_step_at(fs))
    return {"peaks": peaks[keep], "features": feats, "n_excluded": int((~keep).sum()),
            "envelope": np.stack([beats[keep].min(1), beats[keep].max(1)], axis=-1)[:, None]}


# ---------------------------------------------------------------------------- training
def _detector(cfg: ScreeningConfig, sfreq: float):
    """The unfitted model of ``cfg``: its detector, or in beat mode with a signal detector a
    :class:`~medad.detectors.fusion.ScoreFusion` of that detector (beat minus template, one
    channel) and a ``features`` detector of the 4 RR features -- with ``rr_channels``, an
    :class:`~medad.detectors.beats.RRChannelModel` (the detector alone, the RR features as input channels)."""
    import inspect

    from medad import registry

    if cfg.detector == "features":  # registered on import; spares importing every detector module
        importlib.import_module("medad.detectors.features")

    def create(name: str, params: dict[str, Any]):
        cls = registry.get(name)
        params = dict(params)
        sig = inspect.signature(cls.__init__).parameters
        if "sfreq" in sig and "sfreq" not in params:
            params["sfreq"] = sfreq
        if "seed" in sig and "seed" not in params:
            params["seed"] = cfg.seed
        if cls.input_kind != "signal":
            raise ConfigError(f"detector {name!r} takes {cls.input_kind} input; screening needs a signal detector")
        return registry.create(name, **params)

    if cfg.unit != "beats":
        return create(cfg.detector, cfg.detector_params)
    from medad.transforms.signal import beat_feature_blocks

    before, after = cfg.beat_samples(sfreq)
    blocks = beat_feature_blocks(before + after, cfg.beat_step_at(sfreq))  # [shape columns, RR columns]
    if not cfg.beat_signal:  # precomputed beat features: a shape block and an RR block
        return create("features", {"blocks": blocks, **cfg.detector_params, "feature_fn": "precomputed"})
    check_beat_detector(cfg.detector)
    if cfg.rr_channels:
        return RRChannelModel(create(cfg.detector, cfg.detector_params), float(cfg.rr_channels))
    from medad.detectors.fusion import ScoreFusion

    rr = create("features", {**cfg.rr_detector_params, "feature_fn": "precomputed"})
    return ScoreFusion([create(cfg.detector, cfg.detector_params), rr], blocks)


def _collect(pre: Preprocessor, files: Sequence[Path], max_windows: int, max_bytes: int,
             skipped: list[dict[str, str]], what: str = "the training recordings", *,
             det=None, scored: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Windows of ``files``, evenly subsampled to stay under ``max_windows`` and ``max_bytes``.
    A recording that fails (corrupt samples, missing channels, too short) is added to ``skipped``;
    none left is an InputError naming ``what``.

    With a fitted ``det``, the same pass also scores every window as ``screen run`` does (by
    chunk, in the reading threads, :func:`_scores`) and appends ``(starts, scores)`` of each
    recording that succeeded to ``scored``: the held-out normal recordings of supervised training
    are read once for both their calibration windows and their validation scores. Only the
    starts and scores (16 bytes a window) are kept beyond the subsample."""
    if (det is None) != (scored is None):
        raise TypeError("_collect: det and scored go together")
    fn = None if det is None else (lambda st, w: (st, w, _scores(det, w)))
    hdrs = [pre.header(f) for f in files]
    est = sum(max(1, int((h.n_times / h.sfreq - pre.cfg.window_seconds) / pre.cfg.step_seconds) + 1) for h in hdrs)
    n_ch = len(pre.channels) if pre.channels else len(hdrs[0].ch_names)
    per = n_ch * int(round(pre.cfg.window_seconds * pre.sfreq)) * 4
    cap = max(1, min(max_windows, max_bytes // max(per, 1)))
    every = max(1, int(math.ceil(est / cap)))
    out, k = [], 0
    for f, h in zip(files, hdrs):
        mine, starts, scores = [], [], []
        try:
            for item in pre.windows(f, h, fn=fn):
                w = item[1]
                sel = (np.arange(k, k + len(w)) % every) == 0
                k += len(w)
                if sel.any():
                    mine.append(w[sel])
                if fn is not None:
                    starts.append(item[0])
                    scores.append(item[2])
        except MedadError as e:
            skipped.append({"file": str(f), "error": e.problem})
            continue
        out += mine
        if scored is not None:
            scored.append((np.concatenate(starts), np.concatenate(scores)))
    if not out:
        raise InputError(f"no windows could be cut from {what}{_failures(skipped, files)}")
    return np.concatenate(out)


#: a beat whose distance to its recording's median beat lies more than this many robust SDs above
#: the recording's median distance is a gross outlier (:func:`outlier_beats`)
OUTLIER_BEAT_Z = 8.0


def outlier_beats(features: np.ndarray) -> int:
    """How many beats of ONE recording (its beat features, :func:`beat_features`) are gross
    outliers: the norm of the beat minus the recording's median beat (the shape columns) more
    than :data:`OUTLIER_BEAT_Z` robust SDs (1.4826 MAD) above the recording's median norm. No
    label is used; normal beats differ from their median beat by noise and mild variation only
    (on the clean MIT-BIH records 0.05-0.7 % are counted), while ectopic beats such as PVCs (and
    stretches of noise) are counted (records 119, 200: about their PVC share)."""
    d = np.sqrt(np.square(np.asarray(features, np.float64)[:, :-len(RR_FEATURE_NAMES)]).sum(1))
    if len(d) < 3:
        return 0
    med = float(np.median(d))
    mad = 1.4826 * float(np.median(np.abs(d - med)))
    return int((d > med + OUTLIER_BEAT_Z * mad).sum()) if mad > 0 else 0


def beat_outlier_check(train: Sequence[tuple[str, int, int]], val: Sequence[tuple[str, int, int]],
                       fpr: float, exclude: str | None) -> dict[str, Any]:
    """Beat mode, training: the share of gross outlier beats (:func:`outlier_beats`) among the
    training and the held-out normal beats (``(record, beats, outliers)`` per recording), and a
    ``warning`` when either reaches half of ``fpr``. Abnormal beats in training are learnt as
    normal (a kNN model scores beats like them low), and the threshold flags ``fpr`` of the
    held-out beats: abnormal beats there at a share near ``fpr`` set it among themselves. A beat
    model trained on "normal" MIT-BIH records holding PVCs without ``train_exclude_beats`` found 3
    to 11 % of the test PVCs, though its AUROC looked fine."""
    def share(rows) -> tuple[int, int]:
        return sum(r[2] for r in rows), sum(r[1] for r in rows)

    (ot, nt), (ov, nv) = share(train), share(val)
    out: dict[str, Any] = {"rule": f"distance to the recording's median beat > {OUTLIER_BEAT_Z:g} robust SDs above "
                                   f"its median distance",
                           "train": {"outliers": ot, "beats": nt}, "held_out": {"outliers": ov, "beats": nv}}
    limit = fpr / 2
    if (nt and ot / nt >= limit) or (nv and ov / nv >= limit):
        worst = sorted((r for r in list(train) + list(val) if r[1] and r[2] / r[1] >= limit),
                       key=lambda r: -r[2] / r[1])
        excl = (f"the listed beats are already left out ({exclude}), so these are other ones" if exclude else
                "if these recordings hold known abnormal beats, list them (a CSV of R-peak samples per recording) "
                "and set train_exclude_beats (e.g. \"{record}_pvc_beats.csv\"), or train on recordings without them")
        out["warning"] = (
            f"{100 * ov / max(nv, 1):.1f} % of the held-out normal beats ({ov} of {nv}) and {100 * ot / max(nt, 1):.1f} % "
            f"of the training beats ({ot} of {nt}) are far from their recording's median beat (ectopic beats such as "
            f"PVCs, or noise), most in " + ", ".join(f"{r[0]} ({100 * r[2] / r[1]:.1f} %)" for r in worst[:5])
            + f". Abnormal beats among the training beats are learnt as normal, and among the held-out beats they "
            f"raise the threshold (it flags window_fpr={fpr:g} of them): abnormal beats like them will then mostly be "
            f"missed (low sensitivity, though the AUROC may look fine); {excl}")
    return out


def _collect_beats(pre: Preprocessor, files: Sequence[Path], skipped: list[dict[str, str]], what: str,
                   outliers: list[tuple[str, int, int]] | None = None) -> np.ndarray:
    """Beat features of every recording in ``files`` (known abnormal beats excluded, see
    ``train_exclude_beats``), stacked; a recording that fails is added to ``skipped``, and none
    left is an InputError naming ``what`` (e.g. "the training recordings"). ``outliers``: gets
    ``(record, beats, gross outlier beats)`` of each recording (:func:`outlier_beats`)."""
    from medad.io.signals import record_id_from_path

    out = []
    for f in files:
        try:
            feats = recording_beat_features(pre, f, exclude=pre.cfg.train_exclude_beats)["features"]
        except MedadError as e:
            skipped.append({"file": str(f), "error": e.problem})
            continue
        out.append(feats)
        if outliers is not None:
            outliers.append((record_id_from_path(f), len(feats), outlier_beats(feats)))
    if not out:
        raise InputError(f"no beats could be found in {what}{_failures(skipped, files)}")
    return np.concatenate(out)


def _failures(skipped: list[dict[str, str]], files: Sequence[Path]) -> str:
    """`` (n failed, e.g. FILE: PROBLEM)`` for those of ``files`` in ``skipped``, or ``""``."""
    failed = [b for b in skipped if b["file"] in {str(f) for f in files}]
    return f" ({len(failed)} failed, e.g. {failed[0]['file']}: {failed[0]['error']})" if failed else ""


def _evenly(x: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` rows of ``x``, evenly spaced."""
    return x if len(x) <= cap else x[np.unique(np.linspace(0, len(x) - 1, cap).round().astype(int))]


def _names(names: Sequence[str], k: int = 6) -> str:
    """The first ``k`` of ``names``, comma-separated, with how many more."""
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def find_channel(name: str, names: Sequence[str]) -> int | None:
    """Index of channel ``name`` in ``names``: the same name, else the only one equal to it but
    for case (``fp1`` is ``FP1``), else ``None``."""
    names = list(names)
    if name in names:
        return names.index(name)
    same = [k for k, c in enumerate(names) if c.casefold() == name.casefold()]
    return same[0] if len(same) == 1 else None


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", name.casefold()) if t]


def channel_suggestions(name: str, names: Sequence[str]) -> list[str]:
    """Channels of ``names`` that ``name`` probably means: those equal to it but for case; else
    the one channel containing it as whole tokens (``Fp1`` -> ``EEG Fp1-Ref``); else the close
    spellings (difflib)."""
    import difflib

    same = [c for c in names if c.casefold() == name.casefold()]
    if same:
        return same
    tok = _tokens(name)
    within = [c for c, ct in ((c, _tokens(c)) for c in names)
              if tok and any(ct[i:i + len(tok)] == tok for i in range(len(ct)))]
    if len(within) == 1:
        return within
    folded = {c.casefold(): c for c in names}
    return [folded[m] for m in difflib.get_close_matches(name.casefold(), list(folded), n=3, cutoff=0.6)]


def channel_problem(requested: Sequence[str], hdr) -> str | None:
    """What is wrong with training on channels ``requested`` of the recording ``hdr`` (``None``:
    nothing): each channel it lacks, with the channels it probably means, its full channel list
    and, when every missing one has a likely match, the ``--channels`` value spelled as the
    recording does. A name equal but for case is no problem (:func:`find_channel`); a single
    requested channel of a single-channel recording is matched by position (as screening does)."""
    names = list(hdr.ch_names)
    if len(requested) == 1 and len(names) == 1:
        return None
    missing = [c for c in requested if find_channel(c, names) is None]
    if not missing:
        return None
    guesses = {c: channel_suggestions(c, names) for c in missing}
    parts = [f"{c!r}" + (f" (did you mean {' or '.join(map(repr, guesses[c]))}?)" if guesses[c] else "")
             for c in missing]
    msg = (f"channel{'s' if len(missing) > 1 else ''} {', '.join(parts)} not found in {hdr.path}; it has "
           f"{len(names)} channel(s): {_names(names, 64)}")
    if all(len(g) == 1 for g in guesses.values()):
        fixed = [guesses[c][0] if c in guesses else names[find_channel(c, names)] for c in requested]
        msg += f". Name them as the recording does: --channels '{','.join(fixed)}' (or `channels` in the config)"
    return msg


#: how a recording's channels are chosen at screening, for the README, the docstrings and the errors
CHANNEL_HINT = "pass --channels NAME to medad screen run (Python: screen_folder(..., channels=[NAME]))"


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    g = channel_suggestions(name, names)
    return f" (did you mean {' or '.join(map(repr, g))}?)" if g else ""


def match_channels(channels: Sequence[str], hdr, *, by_position: bool = False, chosen: Sequence[str] | None = None,
                   beats: bool = False) -> tuple[list[int], str | None]:
    """The channels of recording ``hdr`` a model of ``channels`` screens (indices, in the model's
    order), and a warning where they were matched without names (``None`` otherwise).

    A model is never silently applied to a channel it was not trained on (an EEG model of Fp1 to
    C3, an ECG model to heart sounds). In order:

    1. by name (:func:`find_channel`: also equal but for case): the model's channels, or ``chosen``
       (``medad screen run --channels``) in their place -- no warning;
    2. plain text has no channel names: a file with as many columns as the model has channels is
       read column by column -- with a warning, unless the model too was trained on unnamed
       channels (``by_position``: plain text, or single channels of different names);
    3. a model of one unnamed channel and a recording of one channel: that channel, with a warning;
    4. beat mode (``beats``) without ``chosen``, a recording whose channels have names: the
       model's lead missing, the first channel named like an ECG lead (:func:`looks_like_ecg`),
       with a warning naming both (beat features are relative to the recording's own median beat,
       so another lead of the same heart is still judged meaningfully; a non-ECG channel is not).

    Anything else -- the model's channel missing from a named recording, a different number of
    unnamed channels, several channels to choose from for an unnamed model -- is a ReadError
    saying what the recording has and how to choose (:data:`CHANNEL_HINT`): screening skips that
    recording and reports it, the others are screened."""
    names = list(hdr.ch_names)
    n = len(channels)
    want = list(chosen) if chosen else list(channels)
    found = [find_channel(c, names) for c in want]
    if all(k is not None for k in found):
        return [int(k) for k in found], None
    text = getattr(hdr, "format", None) == "text"
    if text and len(names) == n:
        if by_position:  # read as the model's own training files were
            return list(range(n)), None
        cols = "its only column" if n == 1 else f"its {n} columns"
        return list(range(n)), (f"plain text has no channel names: {cols} read as "
                                + (f"the channel(s) chosen with --channels ({_names(want)})" if chosen
                                   else f"the model's {_names(channels)}") + ", unchecked")
    if by_position and not chosen and n == 1 and len(names) == 1:
        return [0], (f"the model's channel has no name (trained on plain text or on single channels of different "
                     f"names): this recording's only channel, {names[0]!r}, screened unchecked")
    have = f"it has {len(names)} channel(s): {_names(names, 8)}"
    if beats and not chosen and not text:
        ecg = [i for i, c in enumerate(names) if looks_like_ecg(c)]
        if ecg:
            lead = "the model's ECG lead has no name" if by_position else f"the model's ECG lead {channels[0]!r} is missing"
            return [ecg[0]], f"{lead}: beats found on {names[ecg[0]]!r}, the first channel named like an ECG lead"
    if chosen:
        missing = [c for c, k in zip(want, found) if k is None]
        raise ReadError(f"channel(s) chosen with --channels not found: "
                        f"{', '.join(repr(c) + _did_you_mean(c, names) for c in missing)}; {have}", hdr.path)
    if text:
        pick = (f"; choose the column(s) to screen with --channels, e.g. --channels {','.join(names[:n])}"
                if len(names) > n else "")
        raise ReadError(f"plain-text recording of {len(names)} column(s) (no channel names), but the model takes {n} "
                        f"channel(s) ({_names(channels)}): not screened{pick}", hdr.path)
    if by_position:
        raise ReadError(f"the model's {'channel has' if n == 1 else f'{n} channels have'} no name (trained on plain "
                        f"text or on single channels of different names), so which of this recording's channels to "
                        f"screen is not known ({have}): not screened; "
                        + (CHANNEL_HINT if n == 1 else f"name {n}, in the model's order, with --channels 'A,B,...'"),
                        hdr.path)
    missing = [c for c, k in zip(channels, found) if k is None]
    if beats:
        raise ReadError(f"the model's ECG lead {channels[0]!r} is missing{_did_you_mean(channels[0], names)} and no "
                        f"channel is named like an ECG lead ({have}): not screened, beats found in another kind of "
                        f"signal mean nothing. To screen one of its channels as the lead anyway: {CHANNEL_HINT}",
                        hdr.path)
    if n == 1:
        raise ReadError(f"the model was trained on channel {channels[0]!r}, which this recording lacks"
                        f"{_did_you_mean(channels[0], names)}; {have}. Not screened: another channel would be judged "
                        f"by a model of a different one. To screen one of its channels in its place: {CHANNEL_HINT}",
                        hdr.path)
    raise ReadError(f"recording lacks channels the model needs ({len(missing)} of {n}): {_names(missing, 8)}; {have}"
                    + (" -- another montage: screen it with a model trained on recordings like it, or name its "
                       f"channels to use in their place, in the model's order, with --channels 'A,B,...'"
                       if len(missing) == n else ""), hdr.path)


def _common_channels(hdrs) -> list[str]:
    """Channels every training recording has (in the first one's order); single-channel
    recordings are matched by position, whatever their channel is called. None shared: a
    ConfigError naming the recordings (grouped by channel set) and their channel counts."""
    if all(len(h.ch_names) == 1 for h in hdrs):
        return [hdrs[0].ch_names[0]]
    common = [c for c in hdrs[0].ch_names if all(c in h.ch_names for h in hdrs)]
    if not common:
        sets: dict[tuple[str, ...], list[str]] = {}
        for h in hdrs:
            sets.setdefault(tuple(h.ch_names), []).append(Path(h.path).name)
        groups = "; ".join(f"{_names(files, 3)}: {len(chs)} channel(s) ({_names(chs, 4)})"
                           for chs, files in list(sets.items())[:4])
        raise ConfigError(f"the training recordings share no channel name -- {groups}"
                          + (f"; and {len(sets) - 4} more channel sets" if len(sets) > 4 else "")
                          + ". Train on recordings of one montage, or name the channels to use with --channels "
                            "'A,B,...' (CLI) or `channels` in the screening config")
    return common


#: non-EEG channel kinds, by name: a token (the name split at non-letters/digits, lower case)
#: starting with one of the prefixes, or equal to one of the words
NON_EEG_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ECG": (("ecg", "ekg"), ()),
    "EMG": (("emg",), ("chin",)),
    "EOG": (("eog", "heog", "veog"), ("loc", "roc")),
    "respiration": (("resp", "effort", "breath", "airflow", "thor", "abdo", "snore"), ("flow", "abd")),
    "SpO2 / pulse": (("spo2", "sao2", "pulse", "pleth"), ("hr", "sat")),
    "trigger / event": (("trig", "stim", "sti0", "status", "event", "annot", "marker", "photic"),
                        ("sti", "dc")),
}
#: a channel whose level (:meth:`Preprocessor.levels`) is below this share of the median
#: channel's is flat (an EEG electrode used as the reference, a disconnected lead)
FLAT_RELATIVE = 0.1
FLAT_CHECK_RECORDINGS = 10  # training recordings (evenly chosen) whose channel levels are checked


def non_eeg_kind(name: str) -> str | None:
    """What a channel is when its name says it is not EEG (``"ECG"``, ``"EMG"``, ``"EOG"``,
    ``"respiration"``, ``"SpO2 / pulse"``, ``"trigger / event"``), else ``None``. ``"EEG
    Effort-Ref"`` is respiration: the word beats an ``EEG`` prefix, which EDF writers put on
    every channel."""
    import re

    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    for kind, (prefixes, words) in NON_EEG_NAMES.items():
        if any(t.startswith(prefixes) or t in words for t in tokens):
            return kind
    if looks_like_ecg(name):  # limb / precordial lead names (II, V1, MLII)
        return "ECG"
    return None


#: MNE channel types kept by ``channel_types: eeg`` (``misc``: unknown, judged by its name)
EEG_TYPES = ("eeg", "seeg", "ecog", "dbs", "misc")


def _mne_channel_types(hdr) -> dict[str, str]:
    """Channel name -> MNE type of an EDF/BDF/FIF recording (``{}`` for other formats)."""
    if hdr.format != "mne":
        return {}
    from medad.io.signals import _open_mne

    try:
        raw = _open_mne(Path(hdr.path))
    except MedadError:  # its header was read: a failure here leaves the names to judge
        return {}
    return dict(zip(raw.ch_names, raw.get_channel_types()))


def eeg_channels(pre: "Preprocessor", channels: list[str], files: Sequence[Path],
                 hdrs: Sequence[Any]) -> tuple[list[str], list[dict[str, str]]]:
    """``channels`` less the non-EEG ones (:func:`non_eeg_kind`) and those flat in training: a
    level below :data:`FLAT_RELATIVE` of the median channel's in at least half of up to
    :data:`FLAT_CHECK_RECORDINGS` training recordings. Returns the kept channels and the dropped
    ones with the reason. Channel types stored in the file (FIF; MNE reads every EDF/BDF channel
    as EEG) count first: a non-EEG type is dropped whatever the name. Nothing left is a ConfigError."""
    types = _mne_channel_types(hdrs[0])
    dropped, keep = [], []
    for c in channels:
        why = (f"type {types[c]!r} in {Path(hdrs[0].path).name}" if types.get(c, "eeg") not in EEG_TYPES
               else f"{non_eeg_kind(c)} by its name" if non_eeg_kind(c) else None)
        if why:
            dropped.append({"channel": c, "reason": why})
        else:
            keep.append(c)
    if len(keep) > 1:  # flatness is relative to the other channels
        pick = np.unique(np.linspace(0, len(files) - 1, min(len(files), FLAT_CHECK_RECORDINGS)).round().astype(int))
        ratios = []
        for i in pick:
            try:
                idx = [list(hdrs[i].ch_names).index(c) for c in keep]
                lev = pre.levels(files[i], hdrs[i], idx)
            except (MedadError, ValueError, TypeError):  # unusable here: training reports it by name later
                continue
            ratios.append(lev / max(float(np.median(lev)), 1e-30))
        if ratios:
            r = np.stack(ratios)
            flat = (r < FLAT_RELATIVE).mean(0) >= 0.5
            dropped += [{"channel": c, "reason": f"flat: its level is {100 * float(np.median(r[:, j])):.2g} % of the "
                                                 f"median channel's (below {100 * FLAT_RELATIVE:g} %) in "
                                                 f"{int((r[:, j] < FLAT_RELATIVE).sum())} of {len(r)} training "
                                                 f"recording(s) checked"}
                        for j, c in enumerate(keep) if flat[j]]
            keep = [c for j, c in enumerate(keep) if not flat[j]]
    if not keep:
        raise ConfigError("channel_types: eeg left no channel to use ("
                          + "; ".join(f"{d['channel']}: {d['reason']}" for d in dropped[:6])
                          + "); name the channels with --channels or `channels`, or set channel_types: all",
                          files[0])
    return keep, dropped


def _readable(files: Sequence[Path], text_sfreq: float | None,
              bad: list[dict[str, str]], text_layout: str = "auto") -> tuple[list[Path], list[Any]]:
    """Those of ``files`` whose header can be read, with their headers; the others go to ``bad``."""
    from medad.io.signals import read_header

    good, hdrs = [], []
    for f in files:
        try:
            hdrs.append(read_header(f, sfreq=text_sfreq, text_layout=text_layout))
            good.append(f)
        except MedadError as e:
            bad.append({"file": str(f), "error": e.problem})
    return good, hdrs


def _with_channels(cfg: ScreeningConfig, good: list[Path], hdrs: list[Any], a_good: list[Path], a_hdrs: list[Any],
                   bad: list[dict[str, str]], normal_folder, abnormal_folder) -> tuple[list, list, list, list]:
    """Training recordings that have the channels named in ``cfg.channels`` (set to the first
    one's spelling when a name differs only in case); the others go to ``bad`` with what they
    lack and what it probably is (:func:`channel_problem`). When no normal (or, given, no
    abnormal) recording has them all: a ConfigError with the first one's problem."""
    kept = []
    for fs, hs, folder in ((good, hdrs, normal_folder), (a_good, a_hdrs, abnormal_folder)):
        problems = [channel_problem(cfg.channels, h) for h in hs]
        ok = [k for k, p in enumerate(problems) if p is None]
        if fs and not ok:
            raise ConfigError(problems[0] + (f" (nor in any of the other {len(fs) - 1} recording(s) of {folder})"
                                             if len(fs) > 1 else ""))
        bad += [{"file": str(f), "error": p} for f, p in zip(fs, problems) if p is not None]
        kept += [[fs[k] for k in ok], [hs[k] for k in ok]]
    names = list(kept[1][0].ch_names)
    if not (len(cfg.channels) == 1 and len(names) == 1):
        cfg.channels = [names[find_channel(c, names)] for c in cfg.channels]
    return tuple(kept)


def unnamed_channels(channels: Sequence[str], hdrs: Sequence[Any], unit: str = "windows") -> bool:
    """Whether a model of ``channels`` trained on the recordings ``hdrs`` knows its channels by
    position only (screening then matches them so, :func:`match_channels`): any plain-text
    recording (its channel names are the file name or ``col1``...), or, in window mode, one
    channel that a training recording has under another name (single-channel recordings are
    pooled whatever their channel is called, :func:`_common_channels`). Beat mode finds another
    ECG lead by its name and keeps the model's lead name."""
    if any(getattr(h, "format", None) == "text" for h in hdrs):
        return True
    return unit != "beats" and len(channels) == 1 and any(find_channel(channels[0], h.ch_names) is None for h in hdrs)


def _hold_out(files: Sequence[Path], val_fraction: float, rng) -> tuple[list[Path], list[Path]]:
    """``(training, held-out)`` recordings, split by recording: ``round(val_fraction * n)`` held
    out, at least one when there are two or more, never all."""
    order = rng.permutation(len(files))
    n_val = int(round(val_fraction * len(files))) if len(files) > 1 else 0
    n_val = min(max(n_val, 1 if len(files) > 1 else 0), len(files) - 1)
    return [files[i] for i in sorted(order[n_val:])], [files[i] for i in sorted(order[:n_val])]


def _labelled(det, normal: np.ndarray, abnormal: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Normal (label 0) and abnormal (1) training windows as one set. Class imbalance: the
    detector's own class weighting when it has that setting (``class_weight``, "balanced" by
    default for every supervised signal detector), else the larger class is evenly subsampled
    to the smaller one's size."""
    params = det.get_params()
    balance: dict[str, Any] = {"windows": {"normal": int(len(normal)), "abnormal": int(len(abnormal))},
                               "abnormal_share": round(len(abnormal) / max(len(normal) + len(abnormal), 1), 4)}
    if "class_weight" in params:
        balance["handling"] = f"the detector's class_weight={params['class_weight']!r}"
    else:
        k = min(len(normal), len(abnormal))
        normal, abnormal = _evenly(normal, k), _evenly(abnormal, k)
        balance["handling"] = f"the larger class evenly subsampled to {k} windows (the detector has no class weights)"
    y = np.r_[np.zeros(len(normal), np.int64), np.ones(len(abnormal), np.int64)]
    return np.concatenate([normal, abnormal]), y, balance


def _nan_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def validate_supervised(model: "ScreeningModel", normal_val: Sequence[tuple[np.ndarray, np.ndarray]],
                        abnormal_val: Sequence[Path], bad: list[dict[str, str]]) -> dict[str, Any]:
    """Screen the held-out recordings of both classes as ``medad screen run`` does (every window,
    the model's decision rule). ``normal_val``: ``(starts, scores)`` of every window of each
    held-out normal recording, scored as ``screen run`` scores them when they were read for the
    calibration windows (:func:`_collect` with ``scored``: they are not read again);
    ``abnormal_val``: the held-out abnormal recordings, read and screened here. Figures:
    window-level AUROC of held-out normal vs abnormal windows (none was trained on), the share of
    abnormal windows flagged and the recording-level sensitivity (abnormal recordings decided
    abnormal) at the model's threshold.

    The normal side cannot be measured at the model's threshold: the held-out normal recordings
    set it, so their share flagged is ``window_fpr`` by construction. Specificity (normal
    recordings decided normal) and the share of normal windows flagged come from 2-fold
    cross-calibration on the held-out normal recordings (:func:`medad.evaluation.cross_calibration`:
    threshold at ``window_fpr`` from one half's windows, measured on the other half), and are not
    estimated with fewer than 2 of them. Without a held-out normal recording (a single one in
    training) the AUROC's normal side is the calibration windows. An abnormal recording that fails
    goes to ``bad``."""
    from medad.evaluation import auroc
    from medad.evaluation import cross_calibration

    starts = [st for st, _ in normal_val]  # of the normal recordings, to re-apply the decision rule
    scores: dict[int, list[np.ndarray]] = {0: [sc for _, sc in normal_val], 1: []}
    decisions = []  # abnormal recordings decided abnormal at the model's threshold
    for f in abnormal_val:
        try:
            res = screen_recording(model, Path(f))
        except MedadError as e:
            bad.append({"file": str(f), "error": e.problem})
            continue
        scores[1].append(res["scores"])
        decisions.append(bool(res["intervals"]))
    normal = np.concatenate(scores[0]) if scores[0] else model.val_scores
    if not scores[1]:
        return {"note": "no held-out abnormal recording (a single abnormal recording is all used for training): "
                        "no validation figures"}
    abnormal = np.concatenate(scores[1])
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]

    def decided_abnormal(k: int, t: float) -> bool:  # screen run's rule, at another threshold
        return bool(flagged_intervals(starts[k], scores[0][k], t, model.cfg.window_seconds, model.cfg.min_windows))

    cc = cross_calibration(scores[0], model.cfg.window_fpr, min_groups=2, what="recordings",
                           decide=decided_abnormal)
    out = {
        "n_normal_recordings": int(len(scores[0])), "n_abnormal_recordings": int(len(scores[1])),
        "n_normal_windows": int(len(normal)), "n_abnormal_windows": int(len(abnormal)),
        "normal_windows_from": "held-out normal recordings" if scores[0] else "the calibration windows",
        "window_auroc": _nan_none(auroc(y, np.r_[normal, abnormal])),
        "auroc_items": "every window of the held-out recordings of both classes (none trained on)",
        "abnormal_windows_flagged": _nan_none(float(np.mean(abnormal > model.threshold))),
        "recording_sensitivity": _nan_none(float(np.mean(decisions))),
        "sensitivity_at": "the model's threshold (from all held-out normal recordings)",
        "normal_windows_flagged": _nan_none(cc["normal_flagged"]),
        "recording_specificity": _nan_none(cc["specificity"]),
        "specificity_method": cc["specificity_method"],
        "decision_rule": f">= {model.cfg.min_windows} consecutive windows above the threshold",
    }
    if "folds" in cc:
        out["specificity_folds"] = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in f.items()}
                                    for f in cc["folds"]]
    else:
        out["specificity_note"] = cc["specificity_note"]
    return out


def validation_text(v: dict[str, Any]) -> str:
    """One line of :func:`validate_supervised`'s figures for the training printout."""
    if "note" in v:
        return v["note"]

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    spec = (f"normal side by 2-fold cross-calibration on the {v['n_normal_recordings']} held-out normal recordings "
            f"(threshold from one half, measured on the other): {f(v['normal_windows_flagged'])} of normal windows "
            f"flagged, recording specificity {f(v['recording_specificity'])}"
            if v["recording_specificity"] is not None else v["specificity_note"])
    return (f"window AUROC {f(v['window_auroc'])} ({v['n_normal_windows']} normal vs {v['n_abnormal_windows']} "
            f"abnormal windows); at the model's threshold {f(v['abnormal_windows_flagged'])} of abnormal windows "
            f"flagged, recording sensitivity {f(v['recording_sensitivity'])} ({v['n_abnormal_recordings']} "
            f"abnormal); {spec}")


def train_screening(normal_folder: str | Path, out: str | Path, cfg: ScreeningConfig | None = None,
                    *, abnormal_folder: str | Path | None = None, progress: bool = True) -> Path:
    """Fit a window detector on normal recordings, calibrate its threshold on held-out normal
    recordings, and save the model folder (detector + ``screening.json``).

    ``abnormal_folder`` (supervised training, window mode, a supervised detector such as
    ``cnn1d``): abnormal recordings too; every window of a normal recording is labelled 0 and
    every window of an abnormal one 1 (weak, recording-level labels), preprocessed like the
    normal ones. Recordings of both classes are held out by recording (``val_fraction``); the
    threshold still comes from the held-out normal windows only (``window_fpr``), and the
    held-out recordings of both classes are screened for the validation figures
    (:func:`validate_supervised`), saved in ``screening.json``."""
    from tqdm.auto import tqdm

    from medad.io.signals import record_id_from_path
    from medad.utils import seed_everything, write_json

    cfg = cfg or ScreeningConfig()
    check_supervised(cfg, abnormal_folder is not None)  # before reading anything
    cfg.validate()
    seed_everything(cfg.seed)
    files = list_recordings(normal_folder)
    abnormal_files = list_recordings(abnormal_folder) if abnormal_folder is not None else []
    bad: list[dict[str, str]] = []
    good, hdrs = _readable(files, cfg.text_sfreq, bad, cfg.text_layout)
    if not good:
        raise ReadError(f"no readable normal recordings ({len(bad)} failed: {bad[0]['error'] if bad else ''})",
                        normal_folder)
    a_good, a_hdrs = _readable(abnormal_files, cfg.text_sfreq, bad, cfg.text_layout)
    if abnormal_folder is not None and not a_good:
        raise ReadError(f"no readable abnormal recordings{_failures(bad, abnormal_files)}", abnormal_folder)
    if hdrs[0].sfreq is None:
        raise ConfigError("plain-text recordings carry no sampling rate: set text_sfreq in the screening config "
                          "(CLI: --text-sfreq)", hdrs[0].path)
    if cfg.channels:  # named channels: checked (and spelled as the recordings do) before any is read
        good, hdrs, a_good, a_hdrs = _with_channels(cfg, good, hdrs, a_good, a_hdrs, bad, normal_folder,
                                                    abnormal_folder)
    sfreq = float(cfg.sfreq or hdrs[0].sfreq)
    if cfg.unit == "beats":  # one ECG lead: the first recording's (see Preprocessor.beat_channel)
        channels = cfg.channels or [hdrs[0].ch_names[Preprocessor(cfg, sfreq, None).beat_channel(hdrs[0])]]
    else:  # supervised: the channels both classes have (the model must read either)
        channels = cfg.channels or _common_channels(hdrs + a_hdrs)
    dropped: list[dict[str, str]] = []
    if cfg.channel_types == "eeg" and not cfg.channels and cfg.unit != "beats" and len(channels) > 1:
        channels, dropped = eeg_channels(Preprocessor(cfg, sfreq, channels), channels, good, hdrs)
        if progress and dropped:
            print(f"channel_types: eeg -- keeping {len(channels)} EEG channel(s), dropped {len(dropped)}: "
                  + "; ".join(f"{d['channel']} ({d['reason']})" for d in dropped)
                  + " (to choose yourself: --channels 'A,B,...' or `channels` in the config)")
    by_position = unnamed_channels(channels, hdrs + a_hdrs, cfg.unit)
    pre = Preprocessor(cfg, sfreq, channels, by_position=by_position)
    rng = np.random.default_rng(cfg.seed)
    train_files, val_files = _hold_out(good, cfg.val_fraction, rng)
    a_train, a_val = _hold_out(a_good, cfg.val_fraction, rng) if a_good else ([], [])
    unit = "beats" if cfg.unit == "beats" else "windows"
    if progress:  # with one recording nothing can be held out whole: say what calibration uses instead
        cal = (f"calibrating the threshold on {len(val_files)} held-out normal recording(s)" if val_files else
               f"calibrating the threshold on its last {cfg.val_fraction:.0%} of {unit} (a single recording: "
               f"none can be held out whole)")
        sup = (f" and {len(a_train)} abnormal recording(s) (every window labelled abnormal: weak labels; "
               f"{len(a_val)} more held out for validation)" if a_good else "")
        print(f"training on {len(train_files)} normal recording(s){sup}, {cal}"
              + (f"; {len(bad)} unreadable skipped" if bad else ""))
    train_out: list[tuple[str, int, int]] = []  # beat mode: gross outlier beats per recording
    val_out: list[tuple[str, int, int]] = []
    if unit == "beats":
        x = _collect_beats(pre, train_files, bad, "the training recordings", train_out)
    else:
        x = _collect(pre, train_files, cfg.max_train_windows, cfg.max_window_bytes, bad)
    if not val_files:  # one recording: calibrate on its last windows (in time), train on the rest
        n_v = max(1, int(round(cfg.val_fraction * len(x))))
        x, xv = x[:-n_v], x[-n_v:]
        val_source = f"last {n_v} {unit} of the single training recording"
    else:
        if unit == "beats":
            xv = _collect_beats(pre, val_files, bad, "the held-out normal recordings", val_out)
        elif not a_good:  # supervised: read after the fit (below)
            xv = _collect(pre, val_files, cfg.max_train_windows, cfg.max_window_bytes, bad,
                          "the held-out normal recordings")
        val_source = f"{len(val_files)} held-out normal recording(s)"
    x = _evenly(x, cfg.max_train_windows)
    n_train = len(x)  # normal training items
    det = _detector(cfg, sfreq)
    y, balance = None, None
    if a_good:  # each class capped at max_train_windows
        xa = _collect(pre, a_train, cfg.max_train_windows, cfg.max_window_bytes, bad,
                      "the abnormal training recordings")
        x, y, balance = _labelled(det, x, _evenly(xa, cfg.max_train_windows))
        del xa

    def skipped(new: list[dict[str, str]]) -> None:
        if progress and new:
            print(f"skipped {len(new)} recording(s) that could not be used: "
                  + "; ".join(f"{Path(b['file']).name}: {b['error']}" for b in new[:5]))

    failed = {b["file"] for b in bad}
    train_files, val_files, a_train, a_val = ([f for f in fs if str(f) not in failed]
                                              for fs in (train_files, val_files, a_train, a_val))
    skipped(bad)
    for m in getattr(det, "members", [det]):  # neural members: their epoch bars follow `progress`
        if hasattr(m, "train_options"):
            m.train_options = {"progress": progress}
    with tqdm(total=1, desc=f"fit {cfg.detector} on {len(x)} {unit}", disable=not progress) as bar:
        det.fit(x) if y is None else det.fit(x, y=y)  # beat-mode wrappers take no labels
        bar.update()
    del x, y
    normal_scored: list[tuple[np.ndarray, np.ndarray]] = []  # (starts, scores) of each held-out normal recording
    if a_good and val_files:
        # supervised: the held-out normal recordings are read once, after the fit, for both their
        # calibration windows (the same subsample as before the fit) and every window's score as
        # `screen run` gives it (for validate_supervised), instead of once for each. The price:
        # one of them that cannot be read is only found now, after the fit
        n_bad = len(bad)
        xv = _collect(pre, val_files, cfg.max_train_windows, cfg.max_window_bytes, bad,
                      "the held-out normal recordings", det=det, scored=normal_scored)
        failed = {b["file"] for b in bad[n_bad:]}
        val_files = [f for f in val_files if str(f) not in failed]
        skipped(bad[n_bad:])
    det.calibrate(xv, fpr=cfg.window_fpr)
    val_scores = np.sort(det.score(xv).score.astype(np.float64))
    calibration = {"source": val_source, f"n_{unit}": int(len(xv)), "window_fpr": cfg.window_fpr}
    warning = calibration_warning(len(xv), [Path(f).name for f in val_files] or [Path(train_files[0]).name],
                                  cfg.window_fpr, cfg.val_fraction, unit, single=not val_files)
    if warning:
        calibration["warning"] = warning
        if progress:
            print(f"warning: {warning}")
    outlier_check = None
    if unit == "beats":
        outlier_check = beat_outlier_check(train_out, val_out, cfg.window_fpr, cfg.train_exclude_beats)
        if progress and "warning" in outlier_check:
            print(f"warning: {outlier_check['warning']}")
    # reference distribution of held-out normal window scores (for the per-interval percentile)
    ref = val_scores if len(val_scores) <= 2000 else np.quantile(val_scores, np.linspace(0, 1, 2000))
    info = {
        "config": asdict(cfg), "sfreq": sfreq, "channels": channels, "dropped_channels": dropped,
        "channel_match": "position" if by_position else "name",
        "threshold": float(det.threshold_),
        "calibration": calibration,
        f"n_train_{unit}": int(n_train),
        "train_recordings": [record_id_from_path(f) for f in train_files],
        "val_recordings": [record_id_from_path(f) for f in val_files],
        "supervised": bool(a_good),
        **({"outlier_beats": outlier_check} if outlier_check is not None else {}),
    }
    if a_good:
        if getattr(det, "class_weights_", None) is not None:
            balance["loss_weights"] = {"normal": round(float(det.class_weights_[0]), 4),
                                       "abnormal": round(float(det.class_weights_[1]), 4)}
        info.update({
            "labels": "weak, by recording: every window of a normal recording 0, of an abnormal recording 1",
            "abnormal_folder": str(abnormal_folder),
            "abnormal_train_recordings": [record_id_from_path(f) for f in a_train],
            "abnormal_val_recordings": [record_id_from_path(f) for f in a_val],
            "class_balance": balance,
        })
        model = ScreeningModel(det, cfg, sfreq, channels, float(det.threshold_), ref, info, by_position=by_position)
        info["validation"] = validate_supervised(model, normal_scored, a_val, bad)
        if progress:
            print(f"validation on held-out recordings: {validation_text(info['validation'])}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det.save(out / DETECTOR_DIR)
    write_json(out / MODEL_CONFIG, {**info, "skipped": bad, "val_scores": ref.tolist()})
    return out


# ---------------------------------------------------------------------------- screening
@dataclass
class ScreeningModel:
    """A trained screening model: detector + preprocessing + threshold.

    ``by_position``: its channels have no names (``channel_match: position`` in screening.json,
    :func:`unnamed_channels`); ``chosen``: channels of the screened recordings to use in place of
    the model's (``medad screen run --channels``), see :func:`match_channels`."""

    detector: Any
    cfg: ScreeningConfig
    sfreq: float
    channels: list[str]
    threshold: float
    val_scores: np.ndarray
    info: dict[str, Any]
    by_position: bool = False
    chosen: list[str] | None = None

    @classmethod
    def load(cls, path: str | Path) -> "ScreeningModel":
        from medad.detectors.base import Detector

        from medad.utils import read_model_json

        path = Path(path)
        info = read_model_json(path, MODEL_CONFIG, "medad screening model")
        try:
            cfg = ScreeningConfig.from_dict(info["config"])
        except (KeyError, TypeError) as e:
            raise ReadError(f"corrupt {MODEL_CONFIG}: {e}", path / MODEL_CONFIG) from None
        if cfg.detector == "features":
            importlib.import_module("medad.detectors.features")  # registers it; see _detector
        if cfg.beat_fusion:
            from medad.detectors.fusion import ScoreFusion

            det = ScoreFusion.load(path / DETECTOR_DIR)
        elif cfg.beat_signal:
            det = RRChannelModel.load(path / DETECTOR_DIR)
        else:
            det = Detector.load(path / DETECTOR_DIR)
        channels = list(info["channels"])
        match = info.get("channel_match")
        if match is None:  # saved before it was recorded: a text-trained model's channel is a record id
            from medad.io.signals import record_id_from_path

            ids = {*info.get("train_recordings", []), *info.get("val_recordings", []),
                   *(record_id_from_path(b.get("file", "")) for b in info.get("skipped", []))}
            match = "position" if len(channels) == 1 and channels[0] in ids else "name"
        return cls(det, cfg, float(info["sfreq"]), channels, float(info["threshold"]),
                   np.asarray(info["val_scores"], dtype=np.float64), info, by_position=match == "position")

    def preprocessor(self) -> "Preprocessor":
        """The :class:`Preprocessor` that screens recordings for this model (its channels matched
        as :func:`match_channels` says)."""
        return Preprocessor(self.cfg, self.sfreq, self.channels, by_position=self.by_position, chosen=self.chosen)

    def use_channels(self, chosen: Sequence[str] | None) -> None:
        """Screen ``chosen`` channels of each recording in place of the model's (``--channels``;
        ``None``: the model's own). Their number must be the model's: a ConfigError otherwise."""
        if not chosen:
            self.chosen = None
            return
        chosen = [str(c).strip() for c in chosen]
        if len(chosen) != len(self.channels) or not all(chosen):
            raise ConfigError(f"the model takes {len(self.channels)} channel(s) ({_names(self.channels, 8)}"
                              f"{', unnamed' if self.by_position else ''}); --channels names {len(chosen)}: "
                              f"{', '.join(map(repr, chosen))}. Give one channel of the recordings for each of the "
                              f"model's, in its order")
        self.chosen = chosen

    def percentile(self, s: np.ndarray) -> np.ndarray:
        """Share of held-out normal windows scoring below ``s`` (an empirical, not a clinical, probability)."""
        return np.searchsorted(self.val_scores, np.asarray(s, dtype=np.float64), side="left") / max(len(self.val_scores), 1)


def flagged_intervals(starts: np.ndarray, scores: np.ndarray, threshold: float, window_seconds: float,
                      min_windows: int = 1) -> list[tuple[float, float, float, int]]:
    """Runs of consecutive windows scoring above ``threshold`` -> ``(start_s, end_s, max score,
    n_windows)``; runs shorter than ``min_windows`` are dropped. Overlapping windows merge, and so
    do runs whose spans touch or overlap (with overlapping windows, a run after one window below
    the threshold starts where the previous run's last window ends: one abnormal span, not two)."""
    above = np.asarray(scores) > threshold
    out: list[tuple[float, float, float, int]] = []
    i, n = 0, len(above)
    while i < n:
        if not above[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and above[j + 1]:
            j += 1
        if j - i + 1 >= min_windows:
            run = (float(starts[i]), float(starts[j] + window_seconds), float(np.max(scores[i:j + 1])), j - i + 1)
            if out and run[0] <= out[-1][1]:
                a = out.pop()
                run = (a[0], max(a[1], run[1]), max(a[2], run[2]), a[3] + run[3])
            out.append(run)
        i = j + 1
    return out


def _scores(det, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    sc = [det.score(x[i:i + batch]).score.astype(np.float64) for i in range(0, len(x), batch)]
    return np.concatenate(sc) if sc else np.zeros(0)


def feature_scorer(det):
    """A view of a fitted ``features`` detector that scores precomputed feature vectors (what
    per-site normalisation hands it): the detector itself when it already takes features (as a
    beat-mode ScoreFusion does)."""
    import copy

    if getattr(det, "feature_fn", None) == "precomputed" or hasattr(det, "members"):
        return det
    view = copy.copy(det)  # shares the fitted arrays; only how input becomes features changes
    view.feature_fn = "precomputed"
    if view.blocks:  # feature-group blocks become the column counts fixed at fit time
        view.blocks = [sl.stop - sl.start for sl in det.slices_]
    return view


def recording_items(model: ScreeningModel, path: Path, *, features: bool = False, batch: int = 4096,
                    progress: bool = False, top_k: int = 0) -> dict[str, Any]:
    """Every window (beat mode: beat) of one recording: ``starts`` (s), ``times`` (window
    centres / R peaks), a small min/max ``envelope`` for the plot, and ``scores`` -- or, with
    ``features``, the ``features`` (scored later, after per-site normalisation).

    ``top_k`` (scores): also keep the ``top_k`` highest-scoring items themselves, as scored, best
    first (ties: the earlier one), for explanations: window mode ``top_windows`` (k, C, W)
    (only k windows per chunk are ever held), beat mode ``top_features`` (k, F); with their
    ``top_starts`` (s).
    """
    from tqdm.auto import tqdm

    if top_k and features:
        raise ConfigError("top_k keeps scored items: not with features (scored after per-site normalisation)")
    pre = model.preprocessor()
    hdr = pre.header(path)
    picks, note = pre.match(hdr)  # which channels (a ReadError when none can be chosen safely)
    chans = {"picks": picks, "channels": [hdr.ch_names[i] for i in picks], "channel_warning": note}
    if model.cfg.unit == "beats":
        r = recording_beat_features(pre, path, hdr, channel=picks[0])
        t = r["peaks"] / pre.sfreq
        res = {"header": hdr, "starts": np.maximum(t - model.cfg.beat_before, 0.0), "times": t,
               "envelope": r["envelope"], **chans,
               "samples": np.round(t * float(hdr.sfreq)).astype(np.int64)}  # in the recording's own rate
        if features:
            res["features"] = r["features"]
            return res
        res["scores"] = _scores(model.detector, r["features"], batch)
        if top_k:
            best = np.argsort(-res["scores"], kind="stable")[:top_k]
            res["top_starts"], res["top_features"] = res["starts"][best], r["features"][best]
        return res
    dur = hdr.n_times / hdr.sfreq if hdr.sfreq else 0.0
    # a bar over recording time for long recordings (hours of EEG)
    bar = tqdm(total=round(dur), unit="s", desc=f"  {Path(path).name}", leave=False,
               disable=not progress or dur < 600)

    def work(st: np.ndarray, w: np.ndarray):
        out = model.detector.features(w).astype(np.float32) if features else _scores(model.detector, w, batch)
        # a small trace summary for the plot (first channels, min/max per window): the
        # recording itself is never held in memory
        env = np.stack([w[:, :4].min(-1), w[:, :4].max(-1)], axis=-1)
        if not top_k:  # (an empty slice of w would be a view that keeps the whole chunk alive)
            return st, out, env, None
        best = np.argsort(-out, kind="stable")[:top_k]  # this chunk's best (an index array: copies)
        return st, out, env, (st[best], out[best], w[best])

    starts, outs, env, tops = [], [], [], []
    for st, o, e, top in pre.windows(path, hdr, fn=work):
        starts.append(st)
        outs.append(o)
        env.append(e)
        tops.append(top)
        if len(st):
            bar.update(max(0, round(st[-1] + model.cfg.step_seconds) - bar.n))
    bar.close()
    t = np.concatenate(starts)
    res = {"header": hdr, "starts": t, "times": t + model.cfg.window_seconds / 2, "envelope": np.concatenate(env),
           **chans, ("features" if features else "scores"): np.concatenate(outs)}
    if top_k:  # the best of the chunks' best; chunks come in time order, so a tie keeps the earlier window
        ts, ss, ws = (np.concatenate(a) for a in zip(*tops))
        keep = np.argsort(-ss, kind="stable")[:top_k]
        res["top_starts"], res["top_windows"] = ts[keep], ws[keep]
    return res


def decide(model: ScreeningModel, res: dict[str, Any], scores: np.ndarray | None = None) -> dict[str, Any]:
    """Add ``flagged`` items (score above the threshold) and flagged ``intervals`` (runs of at
    least ``min_windows`` flagged items, with their probability) to a :func:`recording_items` result."""
    if scores is not None:
        res["scores"] = np.asarray(scores, dtype=np.float64)
    res.pop("features", None)
    s = res["scores"]
    beats = model.cfg.unit == "beats"
    span = model.cfg.beat_before + model.cfg.beat_after if beats else model.cfg.window_seconds
    ivs = flagged_intervals(res["starts"], s, model.threshold, span, model.cfg.min_windows)
    prob = model.percentile(np.array([iv[2] for iv in ivs])) if ivs else np.zeros(0)
    key = "n_beats" if beats else "n_windows"
    res["flagged"] = s > model.threshold
    res["intervals"] = [{"start_s": a, "end_s": b, "max_score": m, key: k, "probability": float(p)}
                        for (a, b, m, k), p in zip(ivs, prob)]
    return res


def screen_recording(model: ScreeningModel, path: Path, *, batch: int = 4096, progress: bool = False) -> dict[str, Any]:
    """Scores of every window (beat) of one recording, its flagged intervals and decision."""
    return decide(model, recording_items(model, path, batch=batch, progress=progress))


# ---------------------------------------------------------------------------- beat explanations
#: the 4 RR columns of a beat's features (:func:`medad.transforms.signal.beat_template_features`)
RR_FEATURE_NAMES = ("previous RR / median RR", "next RR / median RR", "previous RR / local mean RR",
                    "next RR / previous RR")


class BeatPart(Detector):
    """Part ``part`` (0: beat shape, 1: RR) of a beat-mode model's score, as a detector of that
    part's feature columns seen as one channel ``(N, 1, L)`` -- what the explanation methods
    perturb. For explanations only: made from a fitted model, never fitted or saved itself.

    Its score is the part's robust z-score: for the blocked ``features`` model (kNN or
    Mahalanobis) that block's score standardised on its training beats; for a
    :class:`~medad.detectors.fusion.ScoreFusion`, that member's score standardised on the held-out
    normal beats. Either model's beat score is the plain mean of its parts' z-scores, so the parts
    add up to it exactly and a part's attributions are the beat score's up to the factor
    1 / (number of parts), whatever the other part's values.
    """

    input_kind = "signal"

    def __init__(self, model, part: int):
        from medad.detectors.fusion import ScoreFusion

        self.model, self.part = model, int(part)
        if isinstance(model, ScoreFusion):
            edges = np.cumsum([0] + model.blocks)
            self.columns = slice(int(edges[part]), int(edges[part + 1]))
        else:
            if getattr(model, "block_stats_", None) is None:
                raise ConfigError(f"{type(model).__name__} scores no separate blocks: its beat score has no parts")
            self.columns = model.slices_[part]
        self.fitted_ = True

    def _score(self, x: np.ndarray):
        from medad.detectors.base import AnomalyResult
        from medad.detectors.fusion import ScoreFusion

        v = np.asarray(x, dtype=np.float64)[:, 0]
        m, p = self.model, self.part
        if v.shape[1] != self.columns.stop - self.columns.start:
            raise InputError(f"part {p} of the beat features has {self.columns.stop - self.columns.start} columns, "
                             f"got {v.shape[1]}")
        if isinstance(m, ScoreFusion):
            member = m.members[p]
            raw = member.score(v[:, None] if m.views[p] == "signal" else v).score
            z = (np.asarray(raw, np.float64) - m.stats_[p, 0]) / m.stats_[p, 1]
        else:  # the features detector's own block score (standardised features, then that block)
            full = np.zeros((len(v), m.n_features_))
            full[:, self.columns] = (v - m.center_[self.columns]) / m.scale_[self.columns]
            z = (m._block_score(full, p) - m.block_stats_[p, 0]) / m.block_stats_[p, 1]
        return AnomalyResult(score=z.astype(np.float32))

    def of(self, features: np.ndarray) -> np.ndarray:
        """This part's columns of beat features ``(N, F)`` as its input ``(N, 1, L)``."""
        return np.ascontiguousarray(np.asarray(features, np.float32)[:, None, self.columns])


def explain_rr(rr_part, rr_x: np.ndarray, **explain_kw: Any) -> np.ndarray:
    """KernelSHAP attributions ``(N, 4)`` of the RR part's z-score to each of the 4 RR features
    of the beats ``rr_x`` ``(N, 1, 4)``, against a perfectly regular rhythm (every RR ratio 1):
    one feature per segment, so with 4 features they are close to exact Shapley values and sum
    to z(beat) - z(regular rhythm)."""
    from medad.explain import explain

    kw = {k: v for k, v in explain_kw.items() if k not in ("n_segments", "baseline")}
    return explain(rr_part, rr_x, "kernel_shap", spatial_dims=1, baseline=1.0, n_segments=rr_x.shape[-1], **kw)


def explain_recording(model_path: str | Path, path: str | Path, out: str | Path, *,
                      methods: Sequence[str] | None = None, top_k: int = 3, case_id: str | None = None,
                      include_identity: bool = False, text_sfreq: float | None = None,
                      channels: Sequence[str] | None = None, **explain_kw: Any):
    """Explain a screening model's decision on one recording (``medad explain`` on a
    ``medad screen train`` model): the recording is windowed (beat mode: cut into beats),
    preprocessed and scored by :func:`recording_items` and decided by :func:`decide`, as ``medad
    screen run`` does; its ``top_k`` highest-scoring windows (beats) are explained
    (:func:`medad.report.cases.explain_windows`: one signal plot per method and item,
    ``case.json``, ``report.html`` in ``out``). ``text_sfreq``: sampling rate of a plain-text
    recording (default: the model's). ``channels``: channels of the recording to explain in place
    of the model's, matched as ``medad screen run --channels`` matches them
    (:meth:`ScreeningModel.use_channels`, :func:`match_channels`). Per-site normalisation needs the
    whole screened folder and is not applied (the report says so).

    Beat mode: a beat's score is the mean of two parts' z-scores (:class:`BeatPart`), the beat
    shape (the beat minus the recording's median beat) and the 4 RR features; the report's
    details give both z-scores of every explained beat and KernelSHAP attributions of the RR
    z-score to each RR feature against a regular rhythm (:func:`explain_rr`). The plots explain
    the shape part over the beat's samples -- up to a positive factor the beat score's own
    attributions, since the RR part does not depend on them:

    * with a signal detector (ScoreFusion), the detector itself on the beat minus the median
      beat at full resolution (any method; gradient methods by default); the plots show its own
      score (it has no threshold of its own);
    * with the ``features`` detector (kNN / Mahalanobis blocks), the shape block's z-score on the
      shape columns (the beat minus the median beat, every ``beat_step``-th sample), explained by
      a perturbation method (KernelSHAP by default, or LIME: the model has no gradients) over
      time segments switched to 0, i.e. to the recording's own median beat.

    The fused scores and the threshold are in the report's details. With ``rr_channels``
    (:class:`~medad.detectors.beats.RRChannelModel`) there are no parts: the detector is explained on the beat and its 4
    constant RR channels together (gradient methods by default), its score being the beat score.
    """
    from medad.report.cases import explain_windows
    from medad.report.html import identity_from_file, write_case, write_case_report

    model = ScreeningModel.load(model_path)
    if text_sfreq is not None:  # plain-text recordings carry no rate
        model.cfg.text_sfreq = float(text_sfreq)
    model.use_channels(channels)  # as screen_folder: their number checked before the recording is read
    cfg = model.cfg
    beats = cfg.unit == "beats"
    if beats and not cfg.beat_signal and methods:
        from medad.explain import METHODS, canonical_method

        grad = [m for m in methods if METHODS[canonical_method(m)][0]]
        if grad:
            raise ConfigError(f"{', '.join(grad)} needs gradients, but this beat model ({cfg.detector}, "
                              f"{cfg.detector_params.get('model', 'mahalanobis')}) has none: use kernel_shap or "
                              f"lime", model_path)
    path = Path(path)
    if not path.exists():
        raise ReadError("file not found", path)
    res = decide(model, recording_items(model, path, top_k=max(1, int(top_k))))
    ivs = res["intervals"]
    unit = "beats" if beats else "windows"
    details = {unit: len(res["scores"]), f"{unit} above threshold": int(res["flagged"].sum()),
               "flagged spans (s)": ", ".join(f"{iv['start_s']:.1f}-{iv['end_s']:.1f}" for iv in ivs[:20]) or "none",
               "decision rule": f">= {cfg.min_windows} consecutive {unit} above the threshold",
               "case score": f"maximum over {unit}"}
    details["channels"] = ", ".join(res["channels"]) + (
        f" (chosen with --channels in place of the model's {_names(model.channels)})" if model.chosen else "")
    if res.get("channel_warning"):
        details["channel warning"] = res["channel_warning"]
    det, windows, ch_names, item_thr = model.detector, res.get("top_windows"), res["channels"], model.threshold
    sfreq = model.sfreq
    if beats:
        feats = res["top_features"]
        ch_names = [f"{ch_names[0]} - median beat"]
        details["beat (s)"] = f"{cfg.beat_before:g} s before to {cfg.beat_after:g} s after the R peak"
    if beats and cfg.rr_channels:  # one detector on the beat and its RR channels: its score is the beat score
        m = model.detector
        det, windows = m.detector, m.inputs(feats)
        ch_names += [f"{n} ({m.rr_scale:g} x log)" for n in RR_FEATURE_NAMES]
        details.update({
            "explained": (f"{det.name} on the beat minus the recording's median beat and 4 constant RR channels "
                          f"({m.rr_scale:g} x log of each RR ratio, 0 on the recording's rhythm); the attributions "
                          f"on an RR channel say how much that part of the rhythm counts"),
            "beat score": "the detector's score of the beat with its RR channels",
            "plots": "the attributions summed over the 5 input channels, shaded on every row",
            "RR features": ("each beat's RR ratios, and in brackets how much its score would drop with that "
                            "ratio set to the recording's rhythm (its channel set to 0; occlusion)"),
            "threshold (beat score)": f"{model.threshold:.4g}"})
        n_rr = len(RR_FEATURE_NAMES)
        occluded = np.repeat(windows[None], n_rr + 1, axis=0)  # [k]: RR channel k at 0; [n_rr]: all of them
        for k in range(n_rr):
            occluded[k, :, 1 + k] = 0.0
        occluded[n_rr, :, 1:] = 0.0
        full = det.score(windows).score.astype(np.float64)
        drop = full[None] - det.score(occluded.reshape(-1, *windows.shape[1:])).score.reshape(n_rr + 1, -1)
        for i, (t0, f) in enumerate(zip(res["top_starts"], feats)):
            details[f"beat at {t0 + cfg.beat_before:.2f} s"] = (
                f"beat score {full[i]:.4g}; " + ", ".join(f"{n} {v:.2f} ({d:+.3g})" for n, v, d in
                                                          zip(RR_FEATURE_NAMES, f[-n_rr:], drop[:n_rr, i]))
                + f"; whole rhythm regular: {drop[n_rr, i]:+.3g}")
    elif beats:
        shape, rr = BeatPart(model.detector, 0), BeatPart(model.detector, 1)
        z = np.stack([shape.score(shape.of(feats)).score, rr.score(rr.of(feats)).score]).astype(np.float64)
        rr_attr = explain_rr(rr, rr.of(feats), **explain_kw)
        item_thr, windows = None, shape.of(feats)
        if cfg.beat_fusion:
            det = model.detector.members[0]
            what = (f"{det.name} on the beat minus the recording's median beat; its attributions are those of the "
                    f"beat score up to a positive factor (the RR part does not depend on the trace)")
        else:
            det, step = shape, cfg.beat_step_at(model.sfreq)
            sfreq = model.sfreq / step
            what = (f"the beat-shape z-score of features ({cfg.detector_params.get('model', 'mahalanobis')}) on the "
                    f"beat minus the recording's median beat (one sample in {step}), perturbation methods over time "
                    f"segments set to the median beat; half the beat score beside the RR z-score, so its "
                    f"attributions are the beat score's up to a factor 2")
        details.update({
            "explained": what,
            "beat score": "mean of the z-scores of the beat shape and the RR features (on normal beats)",
            "RR attributions": "KernelSHAP of the RR z-score to each RR feature, against a regular rhythm (all 1)",
            "threshold (beat score)": f"{model.threshold:.4g}"})
        # the beat score is the mean of its parts (exactly, see BeatPart): no third scoring pass
        for t0, sc, zz, f, a in zip(res["top_starts"], z.mean(0), z.T, rr.of(feats)[:, 0], rr_attr):
            rr_text = ", ".join(f"{n} {v:.2f} ({w:+.2g})" for n, v, w in zip(RR_FEATURE_NAMES, f, a))
            details[f"beat at {t0 + cfg.beat_before:.2f} s"] = (
                f"beat score {sc:.4g} ({'>' if sc > model.threshold else '<='} threshold); shape z {zz[0]:.3g}, "
                f"RR z {zz[1]:.3g}; {rr_text}")
    else:
        details.update({"window (s)": cfg.window_seconds, "step (s)": cfg.step_seconds})
    if cfg.site_normalize != "none":  # per-site statistics need the whole screened folder
        details["site normalisation"] = (f"not applied here (the model screens with site_normalize="
                                         f"{cfg.site_normalize!r}): scores may differ from `medad screen run`")
    case = explain_windows(det, windows, res["top_starts"], sfreq, out, methods=methods,
                           cid=case_id or path.name.split(".")[0], score=float(res["scores"].max()),
                           threshold=item_thr, decision="abnormal" if ivs else "normal", ch_names=ch_names,
                           details=details, source=path.name,
                           identity=identity_from_file(path) if include_identity else None,
                           item="beat" if beats else "window",
                           **({"score_name": "beat-shape part", "no_threshold": f"a part of the beat score, no "
                               f"threshold of its own; beat scores vs threshold {model.threshold:.4g} in the report"}
                              if item_thr is None and beats else {}), **explain_kw)
    if item_thr is None:  # the plots had no threshold in the explained part's units; the case has the beat one
        case.threshold = model.threshold
        if not cfg.beat_signal:
            case.model = f"{type(model.detector).__name__} (beat shape block)"
        write_case(out, case)
        write_case_report(Path(out) / "report.html", case)
    return case


def site_normalise(features: Sequence[np.ndarray], groups: Sequence[str], det) -> list[np.ndarray]:
    """Per-site normalisation of the feature vectors of several recordings: robust z-score
    (median, IQR) of every feature over all items of each group of recordings (a site), then
    onto the training features' scale (the ``features`` detector's ``center_`` / ``scale_``), so
    the detector sees each item relative to its own site's typical item. Assumes most items of
    each group are normal. ``det``: a ``features`` detector or a beat-mode ScoreFusion (its
    training input's column statistics)."""
    from medad.transforms.signal import group_robust_zscore

    lens = [len(f) for f in features]
    g = np.repeat(np.asarray(list(groups), dtype=object).astype(str), lens)
    z = group_robust_zscore(np.concatenate(features), g).astype(np.float64)
    return np.split(z * det.scale_ + det.center_, np.cumsum(lens)[:-1])


def _write_events_tsv(path: Path, intervals: list[dict[str, Any]]) -> None:
    """BIDS ``*_events.tsv``: onset, duration, trial_type, score, probability."""
    from medad.utils import write_text

    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["onset", "duration", "trial_type", "score", "probability"])
    for iv in intervals:
        w.writerow([f"{iv['start_s']:.3f}", f"{iv['end_s'] - iv['start_s']:.3f}", "medad_abnormal",
                    f"{iv['max_score']:.6g}", f"{iv['probability']:.4f}"])
    write_text(path, buf.getvalue())


def mne_annotations(intervals: list[dict[str, Any]], orig_time=None):
    """Flagged intervals as :class:`mne.Annotations` (description ``medad_abnormal``)."""
    import mne

    return mne.Annotations(onset=[iv["start_s"] for iv in intervals],
                           duration=[iv["end_s"] - iv["start_s"] for iv in intervals],
                           description=["medad_abnormal"] * len(intervals), orig_time=orig_time)


# plain text carries no unit: EEG text exports (Bonn, Wang-Chung) hold microvolts
TEXT_UNIT = "uV"
_TO_VOLTS = {"v": 1.0, "mv": 1e-3, "uv": 1e-6, "\u00b5v": 1e-6, "\u03bcv": 1e-6, "nv": 1e-9}


def _source_units(hdr) -> list[float | None]:
    """Per channel of a non-MNE recording, the factor that turns its values into volts (``None``:
    no voltage unit known), from what :func:`medad.io.signals.read_header` parsed."""
    n = len(hdr.ch_names)
    if hdr.format == "text":
        return [_TO_VOLTS[TEXT_UNIT.lower()]] * n
    if hdr.format != "wfdb":  # WAV: fractions of full scale, no physical unit
        return [None] * n
    return [_TO_VOLTS.get((u or "").strip().lower()) for u in hdr.meta["units"]]


def _unique_labels(names: Sequence[str], max_len: int | None = None) -> list[str]:
    """Channel names made unique (MNE needs that) and at most ``max_len`` characters (EDF: 16)."""
    out: list[str] = []
    for c in names:
        base = str(c)[:max_len] if max_len else str(c)
        lab, k = base, 1
        while lab in out:
            tail = f"-{k}"
            lab = (base[:max_len - len(tail)] if max_len else base) + tail
            k += 1
        out.append(lab)
    return out


def recording_as_raw(src: Path, hdr, sfreq: float | None = None):
    """A WFDB, WAV or text recording as an in-memory :class:`mne.io.RawArray`, read once in
    blocks straight into one float64 array (the recording, never a second copy of it).

    Channel names and sampling rate are the source's; values are in volts where the source unit is
    known: WFDB channels by their header unit (V, mV, uV, nV), plain text **assumed** to be
    :data:`TEXT_UNIT` (microvolts, as EEG text exports are). Those channels are typed ``ecg`` when
    their name looks like an ECG lead (:func:`looks_like_ecg`), else ``eeg``. Channels without a
    known voltage unit (WAV: fractions of full scale; WFDB mmHg, NU, no unit) keep their values
    and are typed ``misc``. The WFDB base date becomes the measurement date; the recording's own
    annotations (WFDB beats) come along.
    """
    import mne

    from medad.io.signals import iter_signal_chunks

    scale = _source_units(hdr)
    types = ["misc" if s is None else "ecg" if looks_like_ecg(c) else "eeg" for c, s in zip(hdr.ch_names, scale)]
    fs = float(hdr.sfreq)
    data = np.empty((len(hdr.ch_names), hdr.n_times))
    for t0, x in iter_signal_chunks(src, 60.0, header=hdr, sfreq=sfreq):
        i = int(round(t0 * fs))
        data[:, i:i + x.shape[1]] = x
    data *= np.array([1.0 if s is None else s for s in scale])[:, None]
    info = mne.create_info(_unique_labels(hdr.ch_names), fs, types)
    raw = mne.io.RawArray(data, info, copy="auto", verbose="error")  # float64 already: not copied
    if hdr.meas_date is not None:
        raw.set_meas_date(hdr.meas_date)
    if hdr.annotations:
        a = hdr.annotations
        raw.set_annotations(mne.Annotations([x.onset for x in a], [x.duration for x in a],
                                            [x.description for x in a], orig_time=raw.info["meas_date"]),
                            verbose="error")
    return raw


FIF_MAX_BYTES = 1.9e9  # MNE splits FIF files at 2 GB


def _whole_edf_records(raw):
    """``raw`` padded (edge values, marked ``BAD_ACQ_SKIP``) to whole EDF data records where MNE's
    export does not do it itself: a non-integer rate (Bonn: 173.61 Hz) writes records of
    ``floor(sfreq)`` samples, and edfio refuses a length that is not a multiple of that."""
    import mne

    fs = float(raw.info["sfreq"])
    per_record = int(np.floor(fs))
    if fs.is_integer() or raw.n_times % per_record == 0:
        return raw
    pad = per_record - raw.n_times % per_record
    out = mne.io.RawArray(np.pad(raw.get_data(), ((0, 0), (0, pad)), mode="edge"), raw.info, verbose="error")
    skip = mne.Annotations([raw.n_times / fs], [pad / fs], ["BAD_ACQ_SKIP"], orig_time=raw.annotations.orig_time)
    out.set_annotations(raw.annotations + skip, verbose="error")
    return out


def write_mne_outputs(src: Path, intervals: list[dict[str, Any]], out_dir: Path, rid: str,
                      annotated_copy: str = "none", *, header=None, sfreq: float | None = None,
                      text_layout: str = "auto") -> list[Path]:
    """``<rid>-annot.fif`` (always) and, with ``annotated_copy`` ``"fif"``/``"edf"``, a copy of
    the recording carrying the annotations (``<rid>_screened_raw.fif`` / ``<rid>_screened.edf``),
    for every input format.

    EDF/BDF/FIF are read by MNE (values in volts, original annotations and measurement date kept);
    WFDB, WAV and text become an MNE Raw by :func:`recording_as_raw` (units and channel types
    there). The annotations' ``orig_time`` is the recording's measurement date, ``None`` where it
    has none (WAV, text, WFDB without a base date). The copy holds the whole recording in memory
    (float64, one recording at a time). EDF+ stores whole data records (1 s; ``floor(sfreq)``
    samples at a non-integer rate): a recording of another length is padded to the next whole
    record with edge values and a ``BAD_ACQ_SKIP`` annotation over the padding, so the copy is up
    to one record longer than the recording (:func:`_whole_edf_records` for non-integer rates,
    MNE's export otherwise; ``mne.export.export_raw`` has no setting that avoids it, as of MNE
    1.13), and channel names are cut to EDF's 16 characters. A FIF copy must fit one file (MNE would split it over files named after the
    temporary path): past :data:`FIF_MAX_BYTES` of float32 samples it is refused with a clear
    error (the 16-bit EDF+ copy is half the size). ``header``
    (:func:`medad.io.signals.read_header`) saves re-reading it; ``sfreq`` and ``text_layout`` are
    the plain-text rate and layout (without ``header``).
    """
    import mne

    from medad.io.signals import read_header
    from medad.utils import atomic_path

    check_annotated_copy(annotated_copy)
    hdr = header if header is not None else read_header(src, sfreq=sfreq, text_layout=text_layout)
    raw = mne.io.read_raw(str(src), preload=False, verbose="error") if hdr.format == "mne" else None
    orig = raw.annotations.orig_time if raw is not None else hdr.meas_date
    ann = mne_annotations(intervals, orig_time=orig)
    f = out_dir / f"{rid}-annot.fif"
    with atomic_path(f, suffix="-annot.fif") as tmp:
        ann.save(str(tmp), overwrite=True, verbose="error")
    written = [f]
    if annotated_copy == "none":
        return written
    n_bytes = 4 * len(hdr.ch_names) * hdr.n_times
    if annotated_copy == "fif" and n_bytes > FIF_MAX_BYTES:
        raise InputError(f"an annotated FIF copy would need {n_bytes / 1e9:.1f} GB, more than one FIF file holds "
                         f"({FIF_MAX_BYTES / 1e9:.1f} GB); use --annotated-copy edf", src)
    if raw is None:
        raw = recording_as_raw(src, hdr, sfreq)
    else:
        raw.load_data(verbose="error")
    raw.set_annotations(raw.annotations + ann, verbose="error")
    f = out_dir / (f"{rid}_screened_raw.fif" if annotated_copy == "fif" else f"{rid}_screened.edf")
    try:
        with atomic_path(f, suffix="_raw.fif" if annotated_copy == "fif" else ".edf") as tmp:
            if annotated_copy == "fif":
                raw.save(str(tmp), overwrite=True, verbose="error")
            else:
                labels = _unique_labels(raw.ch_names, 16)
                if labels != raw.ch_names:
                    raw.rename_channels(dict(zip(raw.ch_names, labels)), verbose="error")
                raw = _whole_edf_records(raw)
                mne.export.export_raw(str(tmp), raw, fmt="edf", overwrite=True, verbose="error")
    except (OSError, RuntimeError, ValueError) as e:  # MNE/edfio refusals, disk full: one line, not a traceback
        raise InputError(f"cannot write the annotated {annotated_copy} copy: {e}", f) from None
    written.append(f)
    return written


def check_annotated_copy(mode: str) -> None:
    """Clear error for an ``annotated_copy`` other than ``fif``, ``edf`` or ``none``."""
    if mode not in ("fif", "edf", "none"):
        raise ConfigError(f"annotated_copy must be 'fif', 'edf' or 'none', got {mode!r}")


_ECG_LEADS = {"i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "mlii", "mli", "mliii",
              "ml", "v", "x", "y", "z", "vx", "vy", "vz", "d1", "d2", "d3"}


def looks_like_ecg(channel: str) -> bool:
    """True for ECG channel names (``ECG...``, ``EKG...``, limb/precordial/modified leads)."""
    c = channel.strip().lower()
    return c.startswith(("ecg", "ekg")) or c in _ECG_LEADS or c.replace("lead", "").strip() in _ECG_LEADS


def write_wfdb_annotations(record: str, intervals: list[dict[str, Any]], sfreq: float, out_dir: Path,
                           extension: str = "medad", beats: np.ndarray | None = None,
                           flags: np.ndarray | None = None, scores: np.ndarray | None = None) -> Path:
    """Screening results as a WFDB annotation file ``<record>.<extension>``.

    Each flagged interval is a rhythm-change annotation (``+``, aux ``(MEDAD_ABN score=...``) at
    its start and ``+`` ``(N`` at its end. With ``beats`` (R-peak samples), every beat is
    annotated too: ``N``, or ``Q`` (unclassifiable, aux ``medad_abnormal``) when flagged -- by
    ``flags`` (one per beat; beat mode) or else by lying inside a flagged interval -- a beat file
    any WFDB viewer shows alongside the reference annotations. ``scores`` (one per beat) go into
    the flagged beats' aux notes.
    """
    from medad.io.signals import _wfdb

    wfdb = _wfdb()
    samples, symbols, aux = [], [], []
    for iv in intervals:
        samples += [int(round(iv["start_s"] * sfreq)), int(round(iv["end_s"] * sfreq))]
        symbols += ["+", "+"]
        aux += [f"(MEDAD_ABN score={iv['max_score']:.4g} p={iv['probability']:.3f}", "(N"]
    if beats is not None and len(beats):
        if flags is None:
            t = np.asarray(beats) / sfreq
            flags = np.zeros(len(t), bool)
            for iv in intervals:
                flags |= (t >= iv["start_s"]) & (t < iv["end_s"])
        if len(flags) != len(beats) or (scores is not None and len(scores) != len(beats)):
            raise InputError(f"{len(beats)} beats but {len(flags)} flags"
                             + ("" if scores is None else f" and {len(scores)} scores"))
        samples += [int(b) for b in beats]
        symbols += ["Q" if f else "N" for f in flags]
        aux += [("medad_abnormal" + ("" if scores is None else f" score={scores[i]:.4g}")) if f else ""
                for i, f in enumerate(flags)]
    f = out_dir / f"{record}.{extension}"
    if not samples:  # wrann refuses an empty file; a note says "nothing flagged"
        samples, symbols, aux = [0], ["\""], ["medad: nothing flagged"]
    order = np.argsort(samples, kind="stable")
    tmpdir = out_dir / f".wfdb_tmp_{record}"
    tmpdir.mkdir(exist_ok=True)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wfdb.wrann(record, extension, np.asarray(samples)[order], np.asarray(symbols)[order],
                       aux_note=[aux[i] for i in order], fs=sfreq, write_dir=str(tmpdir))
        (tmpdir / f.name).replace(f)
    finally:
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()
    return f


PLOT_TRACE_SECONDS = 900.0  # recordings up to this long are re-read to draw the real trace


def plot_recording(path: Path, res: dict[str, Any], model: ScreeningModel, title: str,
                   source: Path | None = None) -> Path:
    """The first channels (preprocessed) with abnormal spans shaded, and the window (beat)
    scores with the threshold. Recordings up to :data:`PLOT_TRACE_SECONDS` long (given
    ``source``) show the trace itself; longer ones their per-window (per-beat) min/max envelope
    (never re-read whole). Beat mode also marks the flagged beats and adds a 10 s close-up of
    the trace around the highest-scoring flagged beat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medad.io.signals import iter_signal_chunks
    from medad.utils import atomic_path

    beats = model.cfg.unit == "beats"
    t, env, hdr = res["times"], res["envelope"], res["header"]  # env: (n, C<=4, 2)
    n_ch = env.shape[1]
    dur = hdr.n_times / hdr.sfreq
    pre = model.preprocessor()
    picks = res["picks"][:1 if beats else n_ch]  # the channels screened (recording_items)

    def read(a: float, b: float, max_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed trace of [a, b) s (filter edges read and dropped), at most ~max_points."""
        a0, b0 = max(0.0, a - pre.pad), min(dur, b + pre.pad)
        _, x = next(iter_signal_chunks(source, b0 - a0 + 1, picks=picks, header=hdr, start_seconds=a0,
                                       stop_seconds=b0, sfreq=model.cfg.text_sfreq))
        y, fs = pre.filter(x, float(hdr.sfreq))
        tt = a0 + np.arange(y.shape[1]) / fs
        m = (tt >= a) & (tt < b)
        step = max(1, int(m.sum()) // max_points)
        return tt[m][::step], y[:, m][:, ::step]

    trace = read(0.0, dur) if source is not None and dur <= PLOT_TRACE_SECONDS else None
    flagged = res.get("flagged", np.zeros(len(t), bool))
    zoom = None
    if beats and source is not None and flagged.any():
        k = int(np.argmax(np.where(flagged, res["scores"], -np.inf)))
        a = max(0.0, min(t[k] - 5.0, dur - 10.0))
        zoom = (a, min(dur, a + 10.0), read(a, min(dur, a + 10.0)))
    n_ax = n_ch + 1 + (zoom is not None)
    fig, axes = plt.subplots(n_ax, 1, figsize=(12, 1.4 * n_ax + 0.6))
    main = list(axes[:n_ch + 1])
    for a in main[1:]:
        a.sharex(main[0])
    for c in range(n_ch):
        ax = main[c]
        if trace is not None:
            ax.plot(trace[0], trace[1][c], color="0.2", lw=0.5)
        else:
            ax.fill_between(t, env[:, c, 0], env[:, c, 1], color="0.25", lw=0, step="mid")
        if beats and flagged.any():
            ax.plot(t[flagged], env[flagged, c, 1], "v", color="C3", ms=4, label="flagged beat")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(res["channels"][c][:12], rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    ax = main[-1]
    if beats:
        ax.plot(t, res["scores"], ".", ms=2, color="C0")
    else:
        ax.plot(t, res["scores"], lw=0.8, color="C0")
    ax.axhline(model.threshold, color="C3", ls="--", lw=0.8, label=f"threshold ({model.cfg.window_fpr:g} FPR)")
    ax.set_ylabel("beat score" if beats else "score")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("time (s)")
    for a in main:
        for iv in res["intervals"]:
            a.axvspan(iv["start_s"], iv["end_s"], color="C3", alpha=0.25, lw=0)
    if zoom is not None:
        a0, b0, (tt, y) = zoom
        ax = axes[-1]
        ax.plot(tt, y[0], color="0.2", lw=0.7)
        inside = (t >= a0) & (t < b0)
        yb = np.interp(t[inside], tt, y[0])
        ax.plot(t[inside & ~flagged], yb[~flagged[inside]], "o", mfc="none", color="0.5", ms=5, label="beat")
        ax.plot(t[inside & flagged], yb[flagged[inside]], "v", color="C3", ms=7, label="flagged beat")
        ax.set_xlim(a0, b0)
        ax.set_yticks([])
        ax.set_xlabel("time (s): close-up of the highest-scoring flagged beat")
        ax.legend(loc="upper right", fontsize=7)
    main[0].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def unique_record_ids(files: Sequence[Path]) -> list[str]:
    """Record ids from file names, prefixed with parent folders where two files share a name
    (``N/001.wav`` and ``MR/001.wav`` -> ``N_001``, ``MR_001``), so outputs never overwrite."""
    from medad.io.signals import record_id_from_path

    rids = [record_id_from_path(f) for f in files]
    depth = 1
    while len(set(rids)) < len(rids) and depth < 8:
        seen: dict[str, int] = {}
        for r in rids:
            seen[r] = seen.get(r, 0) + 1
        rids = [("_".join(f.parts[-1 - depth:-1]) + "_" + record_id_from_path(f)) if seen[r] > 1 else r
                for f, r in zip(files, rids)]
        depth += 1
    return rids


#: results.csv columns; ``channels``: the channel(s) screened (beat mode: the ECG lead), ``warning``:
#: why they may not be the model's (matched without names, another ECG lead; :func:`match_channels`)
RESULT_FIELDS = ["file", "record_id", "status", "error", "channels", "warning", "duration_s", "n_windows", "n_beats",
                 "n_flagged_beats", "max_score", "decision", "n_intervals", "flagged_seconds", "threshold"]


def _error_row(f: Path, rid: str, e: Exception) -> dict[str, Any]:
    problem = e.problem if isinstance(e, MedadError) else f"unexpected {type(e).__name__}: {e}"
    return {"file": str(f), "record_id": rid, "status": "error", "error": problem}


# every per-recording file screening (and `medad report`) writes, by record id
_RECORDING_OUTPUTS = ("{}_events.tsv", "{}_window_scores.csv", "{}_beat_scores.csv", "{}-annot.fif",
                      "{}_screened_raw.fif", "{}_screened.edf", "{}_screening.png", "{}.medad", "{}_report.html")


def _clear_outputs(out: Path, rid: str) -> None:
    """Remove what an earlier run into ``out`` wrote for ``rid``: a recording that now fails, or
    now has no flagged span or no annotated copy, must not keep files that contradict results.csv."""
    for pattern in _RECORDING_OUTPUTS:
        (out / pattern.format(rid)).unlink(missing_ok=True)


def _write_recording(model: ScreeningModel, f: Path, rid: str, res: dict[str, Any], out: Path,
                     annotated_copy: str, plots: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write one screened recording's outputs; returns its results.csv row and results.json entry."""
    from medad.utils import write_text

    _clear_outputs(out, rid)
    hdr, ivs, s = res["header"], res["intervals"], res["scores"]
    beats = model.cfg.unit == "beats"
    fs = float(hdr.sfreq)
    outputs = []
    _write_events_tsv(out / f"{rid}_events.tsv", ivs)
    outputs.append(f"{rid}_events.tsv")
    buf = io.StringIO()
    if beats:
        buf.write("sample,time_s,score,flagged\n")
        buf.write("".join(f"{n},{n / fs:.4f},{v:.6g},{int(g)}\n"
                          for n, v, g in zip(res["samples"], s, res["flagged"])))
        name = f"{rid}_beat_scores.csv"
    else:
        buf.write("start_s,score\n")
        buf.write("".join(f"{a:.3f},{b:.6g}\n" for a, b in zip(res["starts"], s)))
        name = f"{rid}_window_scores.csv"
    write_text(out / name, buf.getvalue())
    outputs.append(name)
    try:
        outputs += [p.name for p in write_mne_outputs(f, ivs, out, rid, annotated_copy, header=hdr,
                                                      sfreq=model.cfg.text_sfreq)]
        if beats:  # every beat, flagged ones marked, whatever the input format
            outputs.append(write_wfdb_annotations(rid, ivs, fs, out, beats=res["samples"], flags=res["flagged"],
                                                  scores=s).name)
        elif hdr.format == "wfdb":
            peaks = None
            pre = model.preprocessor()
            ch = res["picks"][0]
            if model.cfg.ecg_beats and looks_like_ecg(hdr.ch_names[ch]):
                found, _ = pre.beats(f, hdr, channel=ch, cut=False)
                peaks = np.round(found / pre.sfreq * fs).astype(np.int64)
            outputs.append(write_wfdb_annotations(rid, ivs, fs, out, beats=peaks).name)
        if plots and ivs:
            what = f"{int(res['flagged'].sum())} flagged beat(s) in " if beats else ""
            outputs.append(plot_recording(out / f"{rid}_screening.png", res, model,
                                          f"{rid}: {what}{len(ivs)} flagged span(s), max score {s.max():.3g} "
                                          f"(threshold {model.threshold:.3g})", source=f).name)
    except MedadError as e:
        outputs.append(f"(output failed: {e.problem})")
    row = {
        "file": str(f), "record_id": rid, "status": "ok", "error": "",
        "channels": ",".join(res["channels"]), "warning": res.get("channel_warning") or "",
        "duration_s": round(hdr.n_times / fs, 3), "n_windows": "" if beats else int(len(s)),
        "n_beats": int(len(s)) if beats else "", "n_flagged_beats": int(res["flagged"].sum()) if beats else "",
        "max_score": float(s.max()), "decision": "abnormal" if ivs else "normal", "n_intervals": len(ivs),
        "flagged_seconds": round(float(sum(iv["end_s"] - iv["start_s"] for iv in ivs)), 3),
        "threshold": model.threshold,
    }
    # results.json: fields that do not apply (n_beats in window mode, ...) are null, not ""
    return row, {**{k: None if v == "" else v for k, v in row.items()}, "channels": list(res["channels"]),
                 "intervals": ivs, "outputs": outputs}


def site_group(path: Path, folder: Path, mode: str) -> str:
    """The site a screened recording belongs to: the whole folder, or its subfolder."""
    if mode == "folder" or not folder.is_dir():
        return "."
    return str(Path(path).parent.relative_to(folder))


def screen_folder(model_path: str | Path, folder: str | Path, out: str | Path, *, annotated_copy: str = "none",
                  plots: bool = True, progress: bool = True, site_normalize: str | None = None,
                  text_sfreq: float | None = None, text_layout: str | None = None,
                  channels: Sequence[str] | None = None) -> dict[str, Any]:
    """Screen every recording in ``folder`` and write the outputs (see module docstring) to ``out``.

    A recording that cannot be read or screened is reported (status ``error`` with the reason)
    and skipped; the others are still screened. ``site_normalize`` (``none``, ``folder``,
    ``subfolder``; default: the model's ``site_normalize``) normalises features per site first.
    ``text_sfreq`` / ``text_layout``: rate and layout of plain-text recordings (default: the
    model's; a model trained on EDF has no rate).

    Each recording is screened on the model's channels, found by name (:func:`match_channels`);
    ``channels`` names other channels of the recordings to screen in their place (as many as the
    model has, in its order; ``medad screen run --channels``). A recording whose channels cannot
    be matched safely (the model's channel missing, or several to choose from for a model of
    unnamed channels) is skipped with the reason; one matched without names (plain text, another
    ECG lead in beat mode) is screened with a ``warning``. ``results.csv/json`` give the channels
    screened per recording.

    Returns:
        The ``results.json`` content.
    """
    from tqdm.auto import tqdm

    from medad.utils import write_json, write_text

    check_annotated_copy(annotated_copy)  # before any work, not once per recording
    model = ScreeningModel.load(model_path)
    warning_lines: list[str] = []
    if text_sfreq is not None:  # plain-text recordings carry no rate
        problem = number_problem("text_sfreq", text_sfreq)
        if problem:
            raise ConfigError(problem)
        trained = model.cfg.text_sfreq
        if trained and abs(float(text_sfreq) - trained) > 0.01 * trained:
            # not refused (another device may record at another rate), but a wrong rate resamples
            # silently to a different signal: the model then judges a sped-up or slowed-down one
            warning_lines.append(
                f"--text-sfreq {float(text_sfreq):g} Hz differs from the rate of the model's plain-text training "
                f"recordings (text_sfreq {trained:g} Hz): text recordings are read as {float(text_sfreq):g} Hz; if "
                f"they were recorded like the training ones, the wrong rate stretches them in time and normal ones "
                f"may be flagged abnormal")
            if progress:
                print(f"warning: {warning_lines[-1]}")
        model.cfg.text_sfreq = float(text_sfreq)
    if text_layout is not None:
        from medad.io.signals import check_text_layout

        check_text_layout(text_layout)
        model.cfg.text_layout = text_layout
    model.use_channels(channels)
    site = model.cfg.site_normalize if site_normalize is None else site_normalize
    check_site_normalize(site, model.cfg.detector, model.cfg.unit)
    if site != "none" and getattr(model.detector, "center_", None) is None:
        raise ConfigError("this model keeps no statistics of its training features (a beat model saved before "
                          "they were kept): retrain it to use site_normalize", model_path)
    folder = Path(folder)
    files = list_recordings(folder)
    rids = unique_record_ids(files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    items: dict[int, dict[str, Any]] = {}
    for k, (f, rid) in enumerate(tqdm(list(zip(files, rids)), desc="screening", disable=not progress, unit="rec")):
        try:  # per-site mode: features of every recording first, scored once the sites' statistics are known
            res = recording_items(model, f, features=site != "none", progress=progress)
        except Exception as e:  # noqa: BLE001 -- a bug or an unforeseen file problem must not stop the batch
            row = _error_row(f, rid, e)
            done[k] = (row, dict(row))
            _clear_outputs(out, rid)
            if progress:  # one line naming the file, as the brain and frame pipelines do
                tqdm.write(f"skipped: {f}: {row['error']}")
            continue
        if progress and res.get("channel_warning"):
            tqdm.write(f"warning: {f}: {res['channel_warning']}")
        if site == "none":
            done[k] = _write_recording(model, f, rid, decide(model, res), out, annotated_copy, plots)
        else:
            items[k] = res
    sites: dict[str, dict[str, int]] = {}
    if items:
        keys = sorted(items)
        groups = [site_group(files[k], folder, site) for k in keys]
        aligned = site_normalise([items[k]["features"] for k in keys], groups, model.detector)
        scorer = feature_scorer(model.detector)
        for k, g, a in zip(keys, groups, aligned):
            sites.setdefault(g, {"n_recordings": 0, "n_items": 0})
            sites[g]["n_recordings"] += 1
            sites[g]["n_items"] += len(a)
            done[k] = _write_recording(model, files[k], rids[k], decide(model, items.pop(k), _scores(scorer, a)),
                                       out, annotated_copy, plots)
    rows = [done[k][0] for k in range(len(files))]
    recs = [done[k][1] for k in range(len(files))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in RESULT_FIELDS})
    write_text(out / "results.csv", buf.getvalue())
    unit = "beats" if model.cfg.unit == "beats" else "windows"
    summary = {
        "model": str(model_path), "folder": str(folder), "detector": model.cfg.detector, "unit": unit,
        "threshold": model.threshold, "threshold_source": model.info.get("calibration"),
        "decision_rule": f"abnormal when >= {model.cfg.min_windows} consecutive {unit} score above the threshold",
        "probability_meaning": f"share of held-out normal {unit} scoring below the interval's max score",
        "site_normalize": site,
        "model_channels": model.channels, "channel_match": "position" if model.by_position else "name",
        **({"channels_chosen": model.chosen} if model.chosen else {}),
        "n_recordings": len(rows), "n_errors": sum(r["status"] == "error" for r in rows),
        "n_channel_warnings": sum(bool(r.get("warning")) for r in rows),
        "n_abnormal": sum(r.get("decision") == "abnormal" for r in rows), "recordings": recs,
    }
    if warning_lines:
        summary["warnings"] = warning_lines
    if site != "none":
        summary["sites"] = sites
        summary["site_assumption"] = "features robust z-scored per site; assumes most items of each site are normal"
    write_json(out / "results.json", summary)
    if progress:
        print(f"screened {len(rows) - summary['n_errors']} recording(s), {summary['n_abnormal']} abnormal, "
              f"{summary['n_errors']} could not be read or screened (see the error column)"
              + (f", {summary['n_channel_warnings']} screened on channels matched without their names (see the "
                 f"warning column)" if summary["n_channel_warnings"] else "")
              + f"; results in {out / 'results.csv'}")
    return summary
