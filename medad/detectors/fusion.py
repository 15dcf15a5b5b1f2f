"""Score fusion: several one-class detectors, each scoring its own column block of one input
matrix, combined into one score.

Used where one kind of model does not see everything that matters, e.g. ECG beats: a sequence
autoencoder on the beat shape (beat minus the recording's median beat) and a Mahalanobis model
of 4 RR features (the rhythm), as in the MIT-BIH benchmark and the screening pipeline's beat
mode::

    fusion = ScoreFusion([registry.create("seq_ae", ...),
                          registry.create("features", feature_fn="precomputed", model="mahalanobis")],
                         blocks=[252, 4])
    fusion.fit(x_normal)                  # x: (N, 256); member i fits on its block of columns
    fusion.calibrate(x_healthy_val, fpr=0.05)
    fusion.score(x).score                 # mean of the members' robust z-scores

Each member's score is robust z-scored (median, IQR: :func:`medad.transforms.signal.robust_scale`)
on **healthy calibration items** -- never test or abnormal items -- so members on different
scales weigh equally. A member that takes signals (``input_kind="signal"``, not precomputed
features) gets its block as one channel ``(N, 1, L)``; a features member gets ``(N, L)``.

The training input's column statistics (median, IQR scale: ``center_``, ``scale_``) are kept, as
a ``features`` detector keeps its own: per-site normalisation
(:func:`pipelines.screening.site_normalise`) maps another site's inputs onto them.

Saved without pickle: one folder per member (:meth:`Detector.save`) and ``fusion.json``
(blocks, standardisation statistics, input column statistics, threshold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medad.errors import InputError, NotFittedError, ReadError

FUSION_FILE = "fusion.json"


def member_view(det) -> str:
    """How a member takes its block: ``"signal"`` (``(N, 1, L)``) or ``"features"`` (``(N, L)``)."""
    if det.input_kind == "features" or getattr(det, "feature_fn", None) == "precomputed":
        return "features"
    if det.input_kind != "signal":
        raise InputError(f"a fusion member scores a column block as a signal or as features; "
                         f"{type(det).__name__} takes {det.input_kind} input")
    return "signal"


def input_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column statistics (median, IQR scale) of a model's training input ``(N, F)``: what per-site
    normalisation maps another site's inputs onto (``center_``, ``scale_``)."""
    from medad.transforms.signal import robust_scale

    center, scale = robust_scale(np.asarray(x, np.float64), axis=0, eps=1e-9)
    return center[0], scale[0]


def input_stats_json(model) -> dict[str, Any]:
    """A model's training-input column statistics (``center_``, ``scale_``, for per-site
    normalisation) as JSON fields ``input_center`` / ``input_scale`` (``None`` when not kept)."""
    return {"input_center": None if model.center_ is None else np.asarray(model.center_).tolist(),
            "input_scale": None if model.scale_ is None else np.asarray(model.scale_).tolist()}


def input_stats_from(info: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(center, scale)`` back from :func:`input_stats_json`'s fields (``None`` when absent)."""
    if info.get("input_center") is None:
        return None, None
    return np.asarray(info["input_center"], np.float64), np.asarray(info["input_scale"], np.float64)


class ScoreFusion:
    """Mean of the robust z-scores of several detectors, each scoring a block of columns.

    Args:
        members: detectors (fitted, or fitted by :meth:`fit`), one per block.
        blocks: column counts of consecutive blocks of the input, one per member.

    Duck-types the part of the detector contract callers use: ``fit``, ``calibrate``,
    ``score``, ``threshold_``, ``save`` / ``load``.
    """

    def __init__(self, members: Sequence[Any], blocks: Sequence[int]):
        if len(members) != len(blocks) or not members:
            raise InputError(f"{len(members)} fusion members but {len(blocks)} blocks")
        if any(int(b) < 1 for b in blocks):
            raise InputError(f"blocks must be positive column counts, got {list(blocks)}")
        self.members = list(members)
        self.blocks = [int(b) for b in blocks]
        self.views = [member_view(m) for m in self.members]
        self.stats_: np.ndarray | None = None  # (M, 2): median, scale of each member's healthy scores
        self.threshold_: float | None = None
        self.center_: np.ndarray | None = None  # (F,): median of every input column of the training items
        self.scale_: np.ndarray | None = None   # (F,): their IQR scale (robust_scale)

    # ------------------------------------------------------------------ inputs
    def member_inputs(self, x) -> list[np.ndarray]:
        """Member ``i``'s input: its block of the columns of ``x`` (``(N, sum(blocks))``), or
        ``x[i]`` when ``x`` is a list of the members' inputs (N items each, shaped for the member:
        e.g. windows whose length changes with the recording)."""
        if isinstance(x, (list, tuple)):
            if len(x) != len(self.members) or len({len(v) for v in x}) != 1:
                raise InputError(f"a list fusion input needs one array per member ({len(self.members)}), each with "
                                 f"the same number of items; got {[np.shape(v) for v in x]}")
            return [np.ascontiguousarray(v, dtype=np.float32) for v in x]
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != sum(self.blocks):
            raise InputError(f"fusion input must be (N, {sum(self.blocks)}) (blocks {self.blocks}), got {x.shape}")
        edges = np.cumsum([0] + self.blocks)
        return [np.ascontiguousarray(x[:, a:b][:, None] if v == "signal" else x[:, a:b])
                for a, b, v in zip(edges[:-1], edges[1:], self.views)]

    # ------------------------------------------------------------------ contract
    def fit(self, x, fit_member: Callable[[Any, np.ndarray], Any] | None = None) -> "ScoreFusion":
        """Fit every member on its block of the healthy items ``x``; ``fit_member(det, xi)``
        replaces ``det.fit(xi)`` (e.g. to time each member)."""
        for m, xi in zip(self.members, self.member_inputs(x)):
            (fit_member or (lambda d, v: d.fit(v)))(m, xi)
        self.center_ = self.scale_ = None  # no column statistics of a list input
        if not isinstance(x, (list, tuple)):
            self.center_, self.scale_ = input_stats(x)
        self.stats_ = self.threshold_ = None
        return self

    def member_scores(self, x) -> np.ndarray:
        """Raw member scores ``(M, N)``."""
        return np.stack([np.asarray(m.score(xi).score, np.float64)
                         for m, xi in zip(self.members, self.member_inputs(x))])

    def set_reference(self, healthy) -> np.ndarray:
        """Standardisation statistics of every member from healthy calibration items; returns
        the members' raw scores of those items ``(M, N)``."""
        from medad.transforms.signal import robust_scale

        raw = self.member_scores(healthy)
        med, scale = robust_scale(raw, axis=1, eps=1e-12)
        self.stats_ = np.concatenate([med, scale], axis=1)
        return raw

    def calibrate(self, healthy, *, fpr: float = 0.05) -> "ScoreFusion":
        """:meth:`set_reference` and the threshold flagging ``fpr`` of the same healthy items
        (their member scores computed once)."""
        from medad.detectors.base import threshold_at_fpr

        raw = self.set_reference(healthy)
        self.threshold_ = threshold_at_fpr(self.fused(raw), fpr)
        return self

    def standardised(self, raw: np.ndarray) -> np.ndarray:
        """Member scores ``(M, N)`` as robust z-scores on the healthy reference."""
        if self.stats_ is None:
            raise NotFittedError("ScoreFusion has no reference: call set_reference() or calibrate() on healthy "
                                 "items first")
        return (np.asarray(raw, np.float64) - self.stats_[:, :1]) / self.stats_[:, 1:]

    def fused(self, raw: np.ndarray) -> np.ndarray:
        """Member scores ``(M, N)`` -> the fused score ``(N,)``: mean of the robust z-scores."""
        return self.standardised(raw).mean(axis=0).astype(np.float32)

    def score(self, x):
        """Mean of the members' standardised scores (no map: members' maps live on their own blocks)."""
        from medad.detectors.base import AnomalyResult

        return AnomalyResult(score=self.fused(self.member_scores(x)))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """``member_<i>/`` (each a saved detector, written atomically) then ``fusion.json`` (also
        atomic, and last: a folder whose writing was cut short has none and fails to load)."""
        from medad.utils import write_json

        if self.stats_ is None:
            raise NotFittedError("ScoreFusion is not calibrated: nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / FUSION_FILE).unlink(missing_ok=True)
        for i, m in enumerate(self.members):
            m.save(path / f"member_{i}")
        write_json(path / FUSION_FILE, {
            "kind": "medad score fusion", "blocks": self.blocks, "members": [m.name for m in self.members],
            "median": self.stats_[:, 0].tolist(), "scale": self.stats_[:, 1].tolist(), "threshold": self.threshold_,
            **input_stats_json(self)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScoreFusion":
        """Load a fusion saved with :meth:`save` (members through :meth:`Detector.load`)."""
        from medad.detectors.base import Detector
        from medad.utils import read_model_json

        path = Path(path)
        cfg = read_model_json(path, FUSION_FILE, "saved medad score fusion")
        try:
            n = len(cfg["members"])
            out = cls([Detector.load(path / f"member_{i}") for i in range(n)], cfg["blocks"])
            out.stats_ = np.stack([np.asarray(cfg["median"], np.float64), np.asarray(cfg["scale"], np.float64)], 1)
            out.threshold_ = None if cfg.get("threshold") is None else float(cfg["threshold"])
            out.center_, out.scale_ = input_stats_from(cfg)  # None in fusions saved before they were kept
        except (KeyError, TypeError, ValueError) as e:
            raise ReadError(f"corrupt {FUSION_FILE}: {e}", path / FUSION_FILE) from None
        if out.stats_.shape != (n, 2):
            raise ReadError(f"corrupt {FUSION_FILE}: statistics for {len(out.stats_)} of {n} members",
                            path / FUSION_FILE)
        if out.center_ is not None and not out.center_.shape == out.scale_.shape == (sum(out.blocks),):
            raise ReadError(f"corrupt {FUSION_FILE}: input statistics do not match the blocks {out.blocks}",
                            path / FUSION_FILE)
        return out
