"""The classical signal baseline: hand-made window features + a one-class model.

Features per channel of each ``(C, T)`` window (:func:`signal_features`):

* relative band powers (log share of the total power in each band -- amplitude-invariant),
* spectral entropy, spectral edge frequency (95 %) and peak frequency (relative to Nyquist),
* Hjorth mobility and complexity, line length / std, zero-crossing rate (amplitude-invariant),
* skewness and kurtosis,
* optionally log variance (``amplitude=True``; meaningful only when the input was normalised per
  recording, as the screening pipeline does, so it says "louder than this recording usually is"),
* optionally MFCC means (``n_mfcc > 0``; heart sounds).

A one-class model learns healthy features: ``"mahalanobis"`` (robustly standardised features,
Ledoit-Wolf shrunk covariance) or ``"knn"`` (mean distance to the ``k`` nearest healthy feature
vectors). Both save as plain arrays -- no pickle. With ``feature_fn="precomputed"`` the detector
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
FEATURE_GROUPS = ("hjorth", "line_length", "zcr", "moments", "spectral", "rel_bands", "abs_bands", "log_var")
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
            (log power per band), ``log_var``.

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
    feats = [f for g in _groups(groups, amplitude) for f in by_group[g]]
    out = np.stack(feats, axis=-1)  # (N, C, F)
    if n_mfcc:
        from medad.transforms.signal import mfcc

        n_fft = int(2 ** np.floor(np.log2(min(t, max(64, sfreq * 0.025 * 4)))))
        m = mfcc(x, sfreq, n_mfcc=n_mfcc, n_fft=n_fft).mean(-1)  # (N, C, n_mfcc)
        out = np.concatenate([out, m], axis=-1)
    return out.reshape(n, -1).astype(np.float32)


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
    """

    input_kind = "signal"
    conformance_params = {"sfreq": 128.0, "model": "mahalanobis"}

    def __init__(self, sfreq: float = 256.0, bands: list | None = None, amplitude: bool = True, n_mfcc: int = 0,
                 model: str = "mahalanobis", k: int = 5, feature_fn: str = "signal", max_train: int = 20000,
                 seed: int = 0, groups: list[str] | None = None):
        self._set_params(locals())

    # ------------------------------------------------------------------ features
    def features(self, x: np.ndarray) -> np.ndarray:
        """The raw (unstandardised) feature vectors of ``x``."""
        if self.feature_fn not in FEATURE_FUNCTIONS:
            raise ConfigError(f"unknown feature function {self.feature_fn!r}; known: {', '.join(FEATURE_FUNCTIONS)}")
        bands = [tuple(b) for b in self.bands] if self.bands is not None else None
        f = FEATURE_FUNCTIONS[self.feature_fn](x, float(self.sfreq), bands=bands, amplitude=self.amplitude,
                                               n_mfcc=self.n_mfcc, groups=self.groups)
        if not np.isfinite(f).all():
            raise InputError("features contain NaN/inf (flat or constant windows?)")
        return f

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
        # robust standardisation: median / IQR, so a few odd training windows do not set the scale
        from medad.transforms.signal import robust_scale

        center, scale = robust_scale(f, axis=0, eps=1e-9)
        self.center_, self.scale_ = center[0], scale[0]
        z = self._standardise(f)
        if self.model == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            lw = LedoitWolf().fit(z)
            self.mean_ = lw.location_
            self.precision_ = lw.precision_
        else:
            if len(z) > self.max_train:
                idx = np.random.default_rng(self.seed).choice(len(z), self.max_train, replace=False)
                z = z[np.sort(idx)]
            self.bank_ = z

    def _score(self, x) -> AnomalyResult:
        f = self.features(x).astype(np.float64)
        if f.shape[1] != self.n_features_:
            raise InputError(f"{f.shape[1]} features but the detector was fitted on {self.n_features_} "
                             f"(input shape {list(x.shape[1:])}, fitted on {self.in_shape_})")
        z = self._standardise(f)
        if self.model == "mahalanobis":
            d = z - self.mean_
            s = np.sqrt(np.maximum(((d @ self.precision_) * d).sum(1), 0.0))
        else:
            s = self._knn(z)
        return AnomalyResult(score=s.astype(np.float32))

    def _knn(self, z: np.ndarray, batch: int = 2048) -> np.ndarray:
        k = min(int(self.k), len(self.bank_))
        bank = self.bank_
        bn = (bank ** 2).sum(1)
        out = np.empty(len(z))
        for i in range(0, len(z), batch):
            q = z[i:i + batch]
            d2 = (q ** 2).sum(1)[:, None] + bn[None, :] - 2.0 * q @ bank.T
            part = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
            out[i:i + batch] = np.sqrt(part).mean(1)
        return out

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {"center": self.center_, "scale": self.scale_}
        if self.model == "mahalanobis":
            arrays.update(mean=self.mean_, precision=self.precision_)
        else:
            arrays["bank"] = self.bank_
        return arrays, {"n_features": self.n_features_, "in_shape": self.in_shape_}

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        a = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        self.center_, self.scale_ = a["center"], a["scale"]
        if self.model == "mahalanobis":
            self.mean_, self.precision_ = a["mean"], a["precision"]
        else:
            self.bank_ = a["bank"]
        self.n_features_ = int(extra["n_features"])
        self.in_shape_ = list(extra["in_shape"])
