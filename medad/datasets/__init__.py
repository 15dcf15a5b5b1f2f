"""Dataset adapters: a kind name -> a loader for one public layout (see ``../shared/data/README.md``).

``load_dataset(kind, root=None, data_root=None, **kwargs)`` imports the loader's module lazily, so
a missing or broken module of one area never breaks the others. Image/volume kinds return a
list of :class:`Item` (paths only; ``item.load()`` reads lazily). Signal kinds (in
:mod:`medad.datasets.signals`) return ``SignalRecord`` lists or a ``SignalSet``.

Every item carries a subject id; where a layout has no split, a seeded subject-wise split is
assigned (:func:`assign_splits`), so no subject lands in two splits.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medad.errors import ConfigError, InputError


@dataclass
class Item:
    """One dataset item: where it is and what is known about it (nothing is loaded).

    Attributes:
        path: the image or volume file (for BraTS: the chosen modality).
        subject_id: the person (or the best available grouping, e.g. COVID-CT figure/paper).
        label: class name from the layout (``None`` when the layout has none).
        split: ``"train"``/``"val"``/``"test"``/... from the layout or :func:`assign_splits`.
        mask_path: segmentation mask file, when the layout has one.
        extra: other facts (other modalities, brain mask, boxes, participant age/sex ...).
    """

    path: Path
    subject_id: str
    label: str | None = None
    split: str | None = None
    mask_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def load(self):
        """Read the item (a VolumeRecord or ImageRecord) with its subject id and label set."""
        from medad.io.dispatch import read_any

        rec = read_any(self.path)
        rec.subject_id = self.subject_id
        if hasattr(rec, "label"):
            rec.label = self.label
        return rec

    def load_mask(self) -> np.ndarray | None:
        """The mask as a boolean array on the item's grid (``None`` without a mask).

        Volume masks: label >= 1 (BraTS OTMultiClass: any tumour class); image masks (JPEG, so
        not exactly binary): grey value > 127.
        """
        if self.mask_path is None:
            return None
        from medad.io.dispatch import read_any
        from medad.io.records import VolumeRecord

        rec = read_any(self.mask_path)
        if isinstance(rec, VolumeRecord):
            # > 0.5, not > 0: label maps are integers, but some binary masks are stored as
            # float 0 / 0.99999997 (BraTS brainmask)
            return rec.data > 0.5
        d = rec.data if rec.data.ndim == 2 else rec.data.mean(axis=2)
        return d > 127


@dataclass(frozen=True)
class Kind:
    """Where a kind's loader lives and which folder under the data root it reads by default."""

    module: str
    function: str
    subdir: str | None = None
    description: str = ""


_IMG = "medad.datasets.images"
_SIG = "medad.datasets.signals"

KINDS: dict[str, Kind] = {
    "brats": Kind(_IMG, "load_brats", "mri/brats2015", "BraTS case folders (modalities, brainmask, labels)"),
    "nichart_flair": Kind(_IMG, "load_nichart_flair", "mri/nichart_flair", "NiChart FLAIR + WMH masks"),
    "ixi": Kind(_IMG, "load_ixi", "mri/ixi_t1_2mm", "IXI T1 NIfTI folder"),
    "nifti_folder": Kind(_IMG, "load_nifti_folder", None, "NIfTI files with optional mask folder"),
    "brain_tumor_4class": Kind(_IMG, "load_class_folders", "mri/brain_tumor_mri_4class",
                               "brain tumour MRI slices, class per folder"),
    "covid_ct": Kind(_IMG, "load_covid_ct", "ct/covid_ct_256", "COVID-CT slices, grouped by figure"),
    "class_folders": Kind(_IMG, "load_class_folders", None, "images in [split/]class folders"),
    "kvasir_seg": Kind(_IMG, "load_kvasir_seg", "endoscopy/kvasir_seg", "polyp images + masks"),
    "liver_tumor": Kind(_IMG, "load_liver_tumor", "ct/liver_tumor_slices", "liver CT slices + masks"),
    "lung_tumor": Kind(_IMG, "load_lung_tumor", "ct/lung_tumor_slices", "lung CT slices + masks"),
    "image_masks": Kind(_IMG, "load_image_mask_folders", None, "[split/]images + masks folders"),
    "wce_bleedgen": Kind(_IMG, "load_wce_bleedgen", "endoscopy/wce_bleedgen",
                         "capsule endoscopy, class folders + YOLO boxes"),
    # signal kinds: loaders written in medad.datasets.signals
    "bonn": Kind(_SIG, "load_bonn", "eeg/bonn", "Bonn EEG sets A-E"),
    "wang_chung": Kind(_SIG, "load_wang_chung", "eeg/wang_chung", "one patient's scalp EEG: pre-seizure, then seizure"),
    "heart_sounds": Kind(_SIG, "load_heart_sounds", "pcg/yaseen", "heart sounds, class per folder"),
    "physionet2016": Kind(_SIG, "load_physionet2016", "pcg/physionet2016_sample", "PhysioNet 2016 WAV + REFERENCE"),
    "wfdb_beats": Kind(_SIG, "load_wfdb_beats", "ecg/mitbih_subset", "WFDB records, beats around R peaks"),
    "ucr": Kind(_SIG, "load_ucr", "ecg/ucr/ecg200", "UCR text (label then samples)"),
}


def get_loader(kind: str) -> Callable[..., Any]:
    """The loader function of ``kind`` (imports its module now)."""
    if kind not in KINDS:
        raise InputError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    k = KINDS[kind]
    try:
        mod = importlib.import_module(k.module)
    except ImportError as e:
        raise ConfigError(f"dataset kind {kind!r} is not available: module {k.module} "
                          f"could not be imported ({e})") from None
    fn = getattr(mod, k.function, None)
    if fn is None:
        raise ConfigError(f"dataset kind {kind!r} is not available: {k.module}.{k.function} missing")
    return fn


def dataset_root(kind: str, root: str | Path | None = None, data_root: str | Path | None = None) -> Path:
    """Folder of a dataset: ``root`` if it exists (or exists under the data root), else the
    kind's default folder under the data root."""
    from medad.config import data_root as _data_root
    from medad.errors import ReadError

    if root is not None:
        r = Path(root)
        if r.is_dir():
            return r
        base = _data_root(data_root, required=False)
        if not r.is_absolute() and base is not None and (base / r).is_dir():
            return base / r
        raise ReadError("dataset folder not found", r)
    if kind not in KINDS:
        raise InputError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    sub = KINDS[kind].subdir
    if sub is None:
        raise InputError(f"dataset kind {kind!r} has no default folder: give the dataset root")
    r = _data_root(data_root) / sub
    if not r.is_dir():
        raise ReadError(f"{kind} dataset folder not found under the data root", r)
    return r


def load_dataset(kind: str, root: str | Path | None = None, *, data_root: str | Path | None = None,
                 **kwargs) -> Any:
    """Load dataset ``kind`` from ``root`` (default: its folder under the data root)."""
    fn = get_loader(kind)
    return fn(dataset_root(kind, root, data_root), **kwargs)


def assign_splits(items: Sequence[Item], fractions: dict[str, float] | Sequence[float] = (0.7, 0.15, 0.15),
                  *, seed: int = 0, stratify: bool = True, only_missing: bool = True) -> list[Item]:
    """Give items a seeded subject-wise split (via :func:`medad.evaluation.split_by_subject`).

    Items that already have a split (from the layout) keep it when ``only_missing``. With
    ``stratify`` each label gets its share of subjects in every split.
    """
    from medad.evaluation.splits import split_by_subject

    todo = [i for i, it in enumerate(items) if not (only_missing and it.split)]
    if not todo:
        return list(items)
    subs = [items[i].subject_id for i in todo]
    strat = None
    if stratify:
        labels = sorted({str(items[i].label) for i in todo})
        if len(labels) > 1:
            codes = {lab: c for c, lab in enumerate(labels)}
            strat = [codes[str(items[i].label)] for i in todo]
    parts = split_by_subject(subs, fractions, seed=seed, stratify=strat)
    for name, idx in parts.items():
        for j in idx:
            items[todo[int(j)]].split = name
    return list(items)


def summarize_items(items: Sequence[Item]) -> dict[str, Any]:
    """Counts per split and label, subjects per split, and masks found."""
    per: dict[str, dict[str, int]] = {}
    subjects: dict[str, set] = {}
    for it in items:
        s = str(it.split)
        lab = "(none)" if it.label is None else str(it.label)
        per.setdefault(s, {})
        per[s][lab] = per[s].get(lab, 0) + 1
        subjects.setdefault(s, set()).add(it.subject_id)
    order = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "testing": 2}
    per = dict(sorted(per.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))
    per = {s: dict(sorted(d.items())) for s, d in per.items()}
    return {
        "n_items": len(items),
        "per_split_label": per,
        "n_subjects": len({it.subject_id for it in items}),
        "subjects_per_split": {s: len(v) for s, v in subjects.items()},
        "n_with_mask": sum(it.mask_path is not None for it in items),
    }


def summarize(kind: str, loaded: Any) -> dict[str, Any]:
    """Summary for ``medad datasets inspect``: the kind module's own ``summarize`` if it has one."""
    if isinstance(loaded, list) and (not loaded or isinstance(loaded[0], Item)):
        return summarize_items(loaded)
    mod = importlib.import_module(KINDS[kind].module)
    fn = getattr(mod, "summarize", None)
    if fn is None:
        raise ConfigError(f"no summary available for dataset kind {kind!r}")
    return fn(loaded)


__all__ = ["Item", "Kind", "KINDS", "get_loader", "dataset_root", "load_dataset", "assign_splits",
           "summarize_items", "summarize"]
