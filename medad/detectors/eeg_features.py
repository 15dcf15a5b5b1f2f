"""Amplitude-free rhythmicity features of EEG windows (seizure discharges are sustained, regular
rhythms; background and interictal EEG are broadband and irregular).

Every window is z-scored first, so no feature carries the window's absolute amplitude or gain.
Groups (:data:`RHYTHM_GROUPS`), per channel of ``(N, C, T)`` windows:

* ``rhythm``: from a Welch spectrum of the whole window (2 s Hann segments, half overlap),
  restricted to ``band`` (default 1-30 Hz, where ictal rhythms live): log peak prominence
  (peak power / median power in the band), spectral entropy in the band (normalised to [0, 1]),
  and the share of the band's power within +-1 Hz of the peak.
* ``sub_max``: the most regular 2 s sub-window (sub-windows at half overlap): the highest
  autocorrelation peak at lags of 0.1-1 s (10-1 Hz rhythms), the lowest permutation entropy
  (order 4, delay 2) and the highest log peak prominence of its periodogram in ``band``. A
  seizure is regular throughout, so its best sub-window is regular too; the max picks a rhythmic
  run inside a window that is partly something else.
* ``sub_stability``: how much the window changes between its sub-windows: coefficient of
  variation of the zero-crossing rate and the std of the log sub-window std (scale-free:
  a gain cancels in differences of logs).

:func:`regularity_features` gathers the measures whose seizure direction is known beforehand
(more regular = more seizure-like; :data:`REGULARITY_SIGNS`), for a one-sided score
(:func:`one_sided`) that ignores deviations the other way (e.g. interictal spikes, noisier or
quieter background than the training site).

Functions take ``sfreq`` so every time constant is in seconds, not samples (the features follow
a resampled recording).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from medad.errors import ConfigError, InputError

RHYTHM_GROUPS = ("rhythm", "sub_max", "sub_stability")
RHYTHM_BAND = (1.0, 30.0)
SUB_SECONDS = 2.0


def _zscore_windows(x: np.ndarray) -> np.ndarray:
    """Each series along the last axis to zero mean and unit std (flat series stay 0)."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(-1, keepdims=True)
    sd = xc.std(-1, keepdims=True)
    return xc / np.where(sd > 1e-12, sd, 1.0)


def sub_windows(x: np.ndarray, size: int) -> np.ndarray:
    """``(..., T)`` -> ``(..., S, size)`` sub-windows at half overlap (at least one: a series
    shorter than ``size`` is one sub-window of its own length)."""
    t = x.shape[-1]
    size = min(int(size), t)
    step = max(1, size // 2)
    starts = np.arange(0, t - size + 1, step)
    return np.stack([x[..., s:s + size] for s in starts], axis=-2)


def band_spectrum(x: np.ndarray, sfreq: float, band: tuple[float, float] = RHYTHM_BAND,
                  seg_seconds: float | None = SUB_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs, psd)`` of every series in ``band``: Welch (``seg_seconds`` Hann segments, half
    overlap) or, with ``seg_seconds=None``, one Hann periodogram of the whole series."""
    from scipy.signal import welch

    t = x.shape[-1]
    nper = t if seg_seconds is None else min(t, int(round(seg_seconds * sfreq)))
    f, p = welch(x, fs=sfreq, window="hann", nperseg=nper, noverlap=nper // 2, axis=-1, detrend="constant")
    keep = (f >= band[0]) & (f <= band[1])
    if keep.sum() < 3:
        raise InputError(f"{t}-sample windows at {sfreq:g} Hz give fewer than 3 frequency bins in "
                         f"{band[0]:g}-{band[1]:g} Hz")
    return f[keep], p[..., keep]


def peak_prominence(psd: np.ndarray) -> np.ndarray:
    """log(peak power / median power) of spectra along the last axis: high for one dominant rhythm."""
    return np.log((psd.max(-1) + 1e-20) / (np.median(psd, axis=-1) + 1e-20))


def band_entropy(psd: np.ndarray) -> np.ndarray:
    """Normalised Shannon entropy of spectra along the last axis (1 = flat, 0 = one line)."""
    p = psd / np.maximum(psd.sum(-1, keepdims=True), 1e-20)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1) / np.log(psd.shape[-1])


def peak_share(freqs: np.ndarray, psd: np.ndarray, half_width: float = 1.0) -> np.ndarray:
    """Share of the power within ``half_width`` Hz of each spectrum's peak."""
    fp = freqs[psd.argmax(-1)]
    near = np.abs(freqs - fp[..., None]) <= half_width
    return (psd * near).sum(-1) / np.maximum(psd.sum(-1), 1e-20)


def autocorr_peak(x: np.ndarray, sfreq: float, lags: tuple[float, float] = (0.1, 1.0)) -> np.ndarray:
    """Height of the highest autocorrelation peak (normalised, biased estimate) at ``lags`` s of
    centred series along the last axis: near 1 for a clean rhythm in that range, ~0 for noise."""
    from medad.detectors.features import autocorrelation

    t = x.shape[-1]
    ac = autocorrelation(x - x.mean(-1, keepdims=True))
    lo = max(1, int(round(lags[0] * sfreq)))
    hi = min(t - 1, int(round(lags[1] * sfreq)) + 1)
    if hi <= lo:
        raise InputError(f"{t}-sample series at {sfreq:g} Hz are too short for autocorrelation lags of "
                         f"{lags[0]:g}-{lags[1]:g} s")
    return ac[..., lo:hi].max(-1)


def rhythm_features(x: np.ndarray, sfreq: float, groups: Sequence[str] = RHYTHM_GROUPS, *,
                    band: tuple[float, float] = RHYTHM_BAND, sub_seconds: float = SUB_SECONDS) -> np.ndarray:
    """The :data:`RHYTHM_GROUPS` features of ``(N, C, T)`` windows -> ``(N, C * F)`` float32,
    channel-major (all features of channel 0, then channel 1, ...), groups in the order given."""
    from medad.detectors.features import permutation_entropy

    x = np.asarray(x)
    if x.ndim != 3:
        raise InputError(f"rhythm features need (N, C, T) windows, got shape {x.shape}")
    bad = set(groups) - set(RHYTHM_GROUPS)
    if bad or not groups:
        raise ConfigError(f"unknown or no rhythm feature groups {sorted(bad)}; known: {', '.join(RHYTHM_GROUPS)}")
    n, c, _ = x.shape
    z = _zscore_windows(x)
    feats: list[np.ndarray] = []
    raw_sub = sub = None
    for g in groups:
        if g == "rhythm":
            f, p = band_spectrum(z, sfreq, band)
            feats += [peak_prominence(p), band_entropy(p), peak_share(f, p)]
            continue
        if sub is None:
            raw_sub = sub_windows(z, int(round(sub_seconds * sfreq)))  # (N, C, S, L)
            sub = _zscore_windows(raw_sub)
        if g == "sub_max":
            _, ps = band_spectrum(sub, sfreq, band, seg_seconds=None)
            feats += [autocorr_peak(sub, sfreq).max(-1), permutation_entropy(sub, order=4, delay=2).min(-1),
                      peak_prominence(ps).max(-1)]
        else:  # sub_stability
            zc = (np.signbit(sub[..., 1:]) != np.signbit(sub[..., :-1])).mean(-1)
            # the log std of the sub-windows of the window-z-scored series (not the re-z-scored ones)
            lsd = np.log(raw_sub.std(-1) + 1e-6)
            feats += [zc.std(-1) / np.maximum(zc.mean(-1), 1e-6), lsd.std(-1)]
    return np.stack(feats, axis=-1).reshape(n, -1).astype(np.float32)


# (column, sign): +1 where a seizure-like (more regular) window has the higher value. Written
# down from the regularity literature (ictal EEG: lower permutation / sample / spectral entropy,
# a stronger autocorrelation peak, a more prominent spectral peak, steadier across sub-windows)
# before any Bonn C,D vs E figure of these columns was computed.
REGULARITY_COLUMNS = (
    ("permutation entropy, delay 1", -1), ("permutation entropy, delay 2", -1), ("permutation entropy, delay 4", -1),
    ("autocorrelation peak 0.1-1 s", +1), ("sample entropy (every 2nd sample)", -1),
    ("log peak prominence 1-30 Hz", +1), ("spectral entropy 1-30 Hz", -1), ("peak share +-1 Hz", +1),
    ("max sub-window autocorrelation peak", +1), ("min sub-window permutation entropy", -1),
    ("max sub-window log peak prominence", +1),
    ("sub-window zero-crossing-rate variation", -1), ("sub-window log-std variation", -1),
)
REGULARITY_SIGNS = np.array([s for _, s in REGULARITY_COLUMNS], dtype=np.float32)


def regularity_features(x: np.ndarray, sfreq: float) -> np.ndarray:
    """The :data:`REGULARITY_COLUMNS` of ``(N, C, T)`` windows -> ``(N, C * 13)`` float32,
    channel-major; every column scale-free."""
    from medad.detectors.features import permutation_entropy
    from medad.transforms.signal import sample_entropy

    z = _zscore_windows(np.asarray(x))
    n = z.shape[0]
    cols = [permutation_entropy(z, order=4, delay=d) for d in (1, 2, 4)]
    cols += [autocorr_peak(z, sfreq), sample_entropy(z, step=2)]
    rest = rhythm_features(z, sfreq, RHYTHM_GROUPS).reshape(n, z.shape[1], -1)
    f = np.concatenate([np.stack(cols, axis=-1), rest], axis=-1)
    return f.reshape(n, -1).astype(np.float32)


def one_sided(z: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Standardised features ``(N, C * F)`` kept on their seizure side only: ``max(sign * z, 0)``
    per column (``signs`` of length F, repeated over channels), so a deviation the other way
    scores as no deviation."""
    z = np.asarray(z, dtype=np.float32)
    signs = np.asarray(signs, dtype=np.float32)
    if z.shape[1] % len(signs):
        raise InputError(f"{z.shape[1]} feature columns are not a whole number of {len(signs)}-column channels")
    return np.maximum(z * np.tile(signs, z.shape[1] // len(signs)), 0.0)


def group_whiten(f: np.ndarray, groups: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Features ``(N, F)`` whitened within each group of items (e.g. a recording site): robust
    z-scored per column, then centred and decorrelated with the group's Minimum Covariance
    Determinant estimate (half the items support it, so a minority of abnormal items -- seizures
    among a site's recordings -- sets neither the centre nor the shape). The per-site z-score
    aligns each feature's level and spread between sites; this also aligns how features vary
    together (correlation alignment). Groups with fewer items than 2 x F + 2 are only z-scored."""
    from sklearn.covariance import MinCovDet

    from medad.transforms.signal import group_robust_zscore

    z = group_robust_zscore(f, groups).astype(np.float64)
    out = z.copy()
    groups = np.asarray(groups)
    for g in np.unique(groups):
        m = groups == g
        if m.sum() < 2 * z.shape[1] + 2:
            continue
        with warnings.catch_warnings():  # a rank-deficient support is handled by the eigenvalue floor below
            warnings.filterwarnings("ignore", message=".*not full rank", category=UserWarning)
            mcd = MinCovDet(random_state=seed).fit(z[m])
        vals, vecs = np.linalg.eigh(mcd.covariance_)
        # floor: directions with under 1/1000 of the largest variance are not blown up into noise
        inv_sqrt = (vecs / np.sqrt(np.maximum(vals, 1e-3 * vals.max()))) @ vecs.T
        out[m] = (z[m] - mcd.location_) @ inv_sqrt
    return out.astype(np.float32)
