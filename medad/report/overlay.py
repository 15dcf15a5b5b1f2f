"""PNG figures shared by every pipeline: an image beside its map (and the two blended), and a
multichannel signal with abnormal spans and attribution shaded along time.

Both write atomically (temp file, then rename) with matplotlib's Agg backend, so they work on
headless machines and never leave a half-written PNG behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medad.errors import InputError
from medad.utils import atomic_path


def _figure(figsize: tuple[float, float]):
    """A new figure on the Agg canvas (no pyplot state, safe in threads and without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", bbox_inches="tight")
    return path


def _as_display_image(image2d: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Grey ``(H, W)`` or colour ``(H, W, 3|4)`` / ``(3, H, W)`` -> array for imshow, scaled to
    [0, 1] by robust percentiles; returns (image, cmap)."""
    img = np.asarray(image2d, dtype=np.float32)
    img = np.squeeze(img) if img.ndim == 3 and 1 in (img.shape[0], img.shape[-1]) else img
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (3, 4):
        img = np.moveaxis(img, 0, -1)  # channel-first colour -> channel-last
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise InputError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {np.shape(image2d)}")
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    img = np.clip((np.nan_to_num(img) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return img, ("gray" if img.ndim == 2 else None)


def save_overlay(
    image2d: np.ndarray,
    map2d: np.ndarray,
    path: str | Path,
    *,
    mask: np.ndarray | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Write a PNG with three panels: the image, the map (with a colour bar) and the map blended
    over the image. ``mask`` (e.g. the thresholded map or an expert outline) is drawn as a
    contour on the image and the blend. ``title`` goes on top (put the score and threshold there).

    Args:
        image2d: ``(H, W)`` grey or ``(H, W, 3)`` / ``(3, H, W)`` colour image.
        map2d: ``(H, W)`` map on the same grid (anomaly score or attribution).
        path: output file (``.png``).
        vmin, vmax: colour range of the map (default: its min and max).
    """
    img, img_cmap = _as_display_image(image2d)
    m = np.asarray(map2d, dtype=np.float32)
    m = np.squeeze(m) if m.ndim > 2 else m
    if m.shape != img.shape[:2]:
        raise InputError(f"map shape {np.shape(map2d)} does not match image shape {np.shape(image2d)}")
    m = np.nan_to_num(m)
    lo = float(m.min()) if vmin is None else float(vmin)
    hi = float(m.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-6  # a constant map still draws (as one colour) instead of failing

    h, w = img.shape[:2]
    panel = 3.2
    fig = _figure((3 * panel * max(w / h, 0.3) + 0.8, panel + (0.5 if title else 0.1)))
    axes = fig.subplots(1, 3)
    axes[0].imshow(img, cmap=img_cmap, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(m, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    axes[1].set_title("map", fontsize=9)
    axes[2].imshow(img, cmap=img_cmap, interpolation="nearest")
    axes[2].imshow(m, cmap=cmap, vmin=lo, vmax=hi, alpha=float(alpha), interpolation="nearest")
    axes[2].set_title("blend", fontsize=9)
    if mask is not None:
        mk = np.asarray(mask).astype(bool)
        mk = np.squeeze(mk) if mk.ndim > 2 else mk
        if mk.shape != img.shape[:2]:
            raise InputError(f"mask shape {np.shape(mask)} does not match image shape {np.shape(image2d)}")
        if mk.any() and not mk.all():
            for ax in (axes[0], axes[2]):
                ax.contour(mk.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def save_signal_plot(
    data: np.ndarray,
    sfreq: float,
    path: str | Path,
    *,
    spans: Sequence[tuple[float, float, float]] = (),
    attribution: np.ndarray | None = None,
    ch_names: Sequence[str] | None = None,
    title: str | None = None,
    max_channels: int = 16,
    max_points: int = 20000,
) -> Path:
    """Write a PNG of a ``(C, T)`` recording, one row per channel.

    Abnormal ``spans`` ``(start_s, end_s, probability)`` are shaded red (darker = more probable)
    on every row; ``attribution`` ``(C, T)`` or ``(T,)`` is shaded along time behind each trace
    (its absolute value, normalised to the largest over the shown channels). Long recordings are
    decimated for drawing to at most ``max_points`` points per channel (peaks are kept by taking
    min and max per bin), and only the first ``max_channels`` channels are drawn.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"expected a signal of shape (channels, time), got {np.shape(data)}")
    if not sfreq or sfreq <= 0:
        raise InputError(f"sampling rate must be positive, got {sfreq}")
    n_ch_total, n_t = x.shape
    n_ch = min(n_ch_total, int(max_channels))
    names = list(ch_names) if ch_names is not None else [f"ch{i}" for i in range(n_ch_total)]
    if len(names) != n_ch_total:
        raise InputError(f"{len(names)} channel names for {n_ch_total} channels")
    attr = None
    if attribution is not None:
        a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))
        if a.ndim == 1:
            a = np.broadcast_to(a[None], (n_ch_total, a.shape[0]))
        if a.shape != x.shape:
            raise InputError(f"attribution shape {np.shape(attribution)} does not match signal shape {x.shape}")
        attr = a[:n_ch]

    # Drawing millions of points is slow and looks the same as a min/max envelope.
    step = max(1, int(np.ceil(n_t / max(max_points // 2, 1))))
    t_all = np.arange(n_t) / float(sfreq)
    if step > 1:
        nb = n_t // step
        xb = x[:n_ch, : nb * step].reshape(n_ch, nb, step)
        trace = np.stack([xb.min(-1), xb.max(-1)], -1).reshape(n_ch, 2 * nb)
        t = np.repeat(t_all[: nb * step : step], 2)
        if attr is not None:
            attr = attr[:, : nb * step].reshape(n_ch, nb, step).max(-1)
    else:
        trace, t = x[:n_ch], t_all
    t_attr = t_all[: (attr.shape[1] * step if attr is not None else 0) : step]

    fig = _figure((12, 0.9 * n_ch + 1.2))
    axes = fig.subplots(n_ch, 1, sharex=True, squeeze=False)[:, 0]
    a_max = float(attr.max()) if attr is not None and attr.size else 0.0
    for i, ax in enumerate(axes):
        for start, end, prob in spans:
            ax.axvspan(float(start), float(end), color="red", alpha=0.1 + 0.25 * float(np.clip(prob, 0, 1)), lw=0)
        if attr is not None and a_max > 0:
            lo_, hi_ = float(np.min(trace[i])), float(np.max(trace[i]))
            ax.imshow(attr[i][None] / a_max, aspect="auto", cmap="Greens", vmin=0, vmax=1, alpha=0.6,
                      extent=(t_attr[0], t_attr[-1] + step / sfreq, lo_, hi_ if hi_ > lo_ else lo_ + 1),
                      interpolation="nearest", origin="lower")
        ax.plot(t, trace[i], lw=0.5, color="black")
        ax.set_ylabel(names[i], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        ax.set_xlim(0, n_t / float(sfreq))
    axes[-1].set_xlabel("time (s)")
    head = title or ""
    if n_ch < n_ch_total:
        head = f"{head}  (first {n_ch} of {n_ch_total} channels)".strip()
    if head:
        fig.suptitle(head, fontsize=10)
    return _save(fig, path)
