"""Fusion of several one-class detectors: their scores (:class:`ScoreFusion`, one column block
each) or their pixel maps (:class:`MapFusion`, every member sees the whole image).

Score fusion is used where one kind of model does not see everything that matters, e.g. ECG beats: a sequence
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

Map fusion (the ``map_fusion`` detector) averages the pixel maps of image detectors, e.g. a
seed ensemble of synthetic-anomaly segmenters beside a colour-statistics memory bank, each map
standardised on **healthy pixels** (robust z-score, or the healthy pixels' empirical CDF) so
that maps on different scales can be averaged with fixed weights (see :class:`MapFusion`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError, NotFittedError, ReadError
from medad.registry import register

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
        raw = self.member_scores(healthy)
        self.stats_ = np.stack([reference_stats(r, "robust") for r in raw])
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
        return np.stack([standardise(r, st, "robust") for r, st in zip(np.asarray(raw, np.float64), self.stats_)])

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


# ---------------------------------------------------------------------------- map fusion
STANDARDISE = ("rank", "robust")


def reference_stats(values: np.ndarray, method: str, n_quantiles: int = 2049) -> np.ndarray:
    """Standardisation statistics of one member from its values on healthy pixels (or items):
    ``"robust"``: ``[median, IQR scale]`` (:func:`medad.transforms.signal.robust_scale`);
    ``"rank"``: ``n_quantiles`` quantiles of the values (their empirical CDF)."""
    from medad.transforms.signal import robust_scale

    v = np.asarray(values, np.float64).ravel()
    if not v.size or not np.isfinite(v).all():
        raise InputError(f"standardisation needs finite healthy values, got {v.size} values "
                         f"({int(np.sum(~np.isfinite(v)))} not finite)")
    if method == "robust":
        med, scale = robust_scale(v, eps=1e-12)
        return np.array([med[0], scale[0]])
    if method == "rank":
        return np.quantile(v, np.linspace(0.0, 1.0, int(n_quantiles)))
    raise ConfigError(f"standardise must be one of {STANDARDISE}, not {method!r}")


def standardise(values: np.ndarray, stats: np.ndarray, method: str) -> np.ndarray:
    """Values on the healthy reference's scale (:func:`reference_stats`).

    ``"rank"``: the share of healthy values below (ties: the middle of their share), linear
    between the stored quantiles and continued linearly past both ends (slope 1 / the healthy
    range), so values beyond every healthy one stay ordered instead of all becoming 1.
    """
    v = np.asarray(values, np.float64)
    if method == "robust":
        return (v - stats[0]) / stats[1]
    q = np.asarray(stats, np.float64)
    p = np.linspace(0.0, 1.0, len(q))
    span = q[-1] - q[0] if q[-1] > q[0] else 1.0
    lo = np.searchsorted(q, v, "left")
    hi = np.searchsorted(q, v, "right")
    a, b = np.clip(lo - 1, 0, len(q) - 1), np.clip(lo, 0, len(q) - 1)
    gap = q[b] - q[a]
    inside = p[a] + np.where(gap > 0, (v - q[a]) / np.where(gap > 0, gap, 1.0), 0.0) * (p[b] - p[a])
    tied = (p[np.clip(lo, 0, len(q) - 1)] + p[np.clip(hi - 1, 0, len(q) - 1)]) / 2
    return np.where(hi > lo, tied,
                    np.where(v < q[0], (v - q[0]) / span, np.where(v > q[-1], 1.0 + (v - q[-1]) / span, inside)))


def member_specs(members: Sequence[dict], weights: Sequence[float] | None) -> list[tuple[str, dict, float]]:
    """``members`` (``{"detector": name, "params": {...}}``, optionally ``"seeds": [..]``: one
    member per seed, sharing that entry's weight) and ``weights`` (one per entry; default equal)
    -> ``(registry name, params, weight)`` per member, weights summing to 1."""
    if not members:
        raise ConfigError("map fusion needs at least one member")
    w = [1.0] * len(members) if weights is None else [float(v) for v in weights]
    if len(w) != len(members) or any(not v >= 0 for v in w) or not sum(w) > 0:
        raise ConfigError(f"map fusion: {len(members)} members need as many non-negative weights "
                          f"(not all 0), got {list(weights or [])}")
    out = []
    for spec, wi in zip(members, w):
        if not isinstance(spec, dict) or "detector" not in spec or set(spec) - {"detector", "params", "seeds"}:
            raise ConfigError(f"a map-fusion member is {{detector: NAME, params: {{...}}, seeds: [...]}} "
                              f"(params and seeds optional), got {spec!r}")
        params = dict(spec.get("params") or {})
        seeds = spec.get("seeds")
        for s in (seeds or [None]):
            out.append((str(spec["detector"]), params if s is None else {**params, "seed": int(s)},
                        wi / (len(seeds) if seeds else 1)))
    total = sum(v for _, _, v in out)
    return [(n, p, v / total) for n, p, v in out]


def with_epochs(detector: str, params: dict, epochs: int) -> dict:
    """``params`` of the registry detector ``detector`` with its training epochs set to
    ``epochs`` (e.g. a command line's ``--epochs``); for ``map_fusion``, on every member whose
    detector trains in epochs (a memory bank or a statistics model has none)."""
    import inspect

    from medad import registry

    if detector != "map_fusion":
        return {**params, "epochs": int(epochs)}
    members, changed = [], 0
    for m in params.get("members") or []:
        takes = isinstance(m, dict) and "epochs" in inspect.signature(registry.get(str(m.get("detector"))).__init__).parameters
        members.append({**m, "params": {**(m.get("params") or {}), "epochs": int(epochs)}} if takes else m)
        changed += bool(takes)
    if not changed:
        raise ConfigError("epochs: no member of this map fusion trains in epochs")
    return {**params, "members": members}


@register("map_fusion")
class MapFusion(Detector):
    """Weighted mean of several image detectors' pixel maps, each standardised on healthy pixels.

    Every member fits on the same healthy images and makes a map ``(N, H, W)`` (resized to the
    input's size if it makes another). Each member's map values on **healthy** pixels set its
    standardisation (``standardise``: ``"rank"`` -- the healthy pixels' empirical CDF, robust to
    the very different value distributions of e.g. a sigmoid output and a distance; ``"robust"``
    -- median / IQR z-score); the fused map is the ``weights``-weighted mean of the standardised
    maps, the image score the mean of its top ``topk`` share (so a flagged frame has a flagged
    region).

    The healthy reference comes from :meth:`fit`: its ``val`` images when given, else a held-out
    share ``reference_fraction`` of the training images (members fit on the rest: members that
    memorise their training data, like a memory bank, score their own training pixels too low to
    be a reference). With ``reference_fraction=0`` and no ``val`` the members fit on every image
    and :meth:`set_reference` must be called before scoring, e.g. with the polyp-free pixels of
    frames that hold a polyp. :meth:`calibrate` then sets thresholds on the fused maps as for
    any detector (it does not change the reference, so scores stay as they were).

    Args:
        members: ``[{"detector": NAME, "params": {...}, "seeds": [0, 1, 2]}, ...]`` (registry
            names; ``seeds`` optional: one member per seed, a seed ensemble sharing the weight).
        weights: one per ``members`` entry (normalised to sum 1; default equal). With ``"robust"``
            they also trade the members' tails: a sharp map (e.g. a segmenter's sigmoid, healthy
            IQR near 0) reaches z-scores far above a smooth one's, so equal weights let it decide.
        standardise: ``"rank"`` or ``"robust"``.
        topk: image score = mean of the top ``topk`` share of the fused map.
        n_quantiles: quantiles of the healthy pixels kept per member for ``"rank"``.
        reference_fraction: share of the training images held out for the reference when
            :meth:`fit` gets no ``val`` (0: none; call :meth:`set_reference`).
    """

    input_kind = "image"
    conformance_params = {"members": [{"detector": "intensity"},
                                      {"detector": "pca", "params": {"n_components": 4}}],
                          "weights": [0.5, 0.5]}
    #: training options passed to members that take them (e.g. ``{"progress": False}``)
    train_options: dict | None = None

    def __init__(self, members: Sequence[dict] = (), weights: Sequence[float] | None = None,
                 standardise: str = "rank", topk: float = 0.01, n_quantiles: int = 2049,
                 reference_fraction: float = 0.2):
        self._set_params(locals())

    # ------------------------------------------------------------------ members
    def _create_members(self) -> None:
        from medad import registry

        if self.standardise not in STANDARDISE:
            raise ConfigError(f"map fusion: standardise must be one of {STANDARDISE}, not {self.standardise!r}")
        specs = member_specs(self.members, self.weights)
        self.members_ = []
        for name, params, _ in specs:
            det = registry.create(name, **params)
            if det.input_kind != "image" or det.supervised:
                raise ConfigError(f"map fusion members are one-class image detectors; {name!r} is not")
            self.members_.append(det)
        self.weights_ = np.array([w for _, _, w in specs])
        self.stats_: list[np.ndarray] | None = None

    def member_maps(self, x: np.ndarray) -> list[np.ndarray]:
        """Every member's raw map of ``x`` ``(N, H, W)``, at the input's size."""
        out = []
        for det in self.members_:
            m = det.score(x).map
            if m is None:
                raise ConfigError(f"map fusion member {det.name!r} makes no pixel map")
            if m.shape[1:] != x.shape[2:]:
                import torch

                from medad.nets.image_encoders import upsample_map

                m = upsample_map(torch.as_tensor(m, dtype=torch.float32), x.shape[2:]).numpy()
            out.append(np.asarray(m, np.float32))
        return out

    def set_reference(self, healthy, foreground: np.ndarray | None = None) -> "MapFusion":
        """Standardisation statistics of every member from its maps of the healthy images
        ``healthy``, over the pixels inside ``foreground`` ``(N, H, W)`` when given (e.g. the
        polyp-free pixels of frames that hold a polyp). Scores change with it: calibrate again."""
        from medad.detectors.base import as_array

        if not hasattr(self, "members_"):
            raise NotFittedError("MapFusion is not fitted: call fit() before set_reference()")
        x = as_array(healthy, name="healthy reference images")
        self._check_input(x)
        fg = None if foreground is None else np.asarray(foreground, bool)
        maps = self.member_maps(x)
        if fg is not None and fg.shape != maps[0].shape:
            raise InputError(f"foreground {fg.shape} does not match the maps {maps[0].shape}")
        self.stats_ = [reference_stats(m if fg is None else m[fg], self.standardise, self.n_quantiles)
                       for m in maps]
        return self

    def fused_map(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        """Members' raw maps -> the weighted mean of their standardised maps ``(N, H, W)``."""
        if self.stats_ is None:
            raise NotFittedError("MapFusion has no healthy reference: call set_reference() or calibrate() first")
        out = np.zeros(maps[0].shape, np.float64)
        for m, st, w in zip(maps, self.stats_, self.weights_):
            out += w * standardise(m, st, self.standardise)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ contract
    def _fit(self, x: np.ndarray, val: np.ndarray | None, y: np.ndarray | None) -> None:
        self._create_members()
        frac = float(self.reference_fraction)
        if not 0 <= frac < 1:
            raise ConfigError(f"map fusion: reference_fraction must be in [0, 1), got {frac}")
        n_ref = 0 if val is not None or frac == 0 else max(1, int(round(frac * len(x))))
        if n_ref and len(x) - n_ref < 1:
            raise InputError(f"map fusion: {len(x)} training images leave none to fit on after holding out "
                             f"{n_ref} for the healthy reference")
        order = np.random.default_rng(0).permutation(len(x))
        ref, fit_x = (x[order[:n_ref]], x[order[n_ref:]]) if n_ref else (val, x)
        for det in self.members_:
            if self.train_options is not None and hasattr(det, "train_options"):
                det.train_options = dict(self.train_options)
            det.fit(fit_x)
        if ref is not None:
            self.set_reference(ref)

    def _score(self, x: np.ndarray) -> AnomalyResult:
        import torch

        from medad.nets.image_encoders import topk_mean

        fused = self.fused_map(self.member_maps(x))
        score = topk_mean(torch.from_numpy(fused), float(self.topk)).double().numpy()
        return AnomalyResult(score=score, map=fused)

    # ------------------------------------------------------------------ persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each member's arrays under ``member<i>/``, its own state, thresholds and the healthy
        statistics: one folder, written atomically by :meth:`Detector.save`."""
        if self.stats_ is None:
            raise NotFittedError("MapFusion has no healthy reference: call set_reference() before saving")
        arrays: dict[str, Any] = {}
        extra: dict[str, Any] = {"members": []}
        for i, (det, st) in enumerate(zip(self.members_, self.stats_)):
            a, e = det._get_state()
            arrays.update({f"member{i}/{k}": v for k, v in a.items()})
            arrays[f"reference{i}"] = np.asarray(st, np.float64)
            extra["members"].append({"name": det.name, "state": e,
                                     "threshold": getattr(det, "threshold_", None),
                                     "pixel_threshold": getattr(det, "pixel_threshold_", None)})
        return arrays, extra

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        self._create_members()
        saved = extra.get("members") or []
        if len(saved) != len(self.members_) or any(s.get("name") != d.name for s, d in zip(saved, self.members_)):
            raise ReadError(f"saved map fusion holds members {[s.get('name') for s in saved]}, its parameters "
                            f"describe {[d.name for d in self.members_]}", "config.json")
        self.stats_ = []
        for i, (det, info) in enumerate(zip(self.members_, saved)):
            pre = f"member{i}/"
            det._set_state({k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}, info.get("state") or {})
            det.threshold_, det.pixel_threshold_ = info.get("threshold"), info.get("pixel_threshold")
            det.fitted_ = True
            if f"reference{i}" not in arrays:
                raise ReadError(f"saved map fusion lacks member {i}'s healthy reference", "weights.safetensors")
            self.stats_.append(np.asarray(arrays[f"reference{i}"], np.float64))
