"""Record types: one per kind of data. Arrays plus what is needed to put results back.

* :class:`VolumeRecord` -- a 3D scan in RAS voxel order with its affine, plus the original
  affine/orientation so maps can be written back on the input's own grid.
* :class:`ImageRecord` -- a 2D image (grey ``(H, W)`` or colour ``(H, W, 3)``).
* :class:`SignalRecord` -- a multichannel recording ``(channels, time)`` with sampling rate,
  channel names, annotations and ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class VolumeRecord:
    """A 3D volume.

    Attributes:
        data: voxel array ``(X, Y, Z)``, float32, in RAS voxel order (``affine`` maps it to world).
        affine: 4x4 voxel-to-world (RAS+ mm) matrix of ``data``.
        path: where it came from.
        original_affine: affine of the file's own voxel grid (before reorientation to RAS).
        original_shape: shape of the file's own voxel grid.
        meta: free-form header facts (modality, series UID, ...). Never holds patient identity
            unless a reader was asked for it.
        subject_id: subject identifier (from the dataset adapter or the file name).
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    original_affine: np.ndarray | None = None
    original_shape: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    subject_id: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class ImageRecord:
    """A 2D image: ``(H, W)`` grey or ``(H, W, 3)`` RGB, float32 in the file's own range."""

    data: np.ndarray
    path: Path | None = None
    label: str | int | None = None
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    subject_id: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class Annotation:
    """A labelled time span (seconds from the start of the recording)."""

    onset: float
    duration: float
    description: str
    channel: str | None = None


@dataclass
class SignalRecord:
    """A recording.

    Attributes:
        data: ``(channels, time)`` float32.
        sfreq: sampling rate in Hz.
        ch_names: one name per channel.
        annotations: labelled spans / events.
        record_id: identifier of the recording.
        subject_id: identifier of the person (may equal ``record_id`` when unknown).
        label: recording-level label where the layout gives one.
        path: where it came from.
        meta: header facts (units, device); no patient identity unless asked.
    """

    data: np.ndarray
    sfreq: float
    ch_names: list[str]
    annotations: list[Annotation] = field(default_factory=list)
    record_id: str | None = None
    subject_id: str | None = None
    label: str | int | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_times(self) -> int:
        return int(self.data.shape[1])

    @property
    def duration(self) -> float:
        return self.n_times / float(self.sfreq)
