"""Image/volume dataset adapters: counts against ../shared/data/README.md, subject-wise seeded
splits, lazy loading, and generated layouts for the edge cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medad.config import data_root
from medad.datasets import KINDS, Item, Kind, assign_splits, load_dataset, summarize
from medad.datasets.images import covid_group, load_brats, load_class_folders, read_yolo_boxes
from medad.errors import ConfigError, InputError, ReadError

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="../shared/data (or $MEDAD_DATA_ROOT) not present")


def _counts(items) -> Counter:
    return Counter((it.split, it.label) for it in items)


def _assert_subject_disjoint(items) -> None:
    where: dict[str, set] = {}
    for it in items:
        where.setdefault(it.subject_id, set()).add(it.split)
    both = {s: sp for s, sp in where.items() if len(sp) > 1}
    assert not both, f"subjects in two splits: {list(both.items())[:3]}"


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[Item]]:
    if ROOT is None:
        pytest.skip("../shared/data not present")
    kinds = ["brats", "nichart_flair", "ixi", "brain_tumor_4class", "covid_ct", "kvasir_seg",
             "liver_tumor", "lung_tumor", "wce_bleedgen"]
    return {k: load_dataset(k, data_root=ROOT) for k in kinds}


# ------------------------------------------------------------------ counts (README)


@needs_data
def test_brats_counts(loaded):
    items = loaded["brats"]
    assert Counter(it.split for it in items) == {"train": 2, "validation": 2, "test": 2}
    for it in items:
        assert it.path.name.startswith("Flair") and it.mask_path.name.startswith("OTMultiClass")
        assert set(it.extra["modalities"]) == {"Flair", "T1c"}
        assert it.extra["brainmask"].name.startswith("brainmask")
        assert it.subject_id == it.path.parent.name
    t1c = load_dataset("brats", data_root=ROOT, modality="T1c")
    assert all(it.path.name.startswith("T1c") for it in t1c)


@needs_data
def test_nifti_folder_counts(loaded):
    nich = loaded["nichart_flair"]
    assert len(nich) == 23 and all(it.mask_path is not None for it in nich)
    for it in nich:
        assert it.mask_path.name.startswith(it.path.name.replace(".nii.gz", "") + "_")
        assert it.subject_id == it.path.name.split("_")[0] and it.extra["MRID"] == it.subject_id
    assert len(loaded["ixi"]) == 2 and all(it.label == "healthy" for it in loaded["ixi"])


@needs_data
def test_class_folder_counts(loaded):
    c = _counts(loaded["brain_tumor_4class"])
    assert c == {("train", "notumor"): 1200,
                 **{("validation", k): 171 for k in ("notumor", "glioma", "meningioma", "pituitary")},
                 **{("test", k): 342 for k in ("notumor", "glioma", "meningioma", "pituitary")}}
    cov = Counter(it.label for it in loaded["covid_ct"])
    assert cov == {"CT_NonCOVID": 397, "CT_COVID": 349}


@needs_data
def test_image_mask_counts(loaded):
    kv = loaded["kvasir_seg"]
    assert _counts(kv) == {("train", "polyp"): 700, ("valid", "polyp"): 200}
    assert all(it.mask_path is not None and it.mask_path.name == it.path.name for it in kv)
    assert len(loaded["liver_tumor"]) == 24 and len(loaded["lung_tumor"]) == 10
    assert all(it.mask_path is not None for it in loaded["liver_tumor"] + loaded["lung_tumor"])
    liver = loaded["liver_tumor"][0]
    assert liver.extra["flipped_lr"] is True and liver.subject_id.isdigit()


@needs_data
def test_wce_counts_and_boxes(loaded):
    items = loaded["wce_bleedgen"]
    assert _counts(items) == {("train", "bleeding"): 200, ("train", "non_bleeding"): 200,
                              ("valid", "bleeding"): 50, ("valid", "non_bleeding"): 50}
    bleeding = [it for it in items if it.label == "bleeding"]
    assert all(it.extra["boxes"] for it in bleeding)
    assert not any(it.extra["boxes"] for it in items if it.label == "non_bleeding")
    for it in bleeding[:20]:
        for c, cx, cy, w, h in it.extra["boxes"]:
            assert c == 0 and 0 < w <= 1 and 0 < h <= 1


# ------------------------------------------------------------------ splits


@needs_data
def test_no_subject_in_two_splits(loaded):
    for kind, items in loaded.items():
        assert all(it.split for it in items), kind
        _assert_subject_disjoint(items)


@needs_data
def test_seeded_splits_reproducible(loaded):
    a = load_dataset("covid_ct", data_root=ROOT, seed=3)
    b = load_dataset("covid_ct", data_root=ROOT, seed=3)
    c = load_dataset("covid_ct", data_root=ROOT, seed=4)
    assert [it.split for it in a] == [it.split for it in b]
    assert [it.split for it in a] != [it.split for it in c]
    # stratified: both classes in every split
    assert {(it.split, it.label) for it in a} >= {(s, lab) for s in ("train", "val", "test")
                                                  for lab in ("CT_COVID", "CT_NonCOVID")}
    _assert_subject_disjoint(c)


def test_covid_grouping():
    assert covid_group(Path("1%2.png")) == "1" == covid_group(Path("1%0.png"))
    assert covid_group(Path("1046.png")) == "1046"
    assert covid_group(Path("2020.02.10.20021584-p6-52%10.png")) == "2020.02.10.20021584"
    assert covid_group(Path("2020.01.24.919183-p27-132.png")) == "2020.01.24.919183"
    assert covid_group(Path("PIIS0140673620301549_0%1.png")) == "PIIS0140673620301549"
    assert covid_group(Path("PIIS0140673620301549_2.png")) == "PIIS0140673620301549"


# ------------------------------------------------------------------ lazy loading


@needs_data
def test_items_load_lazily(loaded):
    it = loaded["kvasir_seg"][0]
    rec = it.load()
    assert rec.shape == (256, 256, 3) and rec.subject_id == it.subject_id and rec.label == "polyp"
    m = it.load_mask()
    assert m.dtype == bool and m.shape == (256, 256) and 0 < m.mean() < 1
    liver = loaded["liver_tumor"][0]
    assert liver.load_mask().shape == liver.load().shape[:2]
    nich = loaded["nichart_flair"][0]
    vol, mask = nich.load(), nich.load_mask()
    assert vol.shape == mask.shape and vol.orientation == "RAS"


# ------------------------------------------------------------------ generated layouts


def _nifti(p: Path, shape=(4, 4, 4)) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(p))


def test_brats_without_split_folders(tmp_path, caplog):
    for i in range(10):
        case = tmp_path / f"case{i}"
        _nifti(case / "Flair_x.nii.gz")
        _nifti(case / "OTMultiClass.nii.gz")
    _nifti(tmp_path / "case99" / "T2_only.nii.gz")  # no Flair: skipped with a warning
    items = load_brats(tmp_path, seed=1)
    assert len(items) == 10 and {it.split for it in items} == {"train", "val", "test"}
    assert "case99" in caplog.text
    assert [it.split for it in items] == [it.split for it in load_brats(tmp_path, seed=1)]


def test_class_folders_group_by_subject(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.zeros((4, 4), np.uint8))
    for cls in ("normal", "abnormal"):
        for subj in range(6):
            for k in range(3):
                (tmp_path / cls).mkdir(exist_ok=True)
                img.save(tmp_path / cls / f"{cls}{subj}-{k}.png")
    items = load_class_folders(tmp_path, subject_fn=lambda p: p.stem.split("-")[0], seed=0)
    assert len(items) == 36
    _assert_subject_disjoint(items)
    assert summarize("class_folders", items)["n_subjects"] == 12


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(ReadError, match="no items"):
        load_class_folders(tmp_path)
    with pytest.raises(ReadError, match="not found"):
        load_dataset("class_folders", tmp_path / "absent")
    with pytest.raises(InputError, match="unknown dataset kind"):
        load_dataset("nope", tmp_path)
    with pytest.raises(InputError, match="no default folder"):
        load_dataset("class_folders")


def test_missing_module_kind_does_not_break_image_kinds(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, "ghost", Kind("medad.datasets.no_such_module", "load", None))
    with pytest.raises(ConfigError, match="not available"):
        load_dataset("ghost", tmp_path)
    (tmp_path / "a").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "x.png")
    assert len(load_dataset("class_folders", tmp_path)) == 1


def test_assign_splits_keeps_layout_splits():
    items = [Item(Path(f"{i}.png"), subject_id=f"s{i // 2}", label="x", split="test" if i < 4 else None)
             for i in range(40)]
    assign_splits(items, (0.5, 0.5), seed=0)
    assert all(it.split == "test" for it in items[:4])
    assert {it.split for it in items[4:]} == {"train", "val"}
    _assert_subject_disjoint(items[4:])


def test_yolo_boxes(tmp_path):
    good = tmp_path / "b.txt"
    good.write_text("0 0.5 0.5 0.2 0.1\n\n1 0.1 0.2 0.3 0.4\n")
    assert read_yolo_boxes(good) == [(0, 0.5, 0.5, 0.2, 0.1), (1, 0.1, 0.2, 0.3, 0.4)]
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0.5 0.5 2.0 0.1\n")
    with pytest.raises(ReadError, match="bad.txt"):
        read_yolo_boxes(bad)
    bad.write_text("zero 1 2\n")
    with pytest.raises(ReadError, match="line 1"):
        read_yolo_boxes(bad)


@needs_data
def test_item_dataset_with_transforms(loaded):
    import torch

    from medad.datasets.images import ItemDataset
    from medad.transforms.image import image_transforms

    t = image_transforms(2, keys=["image"], mask_keys=["mask"], spatial_size=64, resize_mode="resize")
    ds = ItemDataset(loaded["kvasir_seg"][:3], t)
    s = ds[0]
    assert len(ds) == 3 and s["image"].shape == (3, 64, 64) and s["mask"].shape == (1, 64, 64)
    assert set(torch.unique(s["mask"]).tolist()) <= {0.0, 1.0} and s["mask"].sum() > 0
    assert s["label"] == "polyp" and s["subject_id"] == loaded["kvasir_seg"][0].subject_id
    grey = ItemDataset(loaded["brain_tumor_4class"][:1], grey=True)[0]
    assert grey["image"].shape == (1, 128, 128) and "mask" not in grey
    vol = ItemDataset(loaded["nichart_flair"][:1])[0]
    assert vol["image"].shape == vol["mask"].shape == (1, 110, 110, 87)
    assert torch.allclose(vol["mask"].affine, vol["image"].affine)


def test_yolo_box_mask_covers_every_pixel_a_box_touches():
    from medad.datasets.images import yolo_box_mask

    m = yolo_box_mask([(0, 0.5, 0.5, 0.5, 0.25), (1, 0.1, 0.1, 0.05, 0.05)], 8, 8)
    assert m[3:5, 2:6].all() and m.sum() == 8 + 1  # a 4 x 2 box and a box inside pixel (0, 0)
    assert not yolo_box_mask([], 4, 6).any() and yolo_box_mask([], 4, 6).shape == (4, 6)
