"""PNG figures shared by every pipeline: an image beside its map (and the two blended), and a
multichannel signal with abnormal spans and attribution shaded along time.

Both write atomically (temp file, then rename) with matplotlib's Agg backend, so they work on
headless machines and never leave a half-written PNG behind.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Orientation:
    """Patient direction at each edge of a displayed slice (``None``: not marked) and a sentence
    stating the display convention, printed under the figure."""

    left: str
    right: str
    top: str | None
    bottom: str | None
    note: str


def axial_orientation(patient_right_on: str = "right") -> Orientation:
    """Markers of an axial slice shown anterior up, the patient's right on screen ``"right"``
    (neurological convention: a RAS voxel grid with x along columns, as medad's views draw it) or
    ``"left"`` (radiological convention)."""
    if patient_right_on == "right":
        return Orientation("L", "R", "A", "P", "Axial slices in neurological convention: the patient's right (R) is "
                           "on the right of the screen, anterior (A) up.")
    if patient_right_on == "left":
        return Orientation("R", "L", "A", "P", "Axial slices in radiological convention: the patient's right (R) is "
                           "on the left of the screen, anterior (A) up.")
    raise InputError(f"patient_right_on must be 'right' or 'left', got {patient_right_on!r}")


def mark_orientation(ax, orientation: Orientation, tiles: int = 1, *, sides_only: bool = False) -> None:
    """Write the orientation letters at the edges of each of ``tiles`` equal-width slices shown
    side by side in ``ax`` (an imshow axes); ``sides_only``: left/right letters only."""
    x0, x1 = sorted(ax.get_xlim())
    y_top, y_bottom = sorted(ax.get_ylim())  # image axes: the top row has the smaller y
    width = (x1 - x0) / max(int(tiles), 1)
    style = dict(color="yellow", fontsize=8, fontweight="bold", clip_on=False,
                 bbox=dict(boxstyle="square,pad=0.1", fc="black", ec="none", alpha=0.6))
    ym = (y_top + y_bottom) / 2
    for k in range(max(int(tiles), 1)):
        a, b = x0 + k * width, x0 + (k + 1) * width
        ax.text(a + 0.02 * width, ym, orientation.left, ha="left", va="center", **style)
        ax.text(b - 0.02 * width, ym, orientation.right, ha="right", va="center", **style)
        if not sides_only:
            if orientation.top:
                ax.text((a + b) / 2, y_top + 0.02 * (y_bottom - y_top), orientation.top, ha="center", va="top", **style)
            if orientation.bottom:
                ax.text((a + b) / 2, y_bottom - 0.02 * (y_bottom - y_top), orientation.bottom, ha="center",
                        va="bottom", **style)


#: attribution values below this share of the largest magnitude are left transparent in the blend
ATTRIBUTION_HIDE_BELOW = 0.05


def _map_scale(m: np.ndarray, vmin: float | None, vmax: float | None, attribution: bool,
               cmap: str) -> tuple[float, float, str]:
    """Colour range and map: an anomaly map spans its values; an attribution map starts at 0
    (a signed one: symmetric about 0, red raising the score and blue lowering it)."""
    if attribution:
        top = float(np.abs(m).max())
        signed = float(m.min()) < -ATTRIBUTION_HIDE_BELOW * top
        lo, hi = (-top, top) if signed else (0.0, top)
        cmap = "RdBu_r" if signed else cmap
    else:
        lo, hi = float(m.min()), float(m.max())
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-6  # a constant map still draws (as one colour) instead of failing
    return lo, hi, cmap


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
    label: str = "map value",
    attribution: bool = False,
    threshold: float | None = None,
    orientation: Orientation | None = None,
    tiles: int = 1,
    mask_label: str | None = None,
    outline: np.ndarray | None = None,
    outline_label: str | None = None,
) -> Path:
    """Write a PNG with three panels: the image, the map (with a labelled colour bar) and the map
    blended over the image. ``mask`` (e.g. the thresholded map or an expert outline) is drawn as a
    contour on the image and the blend. ``title`` goes on top (put the score and threshold there).

    Args:
        image2d: ``(H, W)`` grey or ``(H, W, 3)`` / ``(3, H, W)`` colour image.
        map2d: ``(H, W)`` map on the same grid (anomaly score or attribution).
        path: output file (``.png``).
        vmin, vmax: colour range of the map (default: its min and max; for an attribution map
            0 to its max, or symmetric about 0 when it has negative values).
        label: what the colour bar shows, with its unit (e.g. ``"attribution (Grad-CAM, relative)"``).
        attribution: the map is an attribution: its scale starts at 0 and values below
            ``ATTRIBUTION_HIDE_BELOW`` of its largest magnitude are transparent in the blend, so an
            image is not tinted all over.
        threshold: a value marked on the colour bar (e.g. the calibrated voxel threshold).
        orientation: patient direction markers (:func:`axial_orientation`) drawn on the image and
            blend panels, with the convention stated under the figure.
        tiles: the image is this many equal-width slices side by side (markers on each).
        mask_label: what the cyan outline is (stated under the figure).
        outline: a second region drawn (lime, dashed) on the image panel, e.g. the brain mask the
            map was computed in, so a failed skull-stripping shows; ``outline_label`` says what it is.

    With several ``tiles`` (slices side by side) the three panels are stacked, not put in a row
    (three rows of three slices stay readable; a row of nine did not).
    """
    img, img_cmap = _as_display_image(image2d)
    m = np.asarray(map2d, dtype=np.float32)
    m = np.squeeze(m) if m.ndim > 2 else m
    if m.shape != img.shape[:2]:
        raise InputError(f"map shape {np.shape(map2d)} does not match image shape {np.shape(image2d)}")
    m = np.nan_to_num(m)
    lo, hi, cmap = _map_scale(m, vmin, vmax, attribution, cmap)
    shown = np.ma.masked_where(np.abs(m) < ATTRIBUTION_HIDE_BELOW * max(abs(lo), abs(hi)), m) if attribution else m

    h, w = img.shape[:2]
    panel = 3.2
    foot = [s for s in (orientation.note if orientation else None,
                        f"Cyan outline: {mask_label}." if mask_label and mask is not None else None,
                        f"Lime dashed outline (image panel): {outline_label}." if outline_label and outline is not None
                        else None,
                        (f"Blend: opacity grows with the attribution's magnitude; below {ATTRIBUTION_HIDE_BELOW:.0%} "
                         f"of its largest it is not drawn.") if attribution else None) if s]
    stacked = tiles > 1
    if stacked:
        fig = _figure((panel * max(w / h, 0.3) + 1.6, 3 * panel + (0.5 if title else 0.1) + 0.3 * len(foot)))
        axes = fig.subplots(3, 1)
    else:
        fig = _figure((3 * panel * max(w / h, 0.3) + 1.2, panel + (0.5 if title else 0.1)))
        axes = fig.subplots(1, 3)
    axes[0].imshow(img, cmap=img_cmap, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(m, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    axes[1].set_title("map", fontsize=9)
    axes[2].imshow(img, cmap=img_cmap, interpolation="nearest")
    # attribution: opacity grows with the magnitude, so weak evidence does not tint the image
    blend_alpha = (float(alpha) * np.clip(np.abs(m) / max(abs(lo), abs(hi)), 0.0, 1.0)) if attribution else float(alpha)
    axes[2].imshow(shown, cmap=cmap, vmin=lo, vmax=hi, alpha=blend_alpha, interpolation="nearest")
    axes[2].set_title("blend", fontsize=9)
    if mask is not None:
        mk = np.asarray(mask).astype(bool)
        mk = np.squeeze(mk) if mk.ndim > 2 else mk
        if mk.shape != img.shape[:2]:
            raise InputError(f"mask shape {np.shape(mask)} does not match image shape {np.shape(image2d)}")
        if mk.any() and not mk.all():
            for ax in (axes[0], axes[2]):
                ax.contour(mk.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
    if outline is not None:
        ol = np.squeeze(np.asarray(outline).astype(bool))
        if ol.shape != img.shape[:2]:
            raise InputError(f"outline shape {np.shape(outline)} does not match image shape {np.shape(image2d)}")
        if ol.any() and not ol.all():
            axes[0].contour(ol.astype(np.float32), levels=[0.5], colors="lime", linewidths=0.8, linestyles="dashed")
    for ax in axes:
        ax.set_axis_off()
    if orientation is not None:
        mark_orientation(axes[0], orientation, tiles)
        mark_orientation(axes[2], orientation, tiles, sides_only=True)
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.02)
    cbar.set_label(textwrap.fill(label, 40), fontsize=8)  # wrapped: a long label must not outgrow the bar
    if threshold is not None and lo <= threshold <= hi:
        cbar.ax.axhline(float(threshold), color="cyan", lw=1.5)
    if title:
        fig.suptitle(title, fontsize=10)
    if foot:
        fig.text(0.01, 0.06, "\n".join(foot), fontsize=8, ha="left", va="top")
    return _save(fig, path)


def _unit_scale(unit: str | None) -> tuple[str, float]:
    """Display unit and factor for a recording's unit: volts are shown in microvolts (EEG scale);
    an unknown unit is ``a.u.``."""
    if not unit or unit == "?":
        return "a.u.", 1.0
    return ("µV", 1e6) if unit.split()[0] == "V" else (unit, 1.0)


def save_signal_plot(
    data: np.ndarray,
    sfreq: float,
    path: str | Path,
    *,
    spans: Sequence[tuple[float, float, float]] = (),
    attribution: np.ndarray | None = None,
    ch_names: Sequence[str] | None = None,
    title: str | None = None,
    max_channels: int = 32,
    max_points: int = 20000,
    t0: float | None = None,
    units: str | Sequence[str | None] | None = None,
    xlabel: str | None = None,
) -> Path:
    """Write a PNG of a ``(C, T)`` recording, one row per channel.

    Abnormal ``spans`` ``(start_s, end_s, probability)`` (times in the recording) are shaded red
    (darker = more probable) on every row; ``attribution`` ``(C, T)`` or ``(T,)`` is shaded along
    time behind each trace (its absolute value, normalised to the largest over the shown
    channels). Each trace is scaled to its own row: the row's full height is written on its right
    in ``units`` (one for all channels or one per channel; volts shown as µV; ``a.u.`` when
    unknown). ``t0``: the recording time (s) of the first sample; the axis then reads "time in
    recording (s)". Long recordings are decimated for drawing to at most ``max_points`` points per
    channel (peaks are kept by taking min and max per bin); only the first ``max_channels``
    channels are drawn and the title names the ones left out.
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
    unit_list = [units] * n_ch_total if units is None or isinstance(units, str) else list(units)
    if len(unit_list) != n_ch_total:
        raise InputError(f"{len(unit_list)} units for {n_ch_total} channels")
    attr, attr_text = None, None
    if attribution is not None:
        a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))
        same = a.ndim == 1 or bool(a.ndim == 2 and np.all(a == a[:1]))
        if a.ndim == 1:
            a = np.broadcast_to(a[None], (n_ch_total, a.shape[0]))
        if a.shape != x.shape:
            raise InputError(f"attribution shape {np.shape(attribution)} does not match signal shape {x.shape}")
        attr = a[:n_ch]
        attr_text = ("|attribution| over time (all channels together)" if same
                     else "|attribution| per channel and time")
    start = 0.0 if t0 is None else float(t0)

    # Drawing millions of points is slow and looks the same as a min/max envelope.
    step = max(1, int(np.ceil(n_t / max(max_points // 2, 1))))
    t_all = start + np.arange(n_t) / float(sfreq)
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

    height = 0.9 * n_ch + 1.6
    fig = _figure((12, height))
    # margins in inches, not shares of a tall figure (a 32-row plot would leave a wide gap under its title)
    n_head = (title or "").count("\n") + 1 + int(n_ch < n_ch_total)
    fig.subplots_adjust(top=1 - (0.45 + 0.2 * n_head) / height, bottom=0.6 / height)
    axes = fig.subplots(n_ch, 1, sharex=True, squeeze=False)[:, 0]
    a_max = float(attr.max()) if attr is not None and attr.size else 0.0
    for i, ax in enumerate(axes):
        for s0, s1, prob in spans:
            ax.axvspan(float(s0), float(s1), color="red", alpha=0.1 + 0.25 * float(np.clip(prob, 0, 1)), lw=0)
        lo_, hi_ = float(np.min(trace[i])), float(np.max(trace[i]))
        if attr is not None and a_max > 0:
            ax.imshow(attr[i][None] / a_max, aspect="auto", cmap="Greens", vmin=0, vmax=1, alpha=0.6,
                      extent=(t_attr[0], t_attr[-1] + step / sfreq, lo_, hi_ if hi_ > lo_ else lo_ + 1),
                      interpolation="nearest", origin="lower")
        ax.plot(t, trace[i], lw=0.5, color="black")
        ax.set_ylabel(names[i], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        ax.set_xlim(start, start + n_t / float(sfreq))
        unit, factor = _unit_scale(unit_list[i])
        # each row is scaled to its own trace: its height in physical units makes rows comparable
        ax.text(1.005, 0.5, f"{(hi_ - lo_) * factor:.3g} {unit}\nrow height", transform=ax.transAxes,
                fontsize=7, ha="left", va="center")
    axes[-1].set_xlabel(xlabel or ("time in recording (s)" if t0 is not None else "time (s)"))
    from matplotlib.patches import Patch

    handles = []
    if spans:
        handles.append(Patch(color="red", alpha=0.3, label="flagged span (darker = more probable)"))
    if attr_text is not None and a_max > 0:
        handles.append(Patch(color="green", alpha=0.5, label=f"{attr_text}, darker = more"))
    if handles:
        axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.02), fontsize=7, ncol=len(handles),
                       frameon=False, borderaxespad=0.0)
    head = title or ""
    if n_ch < n_ch_total:
        left = names[n_ch:]
        shown = ", ".join(left[:40]) + (f" ... ({len(left) - 40} more)" if len(left) > 40 else "")
        head = f"{head}\n(first {n_ch} of {n_ch_total} channels; not shown: {shown})".strip()
    if head:
        fig.suptitle(head, fontsize=10)
    return _save(fig, path)
