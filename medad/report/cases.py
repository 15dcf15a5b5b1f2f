"""From a saved detector and one input file to maps, figures, NIfTI files and a report page.

This is what ``medad explain`` runs. Inputs by the detector's kind:

* 2D image model + PNG/JPEG: resized to the model's size, explained, maps resized back.
* 2D image model + volume (NIfTI, MGZ, DICOM): every axial slice scored; maps on the scan's own
  grid (``<method>.nii.gz`` through :func:`medad.io.volumes.write_like`); the most abnormal slice
  drawn. Gradient methods explain every slice, perturbation methods (slow) the ``top_k`` most
  abnormal ones only (the others are zero in the NIfTI, and the report says so).
* 3D image model + volume: the volume resized to the model's grid and back.
* signal model + recording (EDF/BDF/FIF, WFDB, WAV, text): cut into consecutive windows of the
  model's length; windows above the threshold are shaded; the ``top_k`` highest windows are
  explained and the attribution is shaded along time.
* any model + ``.npy``: an already preprocessed item ``(C, *spatial)`` or batch ``(N, C, *spatial)``.

The detector is used on input prepared as given (plus the optional ``normalise``): preprocessing
must match the one the detector was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medad.errors import InputError, ReadError
from medad.io.images import IMAGE_SUFFIXES
from medad.report.html import MAP_NOTES, SIGNAL_SPANS_NOTE, CaseReport, Figure, identity_from_file, write_case, write_case_report
from medad.report.overlay import axial_orientation, save_overlay, save_signal_plot
from medad.utils import atomic_path


def _resize(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``(N, C, *spatial)`` linearly to ``size`` (no-op when equal)."""
    import torch
    import torch.nn.functional as F

    if tuple(a.shape[2:]) == tuple(size):
        return a.astype(np.float32, copy=False)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), size=tuple(int(s) for s in size),
                      mode=mode, align_corners=False)
    return t.numpy()


def _normalise(x: np.ndarray, how: str) -> np.ndarray:
    """Per-item intensity normalisation (statistics over non-zero positions: background excluded)."""
    if how == "none":
        return x
    out = np.empty_like(x)
    for i, item in enumerate(x):
        fg = item[item != 0]
        fg = fg if fg.size else item.ravel()
        if how == "zscore":
            out[i] = (item - fg.mean()) / (fg.std() or 1.0)
        elif how == "minmax":
            lo, hi = np.percentile(fg, [0.5, 99.5])
            out[i] = (item - lo) / (hi - lo if hi > lo else 1.0)
        else:
            raise InputError(f"unknown normalisation {how!r}; choose none, zscore or minmax")
    return out


def _decision(score: float, threshold: float | None) -> str:
    if threshold is None:
        return "no threshold (detector not calibrated)"
    return "abnormal" if score > threshold else "normal"


def default_methods(det) -> list[str]:
    """Grad-CAM for supervised neural detectors (classifiers); Integrated Gradients for the other
    neural detectors; KernelSHAP for the rest (no gradients).

    Why not Grad-CAM everywhere: a reconstruction detector's score compares the input with the
    network's output, and much of it depends on the input directly (the residual), a path no
    layer sees. Grad-CAM then shows where the network's features would *raise* the score, which
    for an autoencoder is rarely the lesion (its features reconstruct it, lowering the residual);
    measured on a 3D DAE and a synthetic bright lesion (the test setup of ``explain_scan``), Grad-CAM
    put 0.03 % of its positive mass inside the lesion, IG 94 %."""
    from medad.explain.models import score_module

    if not (score_module(det).differentiable and getattr(det, "net_", None) is not None):
        return ["kernel_shap"]
    return ["gradcam"] if getattr(det, "supervised", False) else ["ig"]


#: colour-bar labels of the maps (what the value is, and in which unit)
MAP_LABELS: dict[str, str] = {
    "anomaly_map": "anomaly score (the detector's own map, in its score units)",
    "gradcam": "attribution (Grad-CAM, relative)",
    "ig": "attribution (Integrated Gradients, share of the {score})",
    "gradient_shap": "attribution (GradientSHAP, share of the {score})",
    "kernel_shap": "attribution (KernelSHAP, change of the {score} per region)",
    "lime": "attribution (LIME weight, relative)",
}


def map_label(name: str, det=None) -> str:
    """The colour-bar label of a map named ``name`` (``anomaly_map`` or a method) of detector
    ``det``: a supervised detector's maps explain the log-odds of its score."""
    score = "score's log-odds" if getattr(det, "supervised", False) else "score"
    return MAP_LABELS.get(name, f"{name} (map value)").format(score=score)


def _map_overlay(image2d, map2d, path, name: str, det, title: str, *, oriented: bool = False) -> Path:
    """One overlay of map ``name`` (the detector's own map or an attribution): a labelled colour
    bar (the pixel threshold marked on an anomaly map), attribution scales from 0 and, for an
    axial slice of a RAS volume (``oriented``), the R/L/A/P markers."""
    own = name == "anomaly_map"
    return save_overlay(image2d, map2d, path, title=title, label=map_label(name, det), attribution=not own,
                        threshold=getattr(det, "pixel_threshold_", None) if own else None,
                        orientation=axial_orientation("right") if oriented else None)


def _axial_view(a: np.ndarray) -> np.ndarray:
    """An axial slice ``(X, Y)`` of a RAS voxel grid as displayed: anterior up, the patient's
    right on screen right (neurological convention; the figures say so)."""
    return a.T[::-1]


def _signal_units(rec) -> str | list[str | None] | None:
    """The recording's unit(s) as its reader reports them (WFDB: per channel; MNE: volts)."""
    return rec.meta.get("units") or rec.meta.get("unit")


def _channel_names(names: Sequence[str] | None, source: str | Path | None) -> list[str] | None:
    """Channel names for plots: a plain-text recording's only channel is named after its file by
    the reader (no header to name it): shown as ``signal``."""
    if names is None or source is None:
        return None if names is None else list(names)
    from medad.io.signals import record_id_from_path

    return ["signal"] if list(names) == [record_id_from_path(source)] else list(names)


def _title(case_id: str, what: str, score: float, thr: float | None, score_name: str = "score",
           no_threshold: str = "no threshold") -> str:
    t = f"{case_id}: {what} | {score_name} {score:.4g}"
    return t + (f" {'>' if score > thr else '<='} threshold {thr:.4g}" if thr is not None else f" ({no_threshold})")


def explain_file(model: Any, input_path: str | Path, out_dir: str | Path, *, methods: Sequence[str] | None = None,
                 case_id: str | None = None, include_identity: bool = False, normalise: str = "none",
                 sfreq: float | None = None, top_k: int = 3, prepare_image=None, **explain_kw) -> CaseReport:
    """Explain one input file with a detector (a saved folder or a fitted object); write the PNG
    figures, NIfTI maps (volumes), ``case.json`` and ``report.html`` into ``out_dir``.

    ``prepare_image`` (image files only): the model's own preprocessing, an image as
    :func:`medad.io.images.read_image` returns it -> ``(1, C, H, W)`` model input (e.g.
    :func:`pipelines.frames.frame_preparer`); without it the image is resized and used in its
    file's value range."""
    from medad.detectors.base import Detector
    from medad.explain import canonical_method

    det = Detector.load(model) if isinstance(model, (str, Path)) else model
    det._require_fitted()
    p = Path(input_path)
    if not p.exists():
        raise ReadError("file or folder not found", p)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [canonical_method(m) for m in (methods or default_methods(det))]
    cid = case_id or p.name.split(".")[0]
    in_shape = list(getattr(det, "in_shape_", []) or [])
    kw = dict(methods=methods, cid=cid, normalise=normalise, top_k=max(1, int(top_k)), explain_kw=explain_kw)
    if prepare_image is not None:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"this model explains image files ({', '.join(IMAGE_SUFFIXES)}); for a video, "
                             f"explain a frame saved as an image", p)
        case = _explain_image(det, p, out, prepare=prepare_image, **kw)
    elif p.suffix.lower() == ".npy":
        case = _explain_array(det, _load_npy(p, len(in_shape)), out, **kw)
    elif det.input_kind == "signal":
        case = _explain_signal(det, p, out, sfreq=sfreq, **kw)
    elif det.input_kind == "image" and len(in_shape) in (0, 3):  # 0: no fixed size (classical detectors)
        if p.suffix.lower() in IMAGE_SUFFIXES:
            case = _explain_image(det, p, out, **kw)
        else:
            case = _explain_volume_slices(det, p, out, **kw)
    elif det.input_kind == "image" and len(in_shape) == 4:
        case = _explain_volume_3d(det, p, out, **kw)
    else:
        raise InputError(f"cannot explain a {det.input_kind} detector with input shape {in_shape} on {p.name}")
    case.model = type(det).__name__
    case.source = p.name
    if getattr(det, "supervised", False) and methods:
        case.details["what the maps explain"] = MAP_NOTES["score_scale"]
    if include_identity:
        case.identity = identity_from_file(p)
    write_case(out, case)
    write_case_report(out / "report.html", case)
    return case


# ---------------------------------------------------------------------------------------- helpers

def _channels(det) -> int | None:
    shape = getattr(det, "in_shape_", None)
    return int(shape[0]) if shape else getattr(det, "in_channels_", None)


def _item_shape(det, native: tuple[int, ...]) -> tuple[int, ...]:
    """The model's item shape, or the input's own when the detector takes any size."""
    shape = getattr(det, "in_shape_", None)
    return tuple(int(v) for v in shape) if shape else (_channels(det) or native[0], *native[1:])


def _load_npy(p: Path, item_ndim: int) -> np.ndarray:
    try:
        x = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ReadError(f"cannot read array: {e}", p) from None
    if item_ndim and x.ndim == item_ndim:
        x = x[None]
    if item_ndim and x.ndim != item_ndim + 1:
        raise ReadError(f"array of shape {x.shape} is not one item or a batch of the model's input", p)
    return x.astype(np.float32)


def _scores(det, x: np.ndarray):
    res = det.score(x)
    return res.score, res.map


def _explain(det, x, method, explain_kw, spatial_dims: int):
    from medad.explain import explain

    return explain(det, x, method, spatial_dims=spatial_dims, **explain_kw)


def _single_item_panels(det, x: np.ndarray, methods, explain_kw):
    """Score one item ``x`` (1, C, *spatial); its own map (if any) and one map per method."""
    s, amap = _scores(det, x)
    panels = ([("anomaly_map", amap[0])] if amap is not None else []) + \
             [(m, _explain(det, x[0], m, explain_kw, x.ndim - 2)) for m in methods]
    return float(s[0]), getattr(det, "threshold_", None), panels


def _explain_array(det, x, out, *, methods, cid, normalise, top_k, explain_kw) -> CaseReport:
    x = _normalise(x, normalise)
    s, amap = _scores(det, x)
    thr = getattr(det, "threshold_", None)
    order = np.argsort(-s)[:top_k]
    figs: list[Figure] = []
    for rank, i in enumerate(order):
        label = f"item {i}"
        panels = ([("anomaly_map", amap[i])] if amap is not None else []) + \
                 [(m, _explain(det, x[i], m, explain_kw, x.ndim - 2)) for m in methods]
        for name, mp in panels:
            stem = f"{name}_item{i}"
            title = _title(cid, label, float(s[i]), thr)
            if x.ndim == 3:  # signal item (C, T)
                save_signal_plot(x[i], 1.0, out / f"{stem}.png", attribution=mp, title=title,
                                 xlabel="time (samples)")
            else:  # a preprocessed array: its axes' orientation is unknown, so no R/L markers
                img, m2 = _middle_slice(x[i], mp)
                _map_overlay(img, m2, out / f"{stem}.png", name, det, title)
            figs.append(Figure(png=str(out / f"{stem}.png"), title=f"{name} - {label}", kind=name))
    return CaseReport(case_id=cid, decision=_decision(float(s.max()), thr), score=float(s.max()), threshold=thr,
                      method=", ".join(methods), figures=figs,
                      details={"items": len(x), "items explained": len(order)})


def _middle_slice(item: np.ndarray, mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2D view of one item: itself (2D) or the axial slice where the map is largest (3D)."""
    if item.ndim == 3:
        return (item[0] if item.shape[0] == 1 else np.moveaxis(item[:3], 0, -1)), mp
    z = int(np.argmax(np.abs(mp).reshape(-1, mp.shape[-1]).sum(0)))
    return _axial_view(item[0, ..., z]), _axial_view(mp[..., z])


def _explain_image(det, p, out, *, methods, cid, normalise, top_k, explain_kw, prepare=None) -> CaseReport:
    from medad.io.images import read_image

    if prepare is not None:  # the model's own preprocessing (frame-screening models)
        rec = read_image(p, grey=False)
        x = _normalise(prepare(rec.data), normalise)
        h, w = x.shape[2:]
    else:
        rec = read_image(p, grey=_channels(det) == 1)
        c, h, w = _item_shape(det, (_channels(det) or 1, *rec.data.shape[:2]))
        img = rec.data if rec.data.ndim == 3 else rec.data[..., None]
        x0 = np.moveaxis(img, -1, 0)[None].astype(np.float32)
        if x0.shape[1] != c:
            raise InputError(f"image has {x0.shape[1]} channels, the model expects {c}", p)
        x = _normalise(_resize(x0, (h, w)), normalise)
    score, thr, panels = _single_item_panels(det, x, methods, explain_kw)
    figs = []
    for name, mp in panels:
        back = _resize(mp[None, None], rec.data.shape[:2])[0, 0]
        with atomic_path(out / f"{name}.npy") as tmp:  # temp name ends in .npy: np.save keeps it
            np.save(tmp, back)
        _map_overlay(rec.data, back, out / f"{name}.png", name, det, _title(cid, name, score, thr))
        figs.append(Figure(png=str(out / f"{name}.png"), title=name, kind=name))
    return CaseReport(case_id=cid, decision=_decision(score, thr), score=score, threshold=thr,
                      method=", ".join(methods), figures=figs,
                      details={"image size": f"{rec.data.shape[1]} x {rec.data.shape[0]}",
                               "model input size": f"{w} x {h}"})


def _explain_volume_slices(det, p, out, *, methods, cid, normalise, top_k, explain_kw) -> CaseReport:
    from medad.explain import METHODS
    from medad.io.volumes import read_volume, write_like

    rec = read_volume(p)
    c, h, w = _item_shape(det, (1, *rec.data.shape[:2]))
    if c != 1:
        raise InputError(f"the model expects {c}-channel slices; a volume gives 1 channel", p)
    vol = rec.data
    slices = np.moveaxis(vol, 2, 0)[:, None]  # axial slices (Z, 1, X, Y)
    xs = _normalise(_resize(slices, (h, w)), normalise)
    s, amap = _scores(det, xs)
    thr = getattr(det, "threshold_", None)
    top = np.argsort(-s)[:top_k]
    z_best = int(top[0])
    figs: list[Figure] = []
    notes = {}
    panels = [("anomaly_map", amap)] if amap is not None else []
    for m in methods:
        idx = np.arange(len(xs)) if METHODS[m][0] else top
        maps = np.zeros((len(xs), h, w), np.float32)
        maps[idx] = _explain(det, xs[idx], m, explain_kw, 2)
        if not METHODS[m][0]:
            notes[f"{m} computed on"] = f"the {len(idx)} highest-scoring slices (others left at 0)"
        panels.append((m, maps))
    for name, maps in panels:
        back = np.moveaxis(_resize(maps[:, None], vol.shape[:2])[:, 0], 0, 2)  # (X, Y, Z) on the RAS grid
        write_like(back.astype(np.float32), rec, out / f"{name}.nii.gz")
        _map_overlay(_axial_view(vol[..., z_best]), _axial_view(back[..., z_best]), out / f"{name}.png", name, det,
                     _title(cid, f"{name}, axial slice {z_best}", float(s[z_best]), thr), oriented=True)
        figs.append(Figure(png=str(out / f"{name}.png"),
                           title=f"{name} on the most abnormal axial slice ({z_best}); 3D map in {name}.nii.gz",
                           kind=name))
    return CaseReport(case_id=cid, decision=_decision(float(s.max()), thr), score=float(s.max()), threshold=thr,
                      method=", ".join(methods), figures=figs,
                      details={"volume shape": "x".join(map(str, vol.shape)), "slices": len(xs),
                               "case score": "maximum over axial slices",
                               "slices above threshold": int((s > thr).sum()) if thr is not None else "–", **notes})


def _explain_volume_3d(det, p, out, *, methods, cid, normalise, top_k, explain_kw) -> CaseReport:
    from medad.io.volumes import read_volume, write_like

    rec = read_volume(p)
    c, *size = det.in_shape_
    x = _normalise(_resize(rec.data[None, None], size), normalise)
    if c != 1:
        x = np.repeat(x, c, axis=1)
    score, thr, panels = _single_item_panels(det, x, methods, explain_kw)
    figs = []
    for name, mp in panels:
        back = _resize(mp[None, None], rec.data.shape)[0, 0]
        write_like(back.astype(np.float32), rec, out / f"{name}.nii.gz")
        img, m2 = _middle_slice(rec.data[None], back)
        _map_overlay(img, m2, out / f"{name}.png", name, det, _title(cid, name, score, thr), oriented=True)
        figs.append(Figure(png=str(out / f"{name}.png"), title=f"{name}; 3D map in {name}.nii.gz", kind=name))
    return CaseReport(case_id=cid, decision=_decision(score, thr), score=score, threshold=thr,
                      method=", ".join(methods), figures=figs,
                      details={"volume shape": "x".join(map(str, rec.data.shape))})


def _explain_signal(det, p, out, *, sfreq, methods, cid, normalise, top_k, explain_kw) -> CaseReport:
    from medad.io.signals import read_signal

    rec = read_signal(p, sfreq=sfreq)
    c, win = det.in_shape_
    if rec.n_channels != c:
        raise InputError(f"recording has {rec.n_channels} channels, the model expects {c}", p)
    n_win = rec.n_times // win
    if n_win == 0:
        raise InputError(f"recording has {rec.n_times} samples, shorter than one model window ({win})", p)
    xw = np.stack([rec.data[:, i * win:(i + 1) * win] for i in range(n_win)]).astype(np.float32)
    xw = _normalise(xw, normalise)
    s, _ = _scores(det, xw)
    thr = getattr(det, "threshold_", None)
    sf = float(rec.sfreq)
    flagged = np.flatnonzero(s > thr) if thr is not None else np.array([], int)
    spans = [(i * win / sf, (i + 1) * win / sf, 1.0) for i in flagged]
    top = np.argsort(-s)[:top_k]
    figs = []
    for m in methods:
        attr = np.zeros((c, n_win * win), np.float32)
        maps = _explain(det, xw[top], m, explain_kw, 1)
        for i, mp in zip(top, maps):
            attr[:, i * win:(i + 1) * win] = np.abs(mp)[None]
        save_signal_plot(rec.data[:, :n_win * win], sf, out / f"{m}.png", spans=spans, attribution=attr,
                         ch_names=_channel_names(rec.ch_names, p), title=_title(cid, m, float(s.max()), thr),
                         t0=0.0, units=_signal_units(rec))
        figs.append(Figure(png=str(out / f"{m}.png"),
                           title=f"{m}: attribution on the {len(top)} highest-scoring windows", kind="signal",
                           note=SIGNAL_SPANS_NOTE if spans else None))
    return CaseReport(case_id=cid, decision=_decision(float(s.max()), thr), score=float(s.max()), threshold=thr,
                      method=", ".join(methods), figures=figs,
                      details={"duration (s)": round(rec.duration, 2), "sampling rate (Hz)": sf,
                               "windows": int(n_win), "window (s)": round(win / sf, 3),
                               "windows above threshold": len(flagged) if thr is not None else "–",
                               "flagged spans (s)": ", ".join(f"{a:.1f}-{b:.1f}" for a, b, _ in spans[:20]) or "none",
                               "case score": "maximum over windows"})


def explain_windows(det, windows: np.ndarray, starts: Sequence[float], sfreq: float, out_dir: str | Path, *,
                    methods: Sequence[str] | None, cid: str, score: float, threshold: float | None, decision: str,
                    ch_names: Sequence[str] | None = None, details: dict[str, Any] | None = None,
                    source: str | None = None, identity: dict[str, str] | None = None, item: str = "window",
                    score_name: str = "score", no_threshold: str = "no threshold",
                    units: str | Sequence[str | None] | None = None, **explain_kw) -> CaseReport:
    """Explain already preprocessed windows ``(N, C, T)`` of one recording (e.g. the highest-scoring
    windows of a screening model, cut by its own preprocessing) and write one signal plot per
    method and window, ``case.json`` and ``report.html`` into ``out_dir``. ``starts`` are the
    windows' start times in the recording (s); ``score``/``threshold``/``decision`` are the
    recording's, as the pipeline decided them; ``item`` names what each row is in titles
    (``"window"``, or ``"beat"`` for ECG beat mode); ``score_name`` what the plotted score is and
    ``no_threshold`` what titles say when ``threshold`` is None (e.g. a part of a fused score);
    ``units``: the windows' unit(s) (default ``a.u.``: screening windows are normalised). The
    figures are listed in time order, each on the recording's time axis."""
    from medad.explain import canonical_method

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [canonical_method(m) for m in (methods or default_methods(det))]
    win_scores = det.score(windows).score
    order = np.argsort(np.asarray(starts, dtype=np.float64), kind="stable")  # explained by score, shown by time
    names = _channel_names(ch_names, source)
    figs = []
    for m in methods:
        maps = _explain(det, windows, m, explain_kw, 1)
        for k in order:
            t0, w, s, mp = float(starts[k]), windows[k], win_scores[k], maps[k]
            f = out / f"{m}_{t0:.1f}s.png"
            t1 = t0 + w.shape[-1] / sfreq
            save_signal_plot(w, sfreq, f, attribution=np.abs(mp), ch_names=names, t0=t0, units=units,
                             title=_title(cid, f"{m}, {item} {t0:.1f}-{t1:.1f} s",
                                          float(s), threshold, score_name, no_threshold))
            figs.append(Figure(png=str(f), title=f"{m}: {item} {t0:.1f}-{t1:.1f} s (preprocessed as screened)",
                               kind="signal"))
    case = CaseReport(case_id=cid, decision=decision, score=score, threshold=threshold, method=", ".join(methods),
                      model=type(det).__name__, source=source, figures=figs, details=dict(details or {}),
                      identity=dict(identity or {}))
    write_case(out, case)
    write_case_report(out / "report.html", case)
    return case
