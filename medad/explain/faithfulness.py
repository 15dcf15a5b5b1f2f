"""Does a map point at what the model actually uses? Deletion and insertion curves (Petsiuk et al.,
RISE) with a random-map control.

* Deletion: positions are replaced by the baseline in order of decreasing attribution; the
  explained scalar should fall fast, so a *lower* area under the curve is better.
* Insertion: starting from the baseline, positions are restored in the same order; the scalar
  should rise fast, so a *higher* area is better.

The same curves are computed for random maps (independent per position, and spatially smooth
random maps, which remove contiguous regions like Grad-CAM does) and the margins are reported.
For classifiers and supervised detectors the curve follows the log-odds of the class / abnormal
probability by default (the probability saturates; see :func:`deletion_insertion`), with the
probability-scale AUCs beside; for other detectors it is the anomaly score divided by the
input's own score (raw scores have no common scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.errors import InputError
from medad.explain.models import as_scalar_model, baseline_tensor, evaluating_on, model_device, spatial_dims_of


def _block_ids(shape: tuple[int, ...], patch: int) -> tuple[np.ndarray, int]:
    """Label of the ``patch``-sided block (per spatial axis) of every position, and the count."""
    if patch <= 1:
        return np.arange(int(np.prod(shape))).reshape(shape), int(np.prod(shape))
    per_axis = [-(-n // patch) for n in shape]
    ids = np.zeros(shape, dtype=np.int64)
    for a, idx in enumerate(np.meshgrid(*[np.arange(n) // patch for n in shape], indexing="ij")):
        ids = ids * per_axis[a] + idx
    return ids, int(np.prod(per_axis))


def _block_ranks(attr: np.ndarray, blocks: np.ndarray, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Rank of each position's block by decreasing mean attribution in the block (ties at random:
    superpixel maps have many); ``(*spatial)`` ints, 0 = deleted first."""
    flat = blocks.ravel()
    size = np.bincount(flat, minlength=n_blocks)
    mean = np.bincount(flat, weights=attr.ravel(), minlength=n_blocks) / np.maximum(size, 1)
    order = np.lexsort((rng.random(n_blocks), -mean))
    rank = np.empty(n_blocks, dtype=np.int64)
    rank[order] = np.arange(n_blocks)
    return rank[blocks]


def _curves(fn, x, base, ranks: np.ndarray, n_blocks: int, steps: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scalar after deleting / inserting the first k/steps of the blocks (in ``ranks`` order), k = 0..steps."""
    import torch

    spatial = x.shape[2:]
    ranks_t = torch.as_tensor(ranks.reshape(spatial), device=x.device)
    cuts = [int(round(n_blocks * k / steps)) for k in range(steps + 1)]
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


OUTPUTS = ("log_odds", "probability")


def deletion_insertion(model: Any, x, attribution: np.ndarray, *, target: int | None = None,
                       baseline: float | np.ndarray = 0.0, steps: int = 20, spatial_dims: int | None = None,
                       n_random: int = 3, batch_size: int = 32, seed: int = 0, output: str = "log_odds",
                       patch: int = 1, device: str | None = None) -> dict[str, Any]:
    """Deletion and insertion AUC of ``attribution`` for one item ``x`` ``(C, *spatial)``, beside
    the mean over ``n_random`` random maps of each kind (see module doc). ``baseline`` is the
    value a deleted position takes: a scalar, or an array broadcastable to the item (e.g. the
    mean tissue value inside the brain and the background value outside it).

    ``output``: what the curves follow when the model outputs a probability (classifiers,
    supervised detectors): ``"log_odds"`` (default; log p/(1-p) from the logits) or
    ``"probability"``. A probability saturated at 1 stays there while most of the input is
    deleted, so every deletion order gives the same flat curve and the test cannot tell a good
    map from a random one; the log-odds keep falling. Detectors with an unbounded score use the
    score divided by the input's own score either way.

    ``patch``: delete in blocks of ``patch`` positions per spatial axis (region perturbation,
    Samek et al. 2017), ranked by the mean attribution in the block; the random controls are
    random block orders. ``1`` deletes single pixels / samples. Scattering single deleted pixels
    or samples everywhere is itself a strong, unnatural perturbation (a CNN's output often
    collapses under it whatever the order), so a random *pixel* order is a control that a map of
    regions (Grad-CAM, superpixels) cannot fairly be held to; blocks put every map and the random
    control on the same footing.

    Returns a dict with ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``,
    ``random_insertion_auc``, ``smooth_random_deletion_auc``, ``smooth_random_insertion_auc``,
    ``deletion_margin`` (random minus method: positive = better than random),
    ``insertion_margin`` (method minus random), the same two against smooth random maps
    (``smooth_deletion_margin``, ``smooth_insertion_margin``), ``scale`` (what the curves
    follow, in words), the raw ``deletion_curve`` / ``insertion_curve``, and, when the curves
    follow the log-odds, the same AUC and margin keys on the probability scale under
    ``"probability"`` (from the same forward passes).
    """
    import torch

    from medad.utils import get_device

    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
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
        return _faithfulness(wrapped, xt, attr, baseline_tensor(xt, baseline), steps, n_random, batch_size, seed,
                             output, max(1, int(patch)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow warnings


def _faithfulness(wrapped, xt, attr: np.ndarray, base, steps: int, n_random: int, batch_size: int,
                  seed: int, output: str, patch: int) -> dict[str, Any]:
    import torch

    to_prob = None
    if wrapped.is_probability:
        if output == "log_odds":
            scale, fn, to_prob = "log-odds of the probability (logits, before the sigmoid/softmax)", wrapped.log_odds, _sigmoid
        else:
            scale, fn = "probability", wrapped.probability
    else:
        with torch.no_grad():
            f_x = float(wrapped(xt)[0])
        if abs(f_x) < 1e-12:
            scale, fn = "raw score (the input scores 0)", wrapped.forward
        else:
            # Relative to the input's own score. Not (f - f_baseline) / (f_x - f_baseline): the
            # blank baseline often scores close to the input, and that ratio then explodes.
            scale = "score relative to the input's score (input = 1)"

            def fn(v):
                return wrapped(v) / f_x

    rng = np.random.default_rng(seed)
    blocks, nb = _block_ids(attr.shape, patch)

    def run(a):
        return _curves(fn, xt, base, _block_ranks(a, blocks, nb, rng), nb, steps, batch_size)

    curves = {"map": [run(attr)]}
    for name, make in (("random", lambda: rng.random(attr.shape)),
                       ("smooth_random", lambda: _smooth_random(attr.shape, rng))):
        curves[name] = [run(make()) for _ in range(max(1, n_random))]
    d, i = curves["map"][0]
    res: dict[str, Any] = {"scale": scale, "deletion_curve": d.tolist(), "insertion_curve": i.tolist()}
    res.update(_aucs(curves, None))
    if to_prob is not None:
        res["probability"] = _aucs(curves, to_prob)
    return res


def _aucs(curves: dict[str, list], transform) -> dict[str, float]:
    """AUCs and margins of the map's curves and the random controls (means over random maps)."""
    def auc(c):
        return _auc(c if transform is None else transform(c))

    d, i = curves["map"][0]
    res = {"deletion_auc": auc(d), "insertion_auc": auc(i)}
    for name in ("random", "smooth_random"):
        res[f"{name}_deletion_auc"] = float(np.mean([auc(a) for a, _ in curves[name]]))
        res[f"{name}_insertion_auc"] = float(np.mean([auc(b) for _, b in curves[name]]))
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
