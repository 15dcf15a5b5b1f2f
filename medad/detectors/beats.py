"""Beat models that are not a single registered detector: :class:`RRChannelModel`, one signal
detector that sees a beat and the rhythm around it as input channels (the screening pipeline's
``rr_channels`` beat mode; the MIT-BIH benchmark's deep model chosen on training records).

Its sibling for the other beat mode, two detectors whose scores are averaged, is
:class:`medad.detectors.fusion.ScoreFusion`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medad.detectors.base import Detector
from medad.errors import ReadError

__all__ = ["RRChannelModel", "RR_CHANNELS_FILE"]

RR_CHANNELS_FILE = "rr_channels.json"


class RRChannelModel:
    """Beat mode with ``rr_channels``: one signal detector scoring the beat minus the recording's
    median beat together with 4 constant RR channels (:func:`medad.transforms.signal.beat_rr_channels`),
    from beat features ``(N, L + 4)`` -- what the pipeline hands every beat model. The detector's
    score is the beat score; its threshold comes from held-out normal beats as for any detector.

    Keeps the training features' column statistics (``center_``, ``scale_``: median, IQR) for
    per-site normalisation (:func:`pipelines.screening.site_normalise`), as a ``features`` detector or a
    :class:`~medad.detectors.fusion.ScoreFusion` does. Saved without pickle: the detector's folder
    plus ``rr_channels.json`` (written last: a folder cut short has none and fails to load).
    """

    def __init__(self, detector: Detector, rr_scale: float):
        self.detector, self.rr_scale = detector, float(rr_scale)
        self.members = [detector]  # what the training loop sets progress options on
        self.center_ = self.scale_ = None

    def inputs(self, features: np.ndarray) -> np.ndarray:
        """The detector's input ``(N, 5, L)`` of beat features ``(N, L + 4)``."""
        from medad.transforms.signal import beat_rr_channels

        return beat_rr_channels(features, self.rr_scale)

    @property
    def threshold_(self) -> float | None:
        return self.detector.threshold_

    def fit(self, features: np.ndarray) -> "RRChannelModel":
        from medad.detectors.fusion import input_stats

        f = np.asarray(features, dtype=np.float64)
        self.center_, self.scale_ = input_stats(f)
        self.detector.fit(self.inputs(f))
        return self

    def calibrate(self, features: np.ndarray, *, fpr: float = 0.05) -> "RRChannelModel":
        self.detector.calibrate(self.inputs(features), fpr=fpr)
        return self

    def score(self, features: np.ndarray):
        return self.detector.score(self.inputs(features))

    def save(self, path: str | Path) -> Path:
        from medad.detectors.fusion import input_stats_json
        from medad.utils import write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / RR_CHANNELS_FILE).unlink(missing_ok=True)
        self.detector.save(path)
        write_json(path / RR_CHANNELS_FILE, {"kind": "medad beat model with RR channels", "rr_scale": self.rr_scale,
                                             **input_stats_json(self)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RRChannelModel":
        from medad.detectors.fusion import input_stats_from
        from medad.utils import read_model_json

        path = Path(path)
        info = read_model_json(path, RR_CHANNELS_FILE, "saved medad beat model with RR channels")
        try:
            out = cls(Detector.load(path), float(info["rr_scale"]))
            out.center_, out.scale_ = input_stats_from(info)
        except (KeyError, TypeError, ValueError) as e:
            raise ReadError(f"corrupt {RR_CHANNELS_FILE}: {e}", path / RR_CHANNELS_FILE) from None
        return out
