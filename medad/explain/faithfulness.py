"""Does a map point at what the model actually uses? Deletion and insertion curves (Petsiuk et al.,
RISE) with a random-map control.

* Deletion: positions are replaced by the baseline in order of decreasing attribution; the
  explained scalar should fall fast, so a *lower* area under the curve is better.
* Insertion: starting from the baseline, positions are restored in the same order; the scalar
  should rise fast, so a *higher* area is better.

The same curves are computed for random maps (independent per position, and spatially smooth
random maps, which remove contiguous regions like Grad-CAM does) and the margins are reported.
For classifiers the curve is the class probability; for detectors it is the anomaly score divided
by the input's own score (raw scores have no common scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.errors import InputError
from medad.explain.models import as_scalar_model, baseline_tensor, evaluating_on, model_device, spatial_dims_of


def _order(attr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices by decreasing attribution, ties broken at random (superpixel maps have many)."""
    flat = attr.ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def _curves(fn, x, base, order: np.ndarray, steps: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scalar after deleting / inserting the first k/steps of ``order``, k = 0..steps."""
    import torch

    n = order.size
    spatial = x.shape[2:]
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    ranks_t = torch.as_tensor(ranks.reshape(spatial), device=x.device)
    cuts = [int(round(n * k / steps)) for k in range(steps + 1)]
    out = {"del": [], "ins": []}
    with torch.no_grad():
        for i in range(0, len(cuts), batch_size):
            ks = torch.as_tensor(cuts[i:i + batch_size], device=x.device)
            # (B, 1, *spatial): True where that position is already deleted at step k
            gone = (ranks_t[None] < ks.view(-1, *[1] * len(spatial)))[:, None]
            out["del"].append(fn(torch.where(gone, base, x)).float().cpu().numpy())
            out["ins"].append(fn(torch.where(gone, x, base)).float().cpu().numpy())
    return np.concatenate(out["del"]), np.concatenate(out["ins"])


def _auc(curve: np.ndarray) -> float:
    xs = np.linspace(0.0, 1.0, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(xs)) / 2.0)


def _smooth_random(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.random(shape), sigma=max(1.0, min(shape) / 16.0))


def deletion_insertion(model: Any, x, attribution: np.ndarray, *, target: int | None = None,
                       baseline: float | np.ndarray = 0.0, steps: int = 20, spatial_dims: int | None = None,
                       n_random: int = 3, batch_size: int = 32, seed: int = 0,
                       device: str | None = None) -> dict[str, Any]:
    """Deletion and insertion AUC of ``attribution`` for one item ``x`` ``(C, *spatial)``, beside
    the mean over ``n_random`` random maps of each kind (see module doc). ``baseline`` is the
    value a deleted position takes: a scalar, or an array broadcastable to the item (e.g. the
    mean tissue value inside the brain and the background value outside it).

    Returns a dict with ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``,
    ``random_insertion_auc``, ``smooth_random_deletion_auc``, ``smooth_random_insertion_auc``,
    ``deletion_margin`` (random minus method: positive = better than random),
    ``insertion_margin`` (method minus random), the same two against smooth random maps,
    ``scale`` and the raw ``deletion_curve`` / ``insertion_curve``.
    """
    import torch

    from medad.utils import get_device

    sd = spatial_dims or spatial_dims_of(model)
    xt = torch.as_tensor(np.asarray(x)).float()
    if sd is None or xt.ndim != sd + 1:
        raise InputError(f"expected one item (C, *spatial), got shape {tuple(xt.shape)} (spatial_dims={sd})")
    attr = np.asarray(attribution, dtype=np.float64)
    if attr.shape != tuple(xt.shape[1:]):
        raise InputError(f"attribution shape {attr.shape} does not match the input's spatial shape {tuple(xt.shape[1:])}")
    dev = get_device(device)
    xt = xt[None].to(dev)
    wrapped = as_scalar_model(model, xt.to(model_device(model, dev)), target)
    with evaluating_on(wrapped, dev):
        return _faithfulness(wrapped, xt, attr, baseline_tensor(xt, baseline), steps, n_random, batch_size, seed)


def _faithfulness(wrapped, xt, attr: np.ndarray, base, steps: int, n_random: int, batch_size: int,
                  seed: int) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        f_x = float(wrapped.probability(xt)[0])
    if wrapped.kind == "classifier":
        scale, fn = "probability", wrapped.probability
    elif abs(f_x) < 1e-12:
        scale, fn = "raw score (the input scores 0)", wrapped.probability
    else:
        # Relative to the input's own score. Not (f - f_baseline) / (f_x - f_baseline): the blank
        # baseline often scores close to the input (e.g. a probability near 1 for both), and that
        # ratio then explodes.
        scale = "score relative to the input's score (input = 1)"

        def fn(v):
            return wrapped.probability(v) / f_x

    rng = np.random.default_rng(seed)
    d, i = _curves(fn, xt, base, _order(attr, rng), steps, batch_size)
    res: dict[str, Any] = {"deletion_auc": _auc(d), "insertion_auc": _auc(i), "scale": scale,
                           "deletion_curve": d.tolist(), "insertion_curve": i.tolist()}
    for name, make in (("random", lambda: rng.random(attr.shape)),
                       ("smooth_random", lambda: _smooth_random(attr.shape, rng))):
        dr, ir = [], []
        for _ in range(max(1, n_random)):
            a, b = _curves(fn, xt, base, _order(make(), rng), steps, batch_size)
            dr.append(_auc(a))
            ir.append(_auc(b))
        res[f"{name}_deletion_auc"] = float(np.mean(dr))
        res[f"{name}_insertion_auc"] = float(np.mean(ir))
    res["deletion_margin"] = res["random_deletion_auc"] - res["deletion_auc"]
    res["insertion_margin"] = res["insertion_auc"] - res["random_insertion_auc"]
    res["smooth_deletion_margin"] = res["smooth_random_deletion_auc"] - res["deletion_auc"]
    res["smooth_insertion_margin"] = res["insertion_auc"] - res["smooth_random_insertion_auc"]
    return res


def share_inside(attribution: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the positive attribution mass that falls inside ``region`` (e.g. an expert
    lesion mask or a seizure segment). Compare with the region's share of the area."""
    a = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    r = np.asarray(region, dtype=bool)
    if a.shape != r.shape:
        raise InputError(f"attribution shape {a.shape} does not match region shape {r.shape}")
    tot = a.sum()
    return float(a[r].sum() / tot) if tot > 0 else float("nan")
