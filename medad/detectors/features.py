"""The classical signal baseline: hand-made window features + a one-class model.

Features per channel of each ``(C, T)`` window (:func:`signal_features`):

* relative band powers (log share of the total power in each band -- amplitude-invariant),
* spectral entropy, spectral edge frequency (95 %) and peak frequency (relative to Nyquist),
* Hjorth mobility and complexity, line length / std, zero-crossing rate (amplitude-invariant),
* skewness and kurtosis,
* optional amplitude-invariant groups for seizure-like regularity (off by default: they cost
  more): permutation entropy (``entropy``), autocorrelation rhythmicity (``autocorr``) and the
  normalised Teager-Kaiser energy (``teager``),
* optionally log variance (``amplitude=True``; meaningful only when the input was normalised per
  recording, as the screening pipeline does, so it says "louder than this recording usually is"),
* optionally MFCC means (``n_mfcc > 0``; heart sounds).

A one-class model learns healthy features: ``"mahalanobis"`` (robustly standardised features,
Ledoit-Wolf shrunk covariance) or ``"knn"`` (mean distance to the ``k`` nearest healthy feature
vectors). Both save as plain arrays -- no pickle. With ``blocks`` the feature vector is split
into blocks (e.g. beat shape | RR intervals) scored separately, each standardised on its training
scores, and averaged. With ``feature_fn="precomputed"`` the detector
takes ``(N, F)`` feature arrays instead of windows (e.g. beat shape + RR intervals).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError
from medad.registry import register

EEG_BANDS = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 70.0))


def default_bands(sfreq: float, n_bands: int = 6, fmin: float = 0.5) -> list[tuple[float, float]]:
    """Bands for a sampling rate: the classic EEG bands where they fit (``sfreq <= 512``), else
    ``n_bands`` log-spaced bands from ``fmin`` to 0.9 x Nyquist (heart sounds, audio)."""
    nyq = sfreq / 2.0
    if sfreq <= 512:
        # bands above Nyquist dropped; the top one clipped to include the Nyquist bin
        return [(lo, min(hi, nyq * 1.001)) for lo, hi in EEG_BANDS if lo < 0.8 * nyq]
    edges = np.geomspace(max(fmin, 1.0), 0.9 * nyq, n_bands + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


# feature groups in output order; amplitude-dependent ones are dropped by amplitude=False
FEATURE_GROUPS = ("hjorth", "line_length", "zcr", "moments", "spectral", "rel_bands", "entropy", "autocorr",
                  "teager", "abs_bands", "log_var")
DEFAULT_GROUPS = ("hjorth", "line_length", "zcr", "moments", "spectral", "rel_bands", "log_var")
AMPLITUDE_GROUPS = ("abs_bands", "log_var")


def signal_features(x: np.ndarray, sfreq: float, *, bands=None, amplitude: bool = True,
                    n_mfcc: int = 0, groups: Sequence[str] | None = None) -> np.ndarray:
    """Feature vector of every window.

    Args:
        x: ``(N, C, T)`` windows.
        sfreq: sampling rate.
        bands: ``[(low, high), ...]`` Hz; default :func:`default_bands`.
        amplitude: keep the amplitude-dependent groups (``log_var``, ``abs_bands``).
        n_mfcc: also the mean of this many MFCCs per channel (0 = none).
        groups: feature groups to compute, from :data:`FEATURE_GROUPS` (default
            :data:`DEFAULT_GROUPS`): ``hjorth`` (mobility, complexity), ``line_length``
            (/ std), ``zcr``, ``moments`` (skewness, log kurtosis), ``spectral`` (entropy, 95 %
            edge, peak frequency), ``rel_bands`` (log share of power per band), ``abs_bands``
            (log power per band), ``log_var``; opt-in, amplitude-invariant: ``entropy``
            (permutation entropy, order 4, delays of 1, 2 and 4 samples), ``autocorr``
            (height and lag in s of the highest autocorrelation peak at lags of 0.05-1 s, and the
            decorrelation time in s), ``teager`` (log mean Teager-Kaiser energy / variance).

    Returns:
        ``(N, C * F)`` float32, channel-major (all features of channel 0, then channel 1, ...).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"signal features need (N, C, T) windows, got shape {x.shape}")
    n, c, t = x.shape
    if t < 8:
        raise InputError(f"windows of {t} samples are too short for features")
    bands = list(bands) if bands is not None else default_bands(sfreq)
    eps = 1e-12

    def msq(a, b=None):  # mean of a*b over time without a temporary (einsum)
        return np.einsum("nct,nct->nc", a, a if b is None else b) / a.shape[-1]

    xc = x - x.mean(axis=-1, keepdims=True)
    var = msq(xc)
    d1 = np.diff(xc, axis=-1)
    d2 = np.diff(d1, axis=-1)
    v1, v2 = msq(d1), msq(d2)
    mobility = np.sqrt(v1 / (var + eps))
    complexity = np.sqrt(v2 / (v1 + eps)) / (mobility + eps)
    std = np.sqrt(var)
    line_length = np.abs(d1).mean(-1) / (std + eps)
    zcr = np.count_nonzero(np.signbit(xc[..., 1:]) != np.signbit(xc[..., :-1]), axis=-1) / (t - 1)
    xc2 = xc * xc
    skew = msq(xc2, xc) / (std ** 3 + eps)
    kurt = msq(xc2) / (var ** 2 + eps)
    del d1, d2, xc2

    # one Hann-windowed periodogram per window, kept up to the top band edge (cheap enough for
    # 24 h of 23-channel EEG); band powers come from its cumulative sum
    from scipy.fft import rfft

    freqs = np.fft.rfftfreq(t, 1.0 / sfreq)
    top = max(hi for _, hi in bands)
    kmax = int(min(len(freqs), np.searchsorted(freqs, top, side="right") + 1))
    z = rfft(xc * np.hanning(t).astype(np.float32), axis=-1, workers=1)[..., :kmax]
    psd = z.real ** 2 + z.imag ** 2
    del z
    psd[..., 0] = 0.0
    freqs = freqs[:kmax]
    total = psd.sum(-1) + eps
    p = psd / total[..., None]
    spec_entropy = -np.einsum("nck,nck->nc", p, np.log(p + eps)) / np.log(kmax)
    cum = np.cumsum(p, axis=-1)
    nyq = sfreq / 2.0
    edge95 = freqs[np.minimum((cum < 0.95).sum(-1), kmax - 1)] / nyq
    peak = freqs[psd.argmax(-1)] / nyq
    cum0 = np.concatenate([np.zeros_like(cum[..., :1]), cum], axis=-1)
    rel = []
    for lo, hi in bands:
        i0, i1 = np.searchsorted(freqs, lo, side="left"), np.searchsorted(freqs, hi, side="left")
        if i1 <= i0:
            raise InputError(f"band {lo}-{hi} Hz holds no frequency bin for {t}-sample windows at {sfreq} Hz")
        rel.append(np.maximum(cum0[..., i1] - cum0[..., i0], 0.0))
    # psd excludes DC, so total ~ T * var * mean(window^2): absolute band power = share x variance
    by_group = {
        "hjorth": [mobility, complexity], "line_length": [line_length], "zcr": [zcr],
        "moments": [skew, np.log(kurt + eps)], "spectral": [spec_entropy, edge95, peak],
        "rel_bands": [np.log(r + 1e-6) for r in rel],
        "abs_bands": [np.log(r * var + eps) for r in rel], "log_var": [np.log(var + eps)],
    }
    chosen = _groups(groups, amplitude)
    if "entropy" in chosen:
        by_group["entropy"] = [permutation_entropy(xc, order=4, delay=d) for d in (1, 2, 4)]
    if "autocorr" in chosen:
        by_group["autocorr"] = list(_autocorr_features(xc, sfreq))
    if "teager" in chosen:
        te = (xc[..., 1:-1] ** 2 - xc[..., :-2] * xc[..., 2:]).mean(-1)
        by_group["teager"] = [np.log(np.abs(te) / (var + eps) + 1e-9)]
    feats = [f for g in chosen for f in by_group[g]]
    out = np.stack(feats, axis=-1)  # (N, C, F)
    if n_mfcc:
        from medad.transforms.signal import mfcc

        n_fft = int(2 ** np.floor(np.log2(min(t, max(64, sfreq * 0.025 * 4)))))
        m = mfcc(x, sfreq, n_mfcc=n_mfcc, n_fft=n_fft).mean(-1)  # (N, C, n_mfcc)
        out = np.concatenate([out, m], axis=-1)
    return out.reshape(n, -1).astype(np.float32)


def permutation_entropy(x: np.ndarray, order: int = 4, delay: int = 1) -> np.ndarray:
    """Normalised permutation entropy (Bandt & Pompe) of every series along the last axis: the
    Shannon entropy of the ordinal patterns of ``order`` samples ``delay`` apart, divided by
    ``log(order!)`` (1 = every pattern equally likely, e.g. white noise; low = regular, e.g. a
    rhythmic seizure discharge). Scale-free by construction."""
    from math import factorial

    x = np.asarray(x)
    lead, t = x.shape[:-1], x.shape[-1]
    n = t - (order - 1) * delay
    if n < 1:
        raise InputError(f"{t} samples are too short for permutation entropy (order {order}, delay {delay})")
    flat = x.reshape(-1, t)
    emb = np.stack([flat[:, i * delay: i * delay + n] for i in range(order)], axis=-1)
    # a pattern's code: its rank vector read as a base-`order` number (unique per permutation)
    code = (np.argsort(emb, axis=-1, kind="stable") * order ** np.arange(order)).sum(-1)
    k = order ** order
    counts = np.bincount((code + k * np.arange(len(flat))[:, None]).ravel(), minlength=k * len(flat))
    p = counts.reshape(len(flat), k) / n
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1) / np.log(factorial(order))
    return h.reshape(lead).astype(np.float32)


def autocorrelation(xc: np.ndarray) -> np.ndarray:
    """Normalised (biased) autocorrelation of centred series along the last axis, lags 0..T-1
    (1 at lag 0; via a zero-padded FFT, so no circular wrap-around)."""
    from scipy.fft import irfft, rfft

    t = xc.shape[-1]
    spec = rfft(xc, 2 * t, axis=-1, workers=1)
    ac = irfft(spec.real ** 2 + spec.imag ** 2, axis=-1, workers=1)[..., :t]
    return ac / np.maximum(ac[..., :1], 1e-20)


def _autocorr_features(xc: np.ndarray, sfreq: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rhythmicity of centred windows ``(N, C, T)``: height and lag (s) of the highest
    autocorrelation peak at lags of 0.05-1 s (20-1 Hz rhythms), and the decorrelation time (s,
    first lag where the autocorrelation turns negative)."""
    t = xc.shape[-1]
    ac = autocorrelation(xc)
    lo = max(1, int(round(0.05 * sfreq)))
    hi = max(lo + 1, min(t - 1, int(round(1.0 * sfreq)) + 1))
    seg = ac[..., lo:hi]
    height = seg.max(-1)
    lag = (seg.argmax(-1) + lo) / sfreq
    neg = ac < 0
    zero = np.where(neg.any(-1), neg.argmax(-1), t) / sfreq
    return height.astype(np.float32), lag.astype(np.float32), zero.astype(np.float32)


def _groups(groups: Sequence[str] | None, amplitude: bool) -> list[str]:
    chosen = list(DEFAULT_GROUPS if groups is None else groups)
    bad = set(chosen) - set(FEATURE_GROUPS)
    if bad:
        raise ConfigError(f"unknown feature groups {sorted(bad)}; known: {', '.join(FEATURE_GROUPS)}")
    chosen = [g for g in FEATURE_GROUPS if g in chosen and (amplitude or g not in AMPLITUDE_GROUPS)]
    if not chosen:
        raise ConfigError("no feature group left (amplitude=False removes abs_bands and log_var)")
    return chosen


def _precomputed(x: np.ndarray, sfreq: float, **_) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


# name -> f(x, sfreq, bands=, amplitude=, n_mfcc=, groups=) -> (N, F); functions added with
# register_feature_fn should accept **kwargs. Saved models store the name only.
FEATURE_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {"signal": signal_features, "precomputed": _precomputed}


def register_feature_fn(name: str, fn: Callable[..., np.ndarray]) -> None:
    """Make ``fn(x, sfreq, **kw) -> (N, F)`` usable as ``FeatureDetector(feature_fn=name)``."""
    FEATURE_FUNCTIONS[name] = fn


@register("features")
class FeatureDetector(Detector):
    """Hand-made signal features + a one-class model (the classical baseline of every signal task).

    Args:
        sfreq: sampling rate of the windows it will see.
        bands: frequency bands ``[[low, high], ...]`` in Hz (default :func:`default_bands`).
        amplitude: keep the amplitude-dependent feature groups (log variance, absolute band powers).
        n_mfcc: add the mean of this many MFCCs per channel (0 = none).
        model: ``"mahalanobis"`` (Ledoit-Wolf covariance) or ``"knn"`` (mean distance to the
            ``k`` nearest healthy feature vectors).
        k: neighbours for ``"knn"``.
        feature_fn: ``"signal"`` (windows ``(N, C, T)`` in) or ``"precomputed"`` (``(N, F)``
            features in), or a name added with :func:`register_feature_fn`.
        max_train: at most this many healthy vectors are kept for ``"knn"`` (random, seeded).
        seed: for that subsample.
        groups: feature groups (see :func:`signal_features`); default all but ``abs_bands``.
        blocks: score blocks of features separately and fuse them (``None``: one model on all
            features). Either column counts ``[n1, n2, ...]`` of consecutive feature columns
            (summing to the feature count, e.g. a beat-shape block and an RR block of
            precomputed features) or, for ``feature_fn="signal"``, lists of feature groups
            ``[["log_var"], ["entropy", "autocorr"]]`` (each block computes its own groups;
            ``groups`` is then ignored). Each block's score is standardised by the median and
            IQR of its scores on the training items (leave-one-out for ``"knn"``) and the fused
            score is their mean: a block of 60 shape columns no longer drowns a block of 4 RR
            columns in one distance, and no test or abnormal item is needed to weigh them.
    """

    input_kind = "signal"
    check_layout = False  # scores signal windows and, as well, feature rows computed beforehand (site normalisation)
    conformance_params = {"sfreq": 128.0, "model": "mahalanobis"}

    def __init__(self, sfreq: float = 256.0, bands: list | None = None, amplitude: bool = True, n_mfcc: int = 0,
                 model: str = "mahalanobis", k: int = 5, feature_fn: str = "signal", max_train: int = 20000,
                 seed: int = 0, groups: list[str] | None = None, blocks: list | None = None):
        self._set_params(locals())

    # ------------------------------------------------------------------ features
    def _group_blocks(self) -> list[list[str]] | None:
        """The blocks as lists of feature groups, or None when they are column counts / absent."""
        if not self.blocks:
            return None
        kinds = {isinstance(b, (list, tuple)) for b in self.blocks}
        if kinds == {True}:
            if self.feature_fn == "precomputed":
                raise ConfigError("blocks of feature groups need computed features; with feature_fn='precomputed' "
                                  "give column counts")
            return [list(b) for b in self.blocks]
        if kinds == {False} and all(int(b) > 0 for b in self.blocks):
            return None
        raise ConfigError(f"blocks must be all positive column counts or all lists of feature groups, "
                          f"got {self.blocks!r}")

    def features(self, x: np.ndarray) -> np.ndarray:
        """The raw (unstandardised) feature vectors of ``x`` (blocks side by side)."""
        if self.feature_fn not in FEATURE_FUNCTIONS:
            raise ConfigError(f"unknown feature function {self.feature_fn!r}; known: {', '.join(FEATURE_FUNCTIONS)}")
        bands = [tuple(b) for b in self.bands] if self.bands is not None else None
        fn = FEATURE_FUNCTIONS[self.feature_fn]
        kw = dict(bands=bands, amplitude=self.amplitude, n_mfcc=self.n_mfcc)
        gb = self._group_blocks()
        if gb is None:
            f = fn(x, float(self.sfreq), groups=self.groups, **kw)
        else:
            # MFCCs (if any) go with the first block only
            f = np.concatenate([fn(x, float(self.sfreq), groups=g, **{**kw, "n_mfcc": self.n_mfcc if i == 0 else 0})
                                for i, g in enumerate(gb)], axis=1)
        if not np.isfinite(f).all():
            raise InputError("features contain NaN/inf (flat or constant windows?)")
        return f

    def _block_slices(self, n_features: int, x: np.ndarray | None = None) -> list[slice]:
        """Column slices of the blocks (one slice of everything without blocks)."""
        if not self.blocks:
            return [slice(0, n_features)]
        gb = self._group_blocks()
        if gb is None:
            sizes = [int(b) for b in self.blocks]
        else:  # widths of each block's groups: measured on one item (cheap, always consistent)
            sizes = [FEATURE_FUNCTIONS[self.feature_fn](
                x[:1], float(self.sfreq), groups=g, amplitude=self.amplitude,
                bands=[tuple(b) for b in self.bands] if self.bands is not None else None,
                n_mfcc=self.n_mfcc if i == 0 else 0).shape[1] for i, g in enumerate(gb)]
        if sum(sizes) != n_features:
            raise InputError(f"blocks {sizes} cover {sum(sizes)} feature columns, the features have {n_features}")
        edges = np.cumsum([0] + sizes)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _check_input(self, x: np.ndarray) -> None:
        if self.feature_fn == "precomputed":
            if x.ndim != 2:
                raise InputError(f"feature_fn='precomputed' expects (N, F) features, got shape {x.shape}")
            return
        super()._check_input(x)

    def _standardise(self, f: np.ndarray) -> np.ndarray:
        return (f - self.center_) / self.scale_

    # ------------------------------------------------------------------ contract
    def _fit(self, x, val, y) -> None:
        if self.model not in ("mahalanobis", "knn"):
            raise ConfigError(f"unknown model {self.model!r}; use 'mahalanobis' or 'knn'")
        f = self.features(x).astype(np.float64)
        if len(f) < 2:
            raise InputError("need at least 2 healthy items to fit the feature model")
        self.n_features_ = int(f.shape[1])
        self.in_shape_ = list(x.shape[1:])
        self.slices_ = self._block_slices(self.n_features_, x)
        # robust standardisation: median / IQR, so a few odd training windows do not set the scale
        from medad.transforms.signal import robust_scale

        center, scale = robust_scale(f, axis=0, eps=1e-9)
        self.center_, self.scale_ = center[0], scale[0]
        z = self._standardise(f)
        if self.model == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            self.means_, self.precisions_ = [], []
            for sl in self.slices_:
                lw = LedoitWolf().fit(z[:, sl])
                self.means_.append(lw.location_)
                self.precisions_.append(lw.precision_)
        else:
            if len(z) > self.max_train:
                idx = np.random.default_rng(self.seed).choice(len(z), self.max_train, replace=False)
                z = z[np.sort(idx)]
            self.bank_ = z
        self.block_stats_ = None
        if self.blocks:
            # each block's score on the training items (kNN: leave-one-out) -> median, IQR scale
            train = [self._block_score(z, b, exclude_self=self.model == "knn") for b in range(len(self.slices_))]
            self.block_stats_ = np.stack([np.concatenate(robust_scale(t, axis=0, eps=1e-9)) for t in train])

    def _block_score(self, z: np.ndarray, b: int, exclude_self: bool = False) -> np.ndarray:
        sl = self.slices_[b]
        if self.model == "mahalanobis":
            d = z[:, sl] - self.means_[b]
            return np.sqrt(np.maximum(((d @ self.precisions_[b]) * d).sum(1), 0.0))
        return self._knn(z[:, sl], self.bank_[:, sl], exclude_self)

    def _score(self, x) -> AnomalyResult:
        f = self.features(x).astype(np.float64)
        if f.shape[1] != self.n_features_:
            raise InputError(f"{f.shape[1]} features but the detector was fitted on {self.n_features_} "
                             f"(input shape {list(x.shape[1:])}, fitted on {self.in_shape_})")
        z = self._standardise(f)
        if self.block_stats_ is None:
            s = self._block_score(z, 0)
        else:
            st = self.block_stats_
            s = np.mean([(self._block_score(z, b) - st[b, 0]) / st[b, 1] for b in range(len(self.slices_))], axis=0)
        return AnomalyResult(score=s.astype(np.float32))

    def _knn(self, z: np.ndarray, bank: np.ndarray, exclude_self: bool = False, batch: int = 2048) -> np.ndarray:
        """Mean distance to the ``k`` nearest bank rows (``exclude_self``: ``z`` is the bank, each
        row's own zero distance is skipped)."""
        k = max(1, min(int(self.k), len(bank) - int(exclude_self)))
        kk = k + int(exclude_self)
        bn = (bank ** 2).sum(1)
        out = np.empty(len(z))
        for i in range(0, len(z), batch):
            q = z[i:i + batch]
            d2 = (q ** 2).sum(1)[:, None] + bn[None, :] - 2.0 * q @ bank.T
            part = np.sort(np.partition(np.maximum(d2, 0.0), kk - 1, axis=1)[:, :kk], axis=1)
            out[i:i + batch] = np.sqrt(part[:, int(exclude_self):]).mean(1)
        return out

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {"center": self.center_, "scale": self.scale_}
        if self.model == "mahalanobis":
            for b, (m, p) in enumerate(zip(self.means_, self.precisions_)):
                sfx = "" if b == 0 else f"_{b}"  # block 0 keeps the names of models saved before blocks
                arrays.update({f"mean{sfx}": m, f"precision{sfx}": p})
        else:
            arrays["bank"] = self.bank_
        if self.block_stats_ is not None:
            arrays["block_stats"] = self.block_stats_
        return arrays, {"n_features": self.n_features_, "in_shape": self.in_shape_,
                        "slices": [[s.start, s.stop] for s in self.slices_]}

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        a = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        self.center_, self.scale_ = a["center"], a["scale"]
        self.n_features_ = int(extra["n_features"])
        self.in_shape_ = list(extra["in_shape"])
        self.slices_ = [slice(int(s0), int(s1)) for s0, s1 in extra.get("slices", [[0, self.n_features_]])]
        if self.model == "mahalanobis":
            sfx = ["" if b == 0 else f"_{b}" for b in range(len(self.slices_))]
            self.means_ = [a[f"mean{s}"] for s in sfx]
            self.precisions_ = [a[f"precision{s}"] for s in sfx]
        else:
            self.bank_ = a["bank"]
        self.block_stats_ = a.get("block_stats")
