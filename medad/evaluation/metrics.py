"""Metrics for scores and maps. Every function takes "higher score = more abnormal"."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from medad.errors import InputError


def _labels_scores(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InputError(f"{y.size} labels but {s.size} scores")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinite values")
    return y, s


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(y_true, y_score)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def auprc(y_true, y_score) -> float:
    """Area under the precision-recall curve (average precision); NaN without positives."""
    from sklearn.metrics import average_precision_score

    y, s = _labels_scores(y_true, y_score)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def dice(pred, target) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(target, dtype=bool)
    if p.shape != t.shape:
        raise InputError(f"mask shapes differ: {p.shape} vs {t.shape}")
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def best_dice_threshold(y_true, y_score, n_thresholds: int = 200) -> tuple[float, float]:
    """(best Dice, its threshold) over score quantiles -- chosen on the data it is reported on,
    so it is OPTIMISTIC: report it only beside a healthy-calibrated figure."""
    y, s = _labels_scores(y_true, y_score)
    if not y.any():
        return float("nan"), float("nan")
    # candidate thresholds: quantiles of the upper part of the score distribution
    qs = np.quantile(s, np.linspace(max(0.0, 1.0 - 4.0 * y.mean()), 1.0, n_thresholds, endpoint=False))
    order = np.argsort(s)
    s_sorted = s[order]
    y_sorted = y[order]
    # positives above each threshold via cumulative sums (fast for millions of voxels)
    cum_pos = np.cumsum(y_sorted[::-1])[::-1]
    n_pos = y.sum()
    best = (0.0, float(qs[0]))
    for q in np.unique(qs):
        idx = np.searchsorted(s_sorted, q, side="right")
        pred_pos = len(s) - idx
        tp = cum_pos[idx] if idx < len(s) else 0
        d = 2.0 * tp / (pred_pos + n_pos) if (pred_pos + n_pos) else 1.0
        if d > best[0]:
            best = (float(d), float(q))
    return best


def sensitivity_specificity(y_true, y_pred) -> dict[str, float]:
    """Sensitivity, specificity, precision, accuracy, F1 of boolean decisions."""
    y = np.asarray(y_true).ravel().astype(bool)
    p = np.asarray(y_pred).ravel().astype(bool)
    if y.shape != p.shape:
        raise InputError(f"{y.size} labels but {p.size} decisions")
    tp = int(np.sum(p & y)); tn = int(np.sum(~p & ~y)); fp = int(np.sum(p & ~y)); fn = int(np.sum(~p & y))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    return {"sensitivity": sens, "specificity": spec, "precision": prec,
            "accuracy": (tp + tn) / len(y), "f1": f1, "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def per_subject(subject_ids: Sequence, y_true, y_score, *, reduce: str = "max") -> tuple[list, np.ndarray, np.ndarray]:
    """Aggregate item scores to one score per subject (``max`` or ``mean``); a subject is
    abnormal when any of its items is. Returns (subjects, labels, scores)."""
    ids = np.asarray(subject_ids)
    y, s = _labels_scores(y_true, y_score)
    if len(ids) != len(y):
        raise InputError(f"{len(ids)} subject ids for {len(y)} items")
    fn = {"max": np.max, "mean": np.mean, "median": np.median}.get(reduce)
    if fn is None:
        raise InputError(f"unknown reduction {reduce!r}")
    subjects = list(dict.fromkeys(ids.tolist()))
    ys = np.array([y[ids == u].any() for u in subjects])
    ss = np.array([fn(s[ids == u]) for u in subjects])
    return subjects, ys, ss


def bootstrap_ci(metric: Callable[..., float], *arrays, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, groups: Sequence | None = None) -> tuple[float, float, float]:
    """(estimate, low, high) percentile bootstrap interval of ``metric(*arrays)``.

    With ``groups`` (e.g. subject ids) whole groups are resampled, which is the honest choice
    when items of one subject are correlated.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    est = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    vals = []
    if groups is not None:
        g = np.asarray(groups)
        uniq = np.unique(g)
        members = {u: np.flatnonzero(g == u) for u in uniq}
    for _ in range(n_boot):
        if groups is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([members[u] for u in rng.choice(uniq, len(uniq), replace=True)])
        v = metric(*[a[idx] for a in arrays])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return est, float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)


def cross_calibration(normal_groups: Sequence[np.ndarray], fpr: float, *, min_groups: int, what: str,
                      decide: Callable[[int, float], bool] | None = None) -> dict[str, Any]:
    """Specificity of a threshold calibrated on held-out normal data, measured on normal data that
    did not set it (2-fold cross-calibration).

    The model's threshold comes from ALL held-out normal items, so the share of them it flags is
    ``fpr`` by construction: an optimistic specificity. Here the groups (held-out normal
    recordings, or frames; each an array of item scores) are split in two halves in their given
    order (first half / second half: a video's contiguous block stays two contiguous blocks); a
    threshold is set at ``fpr`` on the items of one half and measured on the other half, and the
    other way round. ``normal_flagged``: share of the measured half's items above the other half's
    threshold; ``specificity``: share of the measured half's groups not decided abnormal
    (``decide(k, threshold)``: is group ``k`` abnormal at that threshold; default: any of its
    items above it). Both are the
    mean of the two folds; ``n`` groups are measured in all (each once). With fewer than
    ``min_groups`` groups nothing is estimated: the figures are ``None`` and ``specificity_note``
    says why (``what``: the groups' plural name, e.g. "recordings")."""
    from medad.detectors.base import threshold_at_fpr

    n = len(normal_groups)
    if n < min_groups:
        return {"specificity": None, "normal_flagged": None, "n": n, "specificity_method": None,
                "specificity_note": f"specificity not estimated: {n} held-out normal {what[:-1] if n == 1 else what} "
                                    f"(at least {min_groups} needed for 2-fold cross-calibration); add normal {what}"}
    decide = decide or (lambda k, t: bool(np.any(np.asarray(normal_groups[k]) > t)))
    half = n // 2
    halves = (range(half), range(half, n))
    folds = []
    for cal, measured in (halves, halves[::-1]):
        t = threshold_at_fpr(np.concatenate([normal_groups[k] for k in cal]), fpr)
        items = np.concatenate([normal_groups[k] for k in measured])
        folds.append({"threshold": float(t), "n_calibration": len(cal), "n_measured": len(measured),
                      "normal_flagged": float(np.mean(items > t)),
                      "specificity": float(np.mean([not decide(k, t) for k in measured]))})
    return {"specificity": float(np.mean([f["specificity"] for f in folds])),
            "normal_flagged": float(np.mean([f["normal_flagged"] for f in folds])), "n": n,
            "specificity_method": f"2-fold cross-calibration on held-out normal {what}: threshold at fpr={fpr:g} "
                                  f"from one half, measured on the other half, mean of both folds",
            "folds": folds}


def calibration_warning(n_items: int, val_names: Sequence[str], fpr: float, val_fraction: float,
                        unit: str = "windows", single: bool = False, *, group: str | None = "recording",
                        fpr_name: str = "window_fpr") -> str | None:
    """What is wrong with a threshold calibrated on ``n_items`` held-out normal items (``unit``,
    plural) at ``fpr`` (the setting ``fpr_name``, option ``--fpr``), and what to do -- or ``None``
    when nothing is. Too few items (under ``2 / fpr``: the threshold is then one of the few highest
    scores, or beyond 1 / fpr simply the highest): other normal items are then likely to be flagged.

    ``group``: what the items come from and what is held out (``"recording"``: the items are the
    windows of the held-out recordings ``val_names``; a single one is a problem too, as it shows
    its own normal variation only; ``single``: the items are the last ones of the only training
    recording). ``None``: the items themselves are held out (a share ``val_fraction`` of them,
    e.g. frames); ``val_names`` and ``single`` are then unused."""
    need = math.ceil(2 / fpr)
    problems = []
    if n_items * fpr < 1:  # the threshold is then simply the highest held-out score
        problems.append(f"{n_items} held-out normal {unit} cannot resolve {fpr_name}={fpr:g} (needs >= "
                        f"{math.ceil(1 / fpr)}, and >= {need} for a stable threshold)")
    elif n_items < need:
        problems.append(f"only {n_items} held-out normal {unit} calibrate {fpr_name}={fpr:g} (a stable threshold "
                        f"needs >= 2 / {fpr_name} = {need})")
    if group is not None and single:
        problems.append(f"they are the last {unit} of the only training {group} ({val_names[0]}), not a "
                        f"held-out {group}")
    elif group is not None and len(val_names) == 1:
        problems.append(f"they all come from one held-out {group} ({val_names[0]})")
    if not problems:
        return None
    if group is None:  # the items are held out themselves: about need / val_fraction of them in all
        what, k = unit, need
    else:
        per = max(n_items / max(len(val_names), 1), 1.0)  # items per held-out group
        what, k = f"{group}s", max(2, math.ceil(need / per))  # held-out groups wanted
    if val_fraction > 0:
        n = k + 1
        while max(int(round(val_fraction * n)), 1) < k:
            n += 1
        todo = f"add normal {what} (about {n} in all, so that {k} are held out at val_fraction={val_fraction:g})"
    else:
        todo = f"add normal {what} and set val_fraction (e.g. 0.2) so that {k} are held out"
    return ("; ".join(problems) + f". The threshold reflects too little normal variation, so normal {what} "
            f"are likely to be flagged abnormal: {todo}, or raise {fpr_name} (--fpr)")
