"""Image and volume dataset layouts -> lists of :class:`medad.datasets.Item`.

* BraTS-style case folders: ``[split/]case/{<Modality>*.nii.gz, brainmask, OTMultiClass}``.
* NIfTI folders with optional masks (NiChart FLAIR + ``wmh_mask_DLWMLS``; IXI).
* Class-per-folder images: ``[split/]class/*.png`` (brain tumour 4-class; COVID-CT grouped by
  figure/paper, since it has no patient ids).
* Images + masks: ``[split/]{images,masks}/`` (Kvasir-SEG; liver/lung tumour slices, whose file
  names ``[flipped_]<patient>_<slice>.jpg`` give the patient).
* WCEBleedGen: ``split/{bleeding,non_bleeding}/`` with YOLO box files next to bleeding frames.

Split folders in the layout are kept as the split (with their own names, e.g. ``validation`` or
``valid``); layouts without them get a seeded subject-wise split (``train``/``val``/``test``).
Nothing is read here except names (and small text files: participants tables, YOLO boxes).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medad.datasets import Item, assign_splits
from medad.errors import ReadError
from medad.io.images import IMAGE_SUFFIXES, natural_key
from medad.io.volumes import NIFTI_SUFFIXES, MGH_SUFFIXES, volume_suffix

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)

SubjectFn = Callable[[Path], str]


def _stem(p: Path) -> str:
    suf = volume_suffix(p)
    return p.name[: -len(suf)] if suf else p.name


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files with one of ``suffixes`` (hidden files skipped), in natural name order."""
    return sorted((f for f in folder.iterdir()
                   if f.is_file() and not f.name.startswith(".")
                   and (volume_suffix(f) in suffixes or f.suffix.lower() in suffixes)),
                  key=lambda f: natural_key(f.name))


def _dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: natural_key(d.name))


def _split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """``[(split, folder)]``: the split folders of ``root``, or ``[(None, root)]`` without them."""
    found = [(d.name, d) for d in _dirs(root) if d.name.lower() in SPLIT_NAMES]
    return found or [(None, root)]


def _check_root(root: str | Path) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise ReadError("dataset folder not found", r)
    return r


def _finish(items: list[Item], root: Path, seed: int, fractions) -> list[Item]:
    if not items:
        raise ReadError("no items found in the dataset folder (wrong layout or kind?)", root)
    if any(it.split is None for it in items):
        assign_splits(items, fractions, seed=seed)
    return items


# ---------------------------------------------------------------------------------- volumes


def load_brats(root: str | Path, *, modality: str = "Flair", seed: int = 0,
               fractions=DEFAULT_FRACTIONS) -> list[Item]:
    """BraTS-style case folders; one item per case.

    ``path`` is the ``modality`` volume (file name starting with it, e.g. ``Flair_...``),
    ``mask_path`` the ``OTMultiClass`` label map (tumour = label > 0), ``extra`` holds
    ``brainmask`` and every modality found. Cases lacking the modality are skipped with a warning.
    """
    root = _check_root(root)
    items: list[Item] = []
    for split, folder in _split_dirs(root):
        for case in _dirs(folder):
            vols = _files(case, NIFTI_SUFFIXES + MGH_SUFFIXES)
            if not vols:
                continue
            by_name = {_stem(v): v for v in vols}
            label_map = next((v for n, v in by_name.items() if n.lower().startswith(("otmulticlass", "seg"))), None)
            brainmask = next((v for n, v in by_name.items() if n.lower().startswith("brainmask")), None)
            mods = {n.split("_")[0]: v for n, v in by_name.items() if v not in (label_map, brainmask)}
            chosen = next((v for m, v in mods.items() if m.lower() == modality.lower()), None)
            if chosen is None:
                log.warning("%s: no %s volume (found %s); case skipped", case, modality, sorted(mods))
                continue
            items.append(Item(path=chosen, subject_id=case.name, label="tumour" if label_map else None,
                              split=split, mask_path=label_map,
                              extra={"modalities": mods, "brainmask": brainmask, "case_dir": case}))
    return _finish(items, root, seed, fractions)


def _read_participants(path: Path | None) -> dict[str, dict[str, str]]:
    """First column (id) -> the row, from a participants CSV/TSV."""
    if path is None or not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
        rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReadError(f"cannot read participants table: {e}", path) from None
    if not rows:
        return {}
    key = next(iter(rows[0]))
    return {r[key]: r for r in rows}


def load_nifti_folder(root: str | Path, *, image_dir: str | None = None, mask_dir: str | None = None,
                      participants: str | None = None, label: str | None = None, seed: int = 0,
                      fractions=DEFAULT_FRACTIONS, subject_fn: SubjectFn | None = None) -> list[Item]:
    """NIfTI/MGZ files in ``root[/image_dir]``, masks matched by name in ``root/mask_dir``.

    A mask belongs to an image when its name starts with the image's stem (``Subj1_FL`` ->
    ``Subj1_FL_DLWMLS.nii.gz``). Subject id: the stem up to the first ``_`` (override with
    ``subject_fn``). Participant rows (age, sex, ...) go to ``extra`` when a table is given.
    Splits are seeded and subject-wise.
    """
    root = _check_root(root)
    img_folder = root / image_dir if image_dir else root
    if not img_folder.is_dir():
        raise ReadError("image folder not found", img_folder)
    masks: list[Path] = []
    if mask_dir:
        if not (root / mask_dir).is_dir():
            raise ReadError("mask folder not found", root / mask_dir)
        masks = _files(root / mask_dir, NIFTI_SUFFIXES + MGH_SUFFIXES)
    table = _read_participants(root / participants if participants else None)
    items = []
    for f in _files(img_folder, NIFTI_SUFFIXES + MGH_SUFFIXES):
        stem = _stem(f)
        subj = subject_fn(f) if subject_fn else stem.split("_")[0]
        # longest-stem match first would matter only for names that prefix each other
        mask = next((m for m in masks if _stem(m) == stem or _stem(m).startswith(stem + "_")), None)
        extra = dict(table.get(subj) or table.get(stem) or {})
        items.append(Item(path=f, subject_id=subj, label=label, split=None, mask_path=mask, extra=extra))
    return _finish(items, root, seed, fractions)


def load_nichart_flair(root: str | Path, **kwargs) -> list[Item]:
    """NiChart FLAIR: ``fl/SubjN_FL.nii.gz`` with algorithmic WMH masks in ``wmh_mask_DLWMLS``."""
    kwargs.setdefault("image_dir", "fl")
    kwargs.setdefault("mask_dir", "wmh_mask_DLWMLS")
    kwargs.setdefault("participants", "participants/participants.csv")
    return load_nifti_folder(root, **kwargs)


def load_ixi(root: str | Path, **kwargs) -> list[Item]:
    """IXI T1 (healthy): ``IXI012-HH-1211_T1.nii.gz``, subject ``IXI012-HH-1211``."""
    kwargs.setdefault("participants", "participants.csv")
    kwargs.setdefault("label", "healthy")
    return load_nifti_folder(root, **kwargs)


# ----------------------------------------------------------------------------------- images


def load_class_folders(root: str | Path, *, subject_fn: SubjectFn | None = None, seed: int = 0,
                       fractions=DEFAULT_FRACTIONS, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Item]:
    """Images in ``[split/]class/`` folders; label = class folder name.

    Subject id: ``subject_fn(path)``, default the file stem (these layouts have no patient ids,
    so a split by item is all that is possible; say so when reporting).
    """
    root = _check_root(root)
    items = []
    for split, folder in _split_dirs(root):
        for cls in _dirs(folder):
            for f in _files(cls, suffixes):
                subj = subject_fn(f) if subject_fn else f.stem
                items.append(Item(path=f, subject_id=subj, label=cls.name, split=split))
    return _finish(items, root, seed, fractions)


_COVID_PAPER = re.compile(r"^(?P<paper>.+?)(?:-p\d+-\d+.*|_\d+)?$")


def covid_group(path: Path) -> str:
    """Grouping key of a COVID-CT file name (no patient ids exist).

    ``<n>%<k>.png`` (non-COVID): panels ``k`` of figure ``n`` -> ``n``.
    ``<paper>-p<page>-<fig>[%k].png`` / ``<paper>_<k>.png`` (COVID): every figure of one paper
    -> ``<paper>``, since one paper's figures may show the same patient.
    """
    name = path.stem.split("%")[0]
    m = _COVID_PAPER.match(name)
    return m.group("paper") if m else name


def load_covid_ct(root: str | Path, **kwargs) -> list[Item]:
    """UCSD COVID-CT (``CT_COVID``, ``CT_NonCOVID``), grouped by :func:`covid_group` for splits."""
    kwargs.setdefault("subject_fn", covid_group)
    return load_class_folders(root, **kwargs)


def _match_mask(img: Path, masks: dict[str, Path]) -> Path | None:
    return masks.get(img.name) or masks.get(img.stem)


def load_image_mask_folders(root: str | Path, *, images: str = "images", masks: str = "masks",
                            label: str | None = None, subject_fn: SubjectFn | None = None, seed: int = 0,
                            fractions=DEFAULT_FRACTIONS, extra_fn: Callable[[Path], dict] | None = None
                            ) -> list[Item]:
    """Images with same-named masks in ``[split/]{images,masks}/`` (mask: grey > 127).

    An image without a mask is kept with ``mask_path=None`` (and a warning).
    """
    root = _check_root(root)
    items = []
    for split, folder in _split_dirs(root):
        if not (folder / images).is_dir():
            continue
        mask_files = _files(folder / masks, IMAGE_SUFFIXES) if (folder / masks).is_dir() else []
        by_name = {**{m.stem: m for m in mask_files}, **{m.name: m for m in mask_files}}
        for f in _files(folder / images, IMAGE_SUFFIXES):
            mask = _match_mask(f, by_name)
            if mask is None:
                log.warning("%s: no mask found in %s", f, folder / masks)
            subj = subject_fn(f) if subject_fn else f.stem
            items.append(Item(path=f, subject_id=subj, label=label, split=split, mask_path=mask,
                              extra=extra_fn(f) if extra_fn else {}))
    return _finish(items, root, seed, fractions)


def load_kvasir_seg(root: str | Path, **kwargs) -> list[Item]:
    """Kvasir-SEG ``{train,valid}/{images,masks}``: every frame holds a polyp (mask > 127)."""
    kwargs.setdefault("label", "polyp")
    return load_image_mask_folders(root, **kwargs)


_SLICE_NAME = re.compile(r"^(?P<flipped>flipped_)?(?P<patient>[^_]+)_(?P<slice>\d+)$")


def _slice_subject(path: Path) -> str:
    m = _SLICE_NAME.match(path.stem)
    return m.group("patient") if m else path.stem


def _slice_extra(path: Path) -> dict:
    m = _SLICE_NAME.match(path.stem)
    if not m:
        return {}
    return {"slice": int(m.group("slice")), "flipped_lr": bool(m.group("flipped"))}


def load_liver_tumor(root: str | Path, **kwargs) -> list[Item]:
    """Liver CT slices ``[flipped_]<patient>_<slice>.jpg`` + masks; split by patient."""
    kwargs.setdefault("label", "tumour")
    kwargs.setdefault("subject_fn", _slice_subject)
    kwargs.setdefault("extra_fn", _slice_extra)
    return load_image_mask_folders(root, **kwargs)


load_lung_tumor = load_liver_tumor  # same naming scheme (without the flipped_ prefix)


def read_yolo_boxes(path: Path) -> list[tuple[int, float, float, float, float]]:
    """YOLO box file: ``class cx cy w h`` per line (normalised to [0, 1])."""
    boxes = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReadError(f"cannot read box file: {e}", path) from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, TypeError):
            raise ReadError(f"line {n}: expected 'class cx cy w h', got {line!r}", path) from None
        if len(parts) != 5 or not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise ReadError(f"line {n}: expected 'class cx cy w h' normalised to [0, 1], got {line!r}", path)
        boxes.append((c, cx, cy, w, h))
    return boxes


def yolo_box_mask(boxes, height: int, width: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of YOLO boxes (``(class, cx, cy, w, h)`` normalised, as
    :func:`read_yolo_boxes` gives them): every pixel a box touches (start rounded down, end up)."""
    mask = np.zeros((int(height), int(width)), bool)
    for _, cx, cy, w, h in boxes:
        mask[int((cy - h / 2) * height):int(math.ceil((cy + h / 2) * height)),
             int((cx - w / 2) * width):int(math.ceil((cx + w / 2) * width))] = True
    return mask


def load_wce_bleedgen(root: str | Path, *, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> list[Item]:
    """WCEBleedGen: ``split/{bleeding,non_bleeding}/*.jpg``; bleeding frames carry
    ``extra["boxes"]`` from their YOLO ``<name>.txt`` (``extra["box_path"]`` too)."""
    items = load_class_folders(root, seed=seed, fractions=fractions)
    for it in items:
        box = it.path.with_suffix(".txt")
        it.extra["box_path"] = box if box.is_file() else None
        it.extra["boxes"] = read_yolo_boxes(box) if box.is_file() else []
    return items


class ItemDataset:
    """A map-style dataset (usable by ``torch.utils.data.DataLoader``) over :class:`Item` s.

    Each sample is a dict ``{"image": (C, *spatial) float32, "mask": (1, *spatial) float32
    (when the item has one), "label", "subject_id", "path"}`` passed through ``transform``
    (e.g. :func:`medad.transforms.image.image_transforms` with ``keys=["image"],
    mask_keys=["mask"]``). Volumes come as MetaTensors with their RAS affine so orientation and
    spacing transforms work. Files are read when a sample is asked for, not before.
    """

    def __init__(self, items: Sequence[Item], transform: Callable | None = None, *, grey: bool | None = None):
        self.items = list(items)
        self.transform = transform
        self.grey = grey

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from medad.io.records import VolumeRecord
        from medad.transforms.image import record_to_tensor

        it = self.items[i]
        rec = it.load()
        if self.grey is not None and not isinstance(rec, VolumeRecord):
            from medad.io.images import read_image

            rec = read_image(it.path, grey=self.grey)
        sample: dict = {"image": record_to_tensor(rec), "label": it.label, "subject_id": it.subject_id,
                        "path": str(it.path)}
        mask = it.load_mask()
        if mask is not None:
            if mask.shape != rec.data.shape[: mask.ndim]:
                raise ReadError(f"mask shape {mask.shape} does not match image shape {rec.data.shape}",
                                it.mask_path)
            m = sample["image"][:1].clone()
            m[0] = m.new_tensor(mask.astype("float32"))
            sample["mask"] = m  # same MetaTensor metadata (affine) as the image
        return self.transform(sample) if self.transform is not None else sample
