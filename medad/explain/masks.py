"""Feature masks for the perturbation methods (KernelSHAP, LIME): groups of input positions that
are switched on and off together -- superpixels (2D), supervoxels (3D) or time segments (1D).
One function for every dimensionality."""

from __future__ import annotations

import numpy as np

from medad.errors import InputError


def segment_mask(item: np.ndarray, spatial_dims: int, n_segments: int = 64, *,
                 compactness: float = 1.0, per_channel: bool = False) -> np.ndarray:
    """Integer labels ``0..K-1`` grouping the positions of one item ``(C, *spatial)``.

    * 1D: ``n_segments`` equal consecutive time segments (edges of clinical interest such as a
      seizure onset are not known in advance, so equal segments are the neutral choice).
    * 2D / 3D: SLIC superpixels / supervoxels (scikit-image) on the item scaled to [0, 1] by
      robust percentiles, all channels together; ``compactness`` trades shape regularity for
      following intensity edges.

    Returns ``(*spatial)`` labels, or ``(C, *spatial)`` with distinct labels per channel when
    ``per_channel`` (e.g. to ask which EEG channel mattered).
    """
    item = np.asarray(item, dtype=np.float32)
    if item.ndim != spatial_dims + 1:
        raise InputError(f"expected one item (C, *spatial) with {spatial_dims} spatial axes, got {item.shape}")
    spatial = item.shape[1:]
    n_segments = max(1, int(n_segments))
    if spatial_dims == 1:
        t = spatial[0]
        labels = (np.arange(t) * min(n_segments, t) // t).astype(np.int64)
    else:
        from skimage.segmentation import slic

        lo, hi = np.percentile(item, [1, 99])
        img = np.clip((item - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        img = np.moveaxis(img, 0, -1)  # channels last for skimage
        labels = slic(img.astype(np.float64), n_segments=n_segments, compactness=compactness,
                      channel_axis=-1, start_label=0, enforce_connectivity=True)
        if len(np.unique(labels)) < max(2, n_segments // 4):
            # SLIC collapses on tiny or flat inputs; a regular grid keeps the explanation usable.
            labels = grid_mask(spatial, n_segments)
    if labels.max() < 1 and np.prod(spatial) > 1:
        labels = grid_mask(spatial, max(n_segments, 2))  # one segment cannot be explained
    _, labels = np.unique(labels, return_inverse=True)  # consecutive 0..K-1, as Captum expects
    labels = labels.reshape(spatial).astype(np.int64)
    if per_channel:
        k = int(labels.max()) + 1
        labels = np.stack([labels + c * k for c in range(item.shape[0])])
    return labels


def grid_mask(spatial: tuple[int, ...], n_segments: int) -> np.ndarray:
    """Regular blocks: about ``n_segments`` labels over a grid of ``spatial`` shape."""
    g = max(1, int(round(n_segments ** (1.0 / len(spatial)))))
    axes = [np.minimum(np.arange(n) * min(g, n) // n, g - 1) for n in spatial]
    labels = np.zeros(spatial, dtype=np.int64)
    for a, idx in enumerate(np.meshgrid(*axes, indexing="ij")):
        labels = labels * g + idx
    return labels
