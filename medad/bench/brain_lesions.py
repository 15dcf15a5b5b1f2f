"""``medad bench brain-lesions``: brain-lesion segmentation from healthy-only training, on real MRI.

Protocol (issue 3, section 4):

* Train on healthy axial slices. FLAIR: NiChart FLAIR scans (slices without any voxel of their
  white-matter-lesion masks; skull-stripped by MNI152 registration, N4-corrected) plus the
  lesion-free slices of the BraTS ``train`` cases. T1c: the lesion-free slices of the BraTS
  ``train`` case plus the healthy non-contrast T1 scans of the data folder (2 IXI subjects and
  the niivue ``chris_t1``; skull-stripped by MNI152 registration, N4-corrected), as NiChart
  serves FLAIR (there is no healthy T1c; chosen on the validation patient: see HEALTHY_T1).
  A scan whose registration mask fails the check ``medad brain train`` applies (more than 2 % of
  it outside the head: a failed fit) is left out and named, as the product would refuse it.
* Calibrate on healthy slices of subjects held out from training (a share of the NiChart
  subjects and one of the two BraTS ``train`` cases): the voxel threshold flags ``pixel_fpr``
  of their (lesion-free) brain voxels.
* Test on the BraTS ``validation`` and ``test`` cases (4 patients), ``OTMultiClass > 0`` =
  lesion, inside the BraTS brain mask, on the original 1 mm grid (maps are brought back from
  the model grid; the RAS grid used here is a pure axis permutation of the file's grid).
* Per detector and modality: Dice at the healthy-calibrated threshold, optimistic Dice (best
  threshold chosen on the test data itself, labelled as such), AUPRC and pixel AUROC, per case
  and pooled; training seconds, inference seconds per volume, peak memory. Beside them, what the
  calibrated mask catches of each tumour region (:data:`REGIONS`): recall of the tumour core
  (OTMultiClass 1, 3, 4: necrosis, non-enhancing and enhancing tumour) and of the oedema (2), and
  the Dice a mask of exactly the core would score against the whole lesion (a property of the
  cases: the ceiling of a detector that sees the core only, e.g. on T1c, where oedema is faint).
* Beside them, the reference baseline as the issue states it: robust z-score of the 1 mm
  volume + 3D median filter (5 voxels), threshold at the 99.5th percentile of lesion-free brain
  voxels of the 2 BraTS ``train`` cases (issue figure: pooled Dice 0.886, AUPRC 0.943 on FLAIR).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medad.errors import ConfigError, ReadError

MODALITY_FILES = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"}
QUICK_NICHART = 4
QUICK_EPOCHS = 1
CLASSICAL = ("intensity", "asymmetry")  # row names starting with these are no-learning baselines, not deep
# healthy non-contrast T1 scans added to T1c training (under the data root). Chosen on the BraTS validation
# patient (pat0006) with the dae: calibrated Dice / optimistic / AUPRC 0.095 / 0.414 / 0.427 with the 38 BraTS
# slices alone, 0.145 / 0.439 / 0.464 with these 3 scans added (310 slices)
HEALTHY_T1 = ("mri/ixi_t1_2mm/*_T1.nii.gz", "mri/niivue_samples/chris_t1.nii.gz")


# BraTS OTMultiClass labels of the tumour regions whose recall the benchmark reports beside the
# whole-lesion figures (lesion = any label > 0)
REGIONS = {"core": (1, 3, 4), "oedema": (2,)}


@dataclass
class Case:
    """One BraTS case (record grid = RAS reorientation of the 1 mm file grid)."""

    case_id: str
    split: str
    folder: Path


def brats_cases(root: Path) -> list[Case]:
    base = root / "mri" / "brats2015"
    if not base.is_dir():
        raise ReadError("BraTS folder not found (expected mri/brats2015 under the data root)", base)
    out = [Case(d.name, split, d) for split in ("train", "validation", "test")
           for d in sorted((base / split).glob("brats_*")) if d.is_dir()]
    if not out:
        raise ReadError("no BraTS cases found", base)
    return out


def _read_on_grid(path: Path, like, what: str) -> np.ndarray:
    """A volume's data, checked to lie on ``like``'s grid."""
    from medad.io.volumes import read_volume

    m = read_volume(path)
    if m.shape != like.shape:
        raise ReadError(f"{what} grid {m.shape} differs from the scan's {like.shape}", path)
    return m.data


def _read_mask(path: Path, like) -> np.ndarray:
    return _read_on_grid(path, like, "mask") > 0.5


def _read_lesion(path: Path, like) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A BraTS label volume read once: the lesion (any label) and its :data:`REGIONS`, as boolean
    masks on ``like``'s grid."""
    labels = np.rint(_read_on_grid(path, like, "label")).astype(np.int16)
    return labels > 0, {name: np.isin(labels, values) for name, values in REGIONS.items()}


def _config_folder(config_dir: str | Path) -> Path:
    """The folder of brain configs: the configs that come with medad when the given relative folder
    (default: configs/ where the command runs) does not exist -- a run outside the repository
    would otherwise use the detectors' bare defaults."""
    from medad.config import CONFIG_DIR

    return Path(config_dir) if Path(config_dir).is_dir() or Path(config_dir).is_absolute() else CONFIG_DIR


def _detector_config(name: str, config_dir: Path, quick: bool, modality: str | None = None):
    """The detector's brain config: ``configs/brain_<name>_<modality>.yaml`` when there is one
    (settings that depend on the contrast, e.g. the residual polarity), else
    ``configs/brain_<name>.yaml``; accepts a full pipeline config or a bare mapping of detector
    parameters. ``name`` labels the run; a config file may name another registered detector
    (e.g. ``brain_dae3d.yaml`` -> ``dae`` on 3D crops)."""
    from pipelines.brain_lesions import BrainLesionConfig, read_brain_config

    config_dir = _config_folder(config_dir)
    path = config_dir / f"brain_{name}.yaml"
    if modality is not None and (config_dir / f"brain_{name}_{modality}.yaml").is_file():
        path = config_dir / f"brain_{name}_{modality}.yaml"
    raw: dict[str, Any] = read_brain_config(path) if path.is_file() else {}
    if not raw:
        print(f"[{modality or 'brain'}] {name}: no {path.name} in {config_dir}: the detector's built-in defaults",
              flush=True)
    if raw and "detector" not in raw and "detector_params" not in raw:
        raw = {"detector": name, "detector_params": raw}
    raw.setdefault("detector", name)
    if quick:  # a smoke run: few epochs, for an ensemble's members too
        for d in [raw] + list(raw.get("members") or []):
            params = d.get("detector_params") or {}
            if "epochs" in params:
                params["epochs"] = min(int(params["epochs"]), QUICK_EPOCHS)
    cfg = BrainLesionConfig.from_dict(raw)
    return cfg, (str(path) if path.is_file() else "defaults (no config file)")


# ----------------------------------------------------------------------------------- metrics


def _metrics(amap: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from medad.evaluation import auprc, auroc, best_dice_threshold, dice

    opt, _ = best_dice_threshold(truth, amap)
    return {"dice": dice(pred, truth), "dice_optimistic": opt, "auprc": auprc(truth, amap),
            "auroc": auroc(truth, amap), "lesion_ml": float(truth.sum()) / 1000.0,
            "predicted_ml": float(pred.sum()) / 1000.0}


def _region_metrics(pred: np.ndarray, truth: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Recall of each region by the predicted mask, and the Dice of a mask of exactly the core
    against the whole lesion (``None`` for an empty region)."""
    from medad.evaluation import dice

    out: dict[str, float | None] = {}
    for name, r in regions.items():
        out[f"{name}_ml"] = float(r.sum()) / 1000.0
        out[f"recall_{name}"] = float(pred[r].mean()) if r.any() else None
    if "core" in regions:
        out["core_only_dice"] = dice(regions["core"], truth)
    return out


def evaluate_maps(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  regions: Sequence[dict[str, np.ndarray] | None] | None = None) -> dict[str, Any]:
    """Per-case and pooled metrics from ``(case_id, map, predicted mask, lesion, brain)`` on the
    1 mm grid, counted inside the brain mask; with ``regions`` (per case, :data:`REGIONS` masks
    or ``None``) also each region's recall (when every case has them)."""
    per_case, maps, preds, truths, regs = {}, [], [], [], []
    regions = list(regions) if regions is not None else [None] * len(cases)
    for (cid, amap, pred, les, brain), reg in zip(cases, regions):
        a, p, t = amap[brain].astype(np.float32), pred[brain], les[brain]
        per_case[cid] = _metrics(a, p, t)
        if reg is not None:
            regs.append({k: v[brain] for k, v in reg.items()})
            per_case[cid].update(_region_metrics(p, t, regs[-1]))
        maps.append(a); preds.append(p); truths.append(t)
    pooled = _metrics(np.concatenate(maps), np.concatenate(preds), np.concatenate(truths))
    if regs and len(regs) == len(cases):
        pooled.update(_region_metrics(np.concatenate(preds), np.concatenate(truths),
                                      {k: np.concatenate([r[k] for r in regs]) for k in regs[0]}))
    mean = {k: float(np.mean([c[k] for c in per_case.values()])) for k in ("dice", "dice_optimistic", "auprc", "auroc")}
    return {"pooled": pooled, "per_case": per_case, "mean_over_cases": mean}


# ----------------------------------------------------------------------------------- data


def healthy_t1_files(root: Path) -> list[Path]:
    """The healthy T1 scans under the data ``root`` that T1c training adds (:data:`HEALTHY_T1`);
    none when absent."""
    return [f for pattern in HEALTHY_T1 for f in sorted(Path(root).glob(pattern))]


class ModelStore(dict):
    """Fitted models by config key (see :func:`pipelines.brain_lesions.fit_brain_model`'s
    ``fitted``), also kept on disk under ``root/<modality>/<hash>/`` when ``root`` is given, so a
    rerun (e.g. a new ensemble of already trained members) skips their training. A model is
    reused only for the identical config and benchmark data settings; its row keeps the training
    seconds of the original fit and says where it was loaded from."""

    def __init__(self, root: Path | None, modality: str, quick: bool, data: Sequence[str] = ()):
        super().__init__()
        self.root, self.modality, self.quick = (None if root is None else Path(root)), modality, quick
        self.data = list(data)  # extra training scans: models fitted without them are not reused

    def _dir(self, key: str) -> Path:
        import hashlib

        h = hashlib.sha1(json.dumps([key, self.modality, self.quick] + ([self.data] if self.data else []))
                         .encode()).hexdigest()[:16]
        return self.root / self.modality / h  # type: ignore[operator]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (
            self.root is not None and isinstance(key, str) and (self._dir(key) / "brain_model.json").is_file())

    def __getitem__(self, key: str):
        if not super().__contains__(key):
            from pipelines.brain_lesions import BrainModel

            model = BrainModel.load(self._dir(key))
            model.info["loaded_from"] = str(self._dir(key))
            super().__setitem__(key, model)
        return super().__getitem__(key)

    def __setitem__(self, key: str, model) -> None:
        super().__setitem__(key, model)
        if self.root is not None and not (self._dir(key) / "brain_model.json").is_file():
            import shutil as _sh

            d = self._dir(key)
            tmp = d.with_name(d.name + ".tmp")
            _sh.rmtree(tmp, ignore_errors=True)
            model.save(tmp)
            tmp.replace(d)  # a half-written model never looks complete


class BenchData:
    """Prepared volumes, cached per preprocessing setting (registration masks computed once)."""

    def __init__(self, root: Path, quick: bool, seed: int = 0, cache_dir: Path | None = None,
                 models_dir: Path | None = None):
        self.root = root
        self.models_dir = models_dir
        self.quick = quick
        self.seed = seed
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cases = brats_cases(root)
        self._cache: dict[str, Any] = {}
        self._registered_masks: dict[Path, np.ndarray] = {}
        self.refused: dict[Path, str] = {}  # scans left out: their registration mask failed the misfit check
        self.fitted: dict[str, ModelStore] = {}  # per modality: fitted models by config (an ensemble reuses its members)

    def store(self, modality: str) -> ModelStore:
        if modality not in self.fitted:
            extra = [f.name for f in healthy_t1_files(self.root)] if modality == "t1c" else []
            self.fitted[modality] = ModelStore(self.models_dir, modality, self.quick, extra)
        return self.fitted[modality]

    def nichart_files(self) -> list[tuple[Path, Path | None]]:
        base = self.root / "mri" / "nichart_flair"
        files = sorted((base / "fl").glob("*_FL.nii.gz"), key=lambda p: int(p.name.split("_")[0][4:] or 0))
        if not files:
            raise ReadError("no NiChart FLAIR scans found", base / "fl")
        if self.quick:
            files = files[:QUICK_NICHART]
        out = []
        for f in files:
            m = base / "wmh_mask_DLWMLS" / f.name.replace("_FL.nii.gz", "_FL_DLWMLS.nii.gz")
            out.append((f, m if m.is_file() else None))
        return out

    def _registered(self, f: Path, sid: str, prep):
        """A scan without a brain mask (NiChart, healthy T1): read, skull-stripped with its
        MNI152-registration mask, N4-corrected (raw scanner intensities), preprocessed."""
        from medad.io.volumes import read_volume
        from medad.transforms.brain import BrainPrepConfig, preprocess_volume

        from medad.transforms.brain import registration_misfit

        rec = read_volume(f)
        rec.subject_id = sid
        if f not in self._registered_masks:  # registration is the slow part: once per scan
            self._registered_masks[f] = self._registered_mask(f, rec, prep.registration_iterations)
        # the rule `medad brain train/score` applies: a mask stretched past the head is a failed fit
        why = registration_misfit(self._registered_masks[f], rec.data, rec.affine)
        if why is not None:
            if f not in self.refused:
                print(f"left out {f.name}: {why}")
                self.refused[f] = why
            return rec, None
        n4 = BrainPrepConfig.from_dict({**prep.to_dict(), "n4": True})
        return rec, preprocess_volume(rec, n4, brain_mask=self._registered_masks[f])

    def _registered_mask(self, f: Path, rec, iterations: int) -> np.ndarray:
        """MNI152-registration brain mask of a scan without one (NiChart, healthy T1), kept in
        ``cache_dir`` (as .npy, no pickle) when one is given so reruns skip the registrations."""
        from medad.transforms.brain import register_brain_mask

        # keyed by the registration code too: a mask cached by an earlier version of it is not reused
        # (FLAIR rows run in the eighth session reused masks made before 3cee550 changed the head mask)
        cached = None if self.cache_dir is None else \
            self.cache_dir / f"{f.name}.it{iterations}.{_registration_code_key()}.brainmask.npy"
        if cached is not None and cached.is_file():
            m = np.load(cached, allow_pickle=False)
            if m.shape == rec.shape:
                return m
        m = register_brain_mask(rec.data, rec.affine, iterations=iterations)
        if cached is not None:
            from medad.utils import atomic_path

            with atomic_path(cached) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, m, allow_pickle=False)
        return m

    def prepared(self, modality: str, prep) -> dict[str, Any]:
        """Train / val / test volumes (with lesion masks) for one modality and preprocessing."""
        from tqdm.auto import tqdm

        from medad.io.volumes import read_volume
        from medad.transforms.brain import preprocess_volume

        key = json.dumps([modality, prep.to_dict()], sort_keys=True)
        if key in self._cache:
            return self._cache[key]
        fname = MODALITY_FILES[modality]
        sets: dict[str, list] = {"train": [], "val": [], "test": []}
        les: dict[str, list] = {"train": [], "val": [], "test": []}
        regions: list[dict[str, np.ndarray]] = []  # tumour regions of the test cases
        brats_train = [c for c in self.cases if c.split == "train"]
        # subject-wise hold-out: the last BraTS train case calibrates, the others train
        for i, c in enumerate(tqdm(self.cases, desc=f"BraTS {modality}", unit="case")):
            rec = read_volume(c.folder / fname)
            rec.subject_id = c.case_id
            brain = _read_mask(c.folder / "brainmask.nii.gz", rec)
            lesion, reg = _read_lesion(c.folder / "OTMultiClass.nii.gz", rec)
            vol = preprocess_volume(rec, prep, brain_mask=brain)
            split = "test" if c.split != "train" else ("val" if c is brats_train[-1] and len(brats_train) > 1 else "train")
            sets[split].append(vol)
            les[split].append(lesion)
            if split == "test":
                regions.append(reg)
        if modality == "flair":
            from medad.evaluation import split_by_subject

            files = self.nichart_files()
            ids = [f.name.split("_")[0] for f, _ in files]
            sp = split_by_subject(ids, {"train": 0.8, "val": 0.2}, seed=self.seed)
            val_ids = {ids[i] for i in sp["val"]} or {ids[-1]}
            for (f, m), sid in zip(tqdm(files, desc="NiChart FLAIR", unit="scan"), ids):
                rec, vol = self._registered(f, sid, prep)
                if vol is None:
                    continue
                wmh = _read_mask(m, rec) if m is not None else None
                split = "val" if sid in val_ids else "train"
                sets[split].append(vol)
                les[split].append(wmh)
        if modality == "t1c":  # healthy non-contrast T1: more normal anatomy than one BraTS case's slices
            for f in tqdm(healthy_t1_files(self.root), desc="healthy T1", unit="scan"):
                vol = self._registered(f, f.name.split(".")[0], prep)[1]
                if vol is not None:
                    sets["train"].append(vol)
                    les["train"].append(None)
        out = {"sets": sets, "lesions": les, "test_regions": regions}
        self._cache[key] = out
        return out


# ----------------------------------------------------------------------------------- runs


def _registration_code_key() -> str:
    """Short hash of the code that makes registration brain masks (medad/transforms/brain.py)."""
    import hashlib

    import medad.transforms.brain as tb

    return hashlib.sha256(Path(tb.__file__).read_bytes()).hexdigest()[:10]


def run_pipeline_detector(name: str, modality: str, data: BenchData, config_dir: Path, quick: bool) -> dict[str, Any]:
    """Fit, calibrate and test one detector through the brain-lesion pipeline."""
    from medad.utils import Timer, peak_rss_mb
    from pipelines.brain_lesions import fit_brain_model

    cfg, cfg_src = _detector_config(name, config_dir, quick, modality)
    d = data.prepared(modality, cfg.prep)
    sets, les = d["sets"], d["lesions"]
    with Timer() as t_fit:
        model = fit_brain_model(cfg, sets["train"], sets["val"], train_lesions=les["train"],
                                val_lesions=les["val"], progress=True, fitted=data.store(modality))
    rows, infer, supports = [], [], []
    for vol, lesion in zip(sets["test"], les["test"]):
        with Timer() as t:
            amap = model.volume_map(vol)
            sup = model.support(vol)
            pred = model.segment(amap, sup)
        infer.append(t.seconds)
        rows.append((vol.record.subject_id, amap, pred, lesion, vol.brain))
        supports.append(sup)  # the masks at the other thresholds are cut to the same support
    res = evaluate_maps(rows, d["test_regions"])
    res.update(calibration_checks(model, sets["val"], les["val"], {c.case_id for c in data.cases}, rows, supports))
    res.update({
        "detector": name, "modality": modality, "config": cfg_src, "params": cfg.detector_params,
        "preprocessing": cfg.prep.to_dict(), "threshold_source": "held-out healthy subjects",
        "voxel_threshold": model.voxel_threshold, "pixel_fpr": cfg.pixel_fpr,
        "train_subjects": model.info["train_subjects"], "val_subjects": model.info["val_subjects"],
        "n_train_slices": model.info["n_train_slices"], "n_val_slices": model.info["n_val_slices"],
        "item_unit": model.info.get("item_unit", "slices"), "model_loaded_from": model.info.get("loaded_from"),
        "trained_on": model.info.get("trained_on"),  # a model trained elsewhere (e.g. a GPU), loaded from --models-dir
        "train_seconds": round(model.info["train_seconds"], 2), "fit_and_calibrate_seconds": round(t_fit.seconds, 2),
        "inference_seconds_per_volume": round(float(np.mean(infer)), 2), "peak_memory_mb": round(peak_rss_mb(), 1),
        "torch_threads": _threads(),
    })
    if data.refused:
        res["left_out_scans"] = {f.name: why for f, why in sorted(data.refused.items())}
    return res


def calibration_checks(model, val: Sequence, val_lesions: Sequence, site_ids: set[str],
                       test_rows: Sequence[tuple], supports: Sequence[np.ndarray]) -> dict[str, Any]:
    """The same test maps at thresholds set other ways on held-out healthy data (never on test data),
    beside the protocol's (``pixel_fpr`` of the healthy slices of all held-out subjects, mostly
    NiChart: another scanner, 2 mm, N4-corrected). The optimistic Dice and AUPRC do not depend on
    the threshold; these show how much of the calibrated figure is the threshold's transfer:

    * ``site_calibrated``: the healthy slices of the TEST SITE's held-out subject(s) only (the
      BraTS ``train`` case held out) -- what a clinic would do with a few local healthy scans;
    * ``voxel_calibrated``: all held-out subjects, leaving out their lesion VOXELS instead of
      every axial slice that holds one (the issue's reference baseline calibrates this way; slice
      exclusion keeps mostly the top and bottom of a brain with lesions);
    * ``val_patient``: which way transfers better, judged without test data -- calibrated on the
      held-out subjects of the OTHER site each way, the Dice on the lesions of the test site's
      held-out subject (a BraTS ``train`` case, whose lesion slices are never trained on)."""
    import copy

    from medad.evaluation import dice

    vmaps = model.calibration_maps(val)
    site = [i for i, v in enumerate(val) if v.record.subject_id in site_ids]
    other = [i for i in range(len(val)) if i not in site]

    def calibrated(idx: Sequence[int], voxels: bool):
        m = copy.copy(model)
        m.info = dict(model.info)
        return m.calibrate([val[i] for i in idx], exclude=[val_lesions[i] for i in idx], exclude_voxels=voxels,
                           maps=[vmaps[i] for i in idx])

    def scored(m, rows) -> dict[str, Any]:
        per_case, masks, truths = {}, [], []
        for cid, amap, sup, lesion, brain in rows:
            pred = m.segment(amap, sup)
            per_case[cid] = float(dice(pred[brain], lesion[brain]))
            masks.append(pred[brain])
            truths.append(lesion[brain])
        return {"dice": float(dice(np.concatenate(masks), np.concatenate(truths))), "per_case": per_case,
                "voxel_threshold": m.voxel_threshold}

    test = [(cid, amap, sup, lesion, brain) for (cid, amap, _, lesion, brain), sup in zip(test_rows, supports)]
    out: dict[str, Any] = {}
    if test:
        out["voxel_calibrated"] = scored(calibrated(range(len(val)), True), test)
    if site and test:
        out["site_calibrated"] = {**scored(calibrated(site, False), test),
                                  "subjects": sorted(val[i].record.subject_id for i in site)}
    judged = [(val[i].record.subject_id, vmaps[i][0], vmaps[i][1], val_lesions[i], val[i].brain)
              for i in site if val_lesions[i] is not None and np.asarray(val_lesions[i]).any()]
    if judged and other:
        out["val_patient"] = {mode: scored(calibrated(other, mode == "voxels"), judged) for mode in ("slices", "voxels")}
        out["val_patient"]["subjects"] = [j[0] for j in judged]
    return out


def run_reference(modality: str, data: BenchData) -> dict[str, Any]:
    """The issue's reference baseline on the native 1 mm volumes (3D, no resampling)."""
    from medad import registry
    from medad.io.volumes import read_volume
    from medad.utils import Timer, peak_rss_mb

    fname = MODALITY_FILES[modality]
    vols, regions = {}, []
    for c in data.cases:
        rec = read_volume(c.folder / fname)
        brain = _read_mask(c.folder / "brainmask.nii.gz", rec)
        lesion, reg = _read_lesion(c.folder / "OTMultiClass.nii.gz", rec)
        x = np.where(brain, rec.data, 0.0).astype(np.float32)[None, None]
        vols[c.case_id] = (c.split, x, brain, lesion)
        if c.split != "train":
            regions.append(reg)
    det = registry.create("intensity", normalize="item", median_size=5, quantile=0.99)
    train = [(x, b & ~l) for s, x, b, l in vols.values() if s == "train"]
    with Timer() as t_fit:
        det.fit(np.concatenate([x for x, _ in train]))
    with Timer() as t_cal:
        det.calibrate(np.concatenate([x for x, _ in train]), fpr=0.05, pixel_fpr=0.005,
                      foreground=np.concatenate([f[None] for _, f in train]))
    rows, infer = [], []
    for cid, (s, x, b, l) in vols.items():
        if s == "train":
            continue
        with Timer() as t:
            r = det.predict(x)
        infer.append(t.seconds)
        rows.append((cid, r.map[0], r.mask[0], l, b))
    res = evaluate_maps(rows, regions)
    res.update({
        "detector": "intensity (reference, 3D 1 mm)", "modality": modality,
        "params": det.get_params(), "threshold_source": "lesion-free brain voxels of the 2 BraTS train cases "
        "(the issue's reference protocol; not held-out subjects)", "voxel_threshold": det.pixel_threshold_,
        "pixel_fpr": 0.005, "train_seconds": round(t_fit.seconds, 2), "calibrate_seconds": round(t_cal.seconds, 2),
        "inference_seconds_per_volume": round(float(np.mean(infer)), 2), "peak_memory_mb": round(peak_rss_mb(), 1),
        "torch_threads": _threads(),
    })
    if data.refused:
        res["left_out_scans"] = {f.name: why for f, why in sorted(data.refused.items())}
    return res


def _markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from medad.bench.common import markdown_table

    lines = ["# Brain lesions (BraTS 2015, 4 test patients) — trained on healthy slices only", "",
             f"Run {meta['date']}; {meta['cpu_note']}", "",
             "Dice at the threshold calibrated on held-out healthy data; **optimistic** Dice uses the best "
             "threshold chosen on the test cases themselves (not deployable, shown for comparison only). "
             "Metrics inside the BraTS brain mask on the original 1 mm grid, OTMultiClass > 0 = lesion. "
             "train s = fitting only (preprocessing and calibration excluded); infer s/vol = scoring one "
             "240x240x155 volume from its preprocessed slices to the post-processed map and mask on the 1 mm grid; "
             "threads = torch CPU threads of the row's run (–: not recorded; the train s of a model loaded from "
             "--models-dir were taken in the run that fitted it); peak MB = peak resident memory of the benchmark "
             "process up to that row (cumulative: it includes all data held).", ""]
    merged = [r for r in results if r.get("merged_from")]
    if merged:
        lines += ["Rows kept from an earlier run of the same benchmark (`--merge`): "
                  + "; ".join(f"{r['modality']} / {r['detector']} (run {r.get('run_date')})" for r in merged), ""]
    noted = [r for r in results if r.get("note")]
    if noted:
        lines += ["Row notes: " + "; ".join(f"{r['modality']} / {r['detector']}: {r['note']}" for r in noted), ""]
    left = sorted({f"{k} ({v.split(':')[0]})" for r in results for k, v in r.get("left_out_scans", {}).items()})
    if left:
        lines += ["Healthy scans left out of training and calibration (their registration brain mask failed the check "
                  "`medad brain train` applies; rows without `left_out_scans` in the JSON kept them): "
                  + "; ".join(left), ""]
    elsewhere = [r for r in results if _trained_on_gpu(r)]
    if elsewhere:
        lines += ["Rows whose model was trained on a GPU (their train s were taken there; scoring ran on this CPU): "
                  + "; ".join(f"{r['modality']} / {r['detector']}: {r['trained_on']}" for r in elsewhere), ""]
    head = ["modality", "detector", "Dice (calibrated)", "Dice 95 % CI (cases)", "minus intensity (paired CI)",
            "Dice (site-calibrated)", "Dice (voxel-calibrated)", "val patient Dice (slices / voxels)", "Dice (optimistic)", "AUPRC", "pixel AUROC", "mean case Dice", "core recall", "oedema recall", "train s",
            "infer s/vol", "threads", "peak MB"]
    rows = []
    for r in results:
        ref = _reference_row(results, r["modality"])
        # no paired difference between a row with a caveat (note) and one without: not the same inputs
        d = None if ref is None or ref is r or r.get("note") != ref.get("note") else dice_interval(r, ref)
        rows.append([r["modality"], r["detector"], r["pooled"]["dice"], _interval_text(dice_interval(r)),
                     "–" if d is None else f"{d[0]:+.3f} {_interval_text(d)}",
                     r.get("site_calibrated", {}).get("dice", "–"), r.get("voxel_calibrated", {}).get("dice", "–"),
                     _val_patient_cell(r), r["pooled"]["dice_optimistic"],
                     r["pooled"]["auprc"], r["pooled"]["auroc"], r["mean_over_cases"]["dice"],
                     *_region_cells(r["pooled"]), r["train_seconds"], r["inference_seconds_per_volume"],
                     r.get("torch_threads", "–"), r["peak_memory_mb"]])
    lines += ["## Pooled over the 4 test cases", "", markdown_table(head, rows), "",
              "Dice 95 % CI (cases): percentile bootstrap of the pooled calibrated Dice over the 4 test cases (2000 "
              "resamples); minus intensity: the pooled Dice minus that of the modality's `intensity` row, the same "
              "cases resampled for both. With 4 cases these intervals are rough and run narrow: they say how much "
              "the figure rests on one case, not what another 4 cases would give. "
              "Dice (site-calibrated): the same maps thresholded at `pixel_fpr` of the healthy slices of the test "
              "site's held-out subject only (the BraTS train case held out), where the protocol's threshold pools "
              "all held-out healthy subjects (mostly NiChart: another scanner and resolution); both are set "
              "without test data (–: not computed in the run that made the row). "
              "Dice (voxel-calibrated): all held-out subjects, as the protocol, but leaving out only their lesion "
              "voxels where the protocol leaves out every axial slice that holds one (which keeps mostly the top and "
              "bottom of a brain with lesions); the issue's reference row calibrates this way. val patient Dice: "
              "which of the two transfers better, judged without test data -- threshold set on the held-out subjects "
              "of the other site (NiChart) each way, Dice on the lesions of the held-out BraTS train case (its lesion "
              "slices are never trained on). "
              "core / oedema recall: share of the tumour core (OTMultiClass 1, 3, 4) / of the oedema (2) inside the "
              "calibrated mask (–: not computed in the run that made the row)." + _ceiling_text(results)]
    head2 = ["modality", "detector", "case", "lesion ml", "Dice (cal.)", "Dice (opt.)", "AUPRC", "AUROC",
             "core recall", "oedema recall"]
    rows2 = [[r["modality"], r["detector"], cid, m["lesion_ml"], m["dice"], m["dice_optimistic"], m["auprc"], m["auroc"],
              *_region_cells(m)] for r in results for cid, m in r["per_case"].items()]
    lines += ["## Per case", "", markdown_table(head2, rows2)]
    lines += ["## Detector settings", ""]
    for r in results:
        src = r.get("config", "built in")
        lines.append(f"- {r['modality']} / {r['detector']} ({src}): `{json.dumps(r.get('params', {}), sort_keys=True)}`"
                     + (f"; {r['n_train_slices']} training {r.get('item_unit', 'slices')} from "
                        f"{len(r['train_subjects'])} subjects, {r['n_val_slices']} calibration "
                        f"{r.get('item_unit', 'slices')} from {', '.join(r['val_subjects'])}"
                        if "n_train_slices" in r else ""))
    lines += ["", "## Goals (issue 3; deep = every detector but the classical intensity and asymmetry rows)", ""] + \
        [f"- {g}" for g in _goal_lines(results)]
    lines += ["", "## Protocol", "", meta["protocol"], ""]
    if meta.get("errors"):
        lines += ["## Failed runs", ""] + [f"- {e}" for e in meta["errors"]] + [""]
    return "\n".join(lines)


def _val_patient_cell(r: dict[str, Any]) -> str:
    vp = r.get("val_patient")
    return "–" if not vp else f"{vp['slices']['dice']:.3f} / {vp['voxels']['dice']:.3f}"


def _region_cells(m: dict[str, Any]) -> list[Any]:
    return ["–" if m.get(k) is None else m[k] for k in ("recall_core", "recall_oedema")]


def _ceiling_text(results: list[dict[str, Any]]) -> str:
    """What the test cases' regions say about T1c-like maps that see the core only."""
    r = next((r for r in results if "core_only_dice" in r["pooled"]), None)
    if r is None:
        return ""
    p = r["pooled"]
    cases = "; ".join(f"{cid} {m['oedema_ml']:.0f} of {m['lesion_ml']:.0f} ml" for cid, m in r["per_case"].items()
                      if "oedema_ml" in m)
    return (f" Oedema is {p['oedema_ml']:.0f} of the {p['lesion_ml']:.0f} ml of lesion in the 4 test cases ({cases}): "
            f"a mask of exactly the tumour core, and nothing else, would score pooled Dice {p['core_only_dice']:.3f} "
            "against the whole lesion -- the ceiling of a map that finds the core and misses the oedema.")


def run_brain_lesions(*, data_root: str | Path | None, out: str | Path, detectors: Sequence[str],
                      modalities: Sequence[str] = ("flair", "t1c"), quick: bool = False,
                      config_dir: str | Path = "configs", copy_to: str | Path | None = None,
                      reference: bool = True, cache_dir: str | Path | None = None,
                      merge: Sequence[str | Path] | None = None,
                      models_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``<out>/brain-lesions.json`` and ``.md``.

    ``merge``: earlier output folders (or JSON files); their (modality, detector) rows that
    this run does not have are kept, marked with where they come from.
    """
    import torch

    from medad.bench.common import earlier_runs, environment, run_record, select_rows, stamp_rows, write_benchmark
    from medad.config import data_root as _root
    from medad.errors import MedadError

    torch.set_num_threads(min(2, torch.get_num_threads()))
    record = run_record()
    bad = [m for m in modalities if m not in MODALITY_FILES]
    if bad:
        raise ConfigError(f"unknown modality {', '.join(bad)}; choose from {', '.join(MODALITY_FILES)}")
    # --merge files are read and checked now (folder or JSON, a brain-lesions file, same --quick), not after the run
    merged = earlier_runs(merge, "brain-lesions", quick=quick, check=_merge_check)
    # a wrong name fails now, not after the reference rows were computed; 'dae*' selects several
    detectors = select_rows(detectors, known_rows(Path(config_dir)), "detector") if detectors else []
    for name in detectors:
        for mod in modalities:
            cfg, _ = _detector_config(name, Path(config_dir), quick, mod)
            if cfg.detector != "ensemble":
                from medad import registry

                registry.get(cfg.detector)  # unknown: a ConfigError listing the known detectors
    root = _root(data_root)
    data = BenchData(root, quick, cache_dir=cache_dir, models_dir=None if models_dir is None else Path(models_dir))
    results, errors = [], []
    for mod in (modalities if detectors or not merge else []):  # no detectors + --merge: only merge
        if reference:
            results.append(run_reference(mod, data))
            _print(results[-1])
        for name in detectors:
            try:
                results.append(run_pipeline_detector(name, mod, data, Path(config_dir), quick))
                _print(results[-1])
            except (MedadError, RuntimeError, ValueError) as e:  # one failing detector does not sink the run
                errors.append(f"{name} / {mod}: {type(e).__name__}: {e}")
                print(f"FAILED {name} / {mod}: {e}")
    stamp_rows(results, record)  # before the merge: earlier rows keep their own record (or none)
    results = _merge_rows(results, merged, order=list(modalities))
    protocol = (__doc__ or "").split("Protocol (issue 3, section 4):", 1)[-1].strip()
    meta = {"date": environment()["date"], "quick": quick, "errors": errors, "protocol": protocol,
            "cpu_note": (f"{environment()['cpu_count']} CPU cores shared with other jobs: times are inflated by "
                         "contention" + (" — QUICK smoke run (few subjects, 1 epoch): not a benchmark figure" if quick else ""))}
    payload = {"protocol": protocol, "quick": quick, "data_root": str(root), "results": results, "errors": errors,
               "note": meta["cpu_note"]}
    j, m = write_benchmark(out, "brain-lesions", payload, _markdown(results, meta), record=record,
                           rows=[(r["modality"], r["detector"], r.get("run")) for r in results])
    if copy_to is not None:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(j, Path(copy_to) / j.name)
        shutil.copy(m, Path(copy_to) / m.name)
    return payload


def known_rows(config_dir: Path) -> list[str]:
    """The row names ``--detectors`` accepts: the ``brain_<name>[_<modality>].yaml`` configs of
    ``config_dir`` (else the configs that come with medad), then the registered detectors (their
    built-in defaults)."""
    from medad import registry

    names = []
    for f in sorted(_config_folder(config_dir).glob("brain_*.yaml")):
        stem = f.name[len("brain_"):-len(".yaml")]
        for mod in MODALITY_FILES:  # brain_dae_t1c.yaml is the t1c config of the row 'dae'
            stem = stem[: -len(mod) - 1] if stem.endswith("_" + mod) else stem
        names.append(stem)
    return list(dict.fromkeys(names + registry.available()))


def _threads() -> int:
    """torch CPU threads the timings of a row were taken with (the cores it could use)."""
    import torch

    return torch.get_num_threads()


def _trained_on_gpu(r: dict[str, Any]) -> bool:
    """Whether a row's model (or any member of an ensemble) was trained on a GPU (rows record
    ``trained_on``, :func:`medad.utils.device_description`; older rows do not, and were all
    trained on the CPU)."""
    return "cuda" in str(r.get("trained_on") or "")


def _case_counts(r: dict[str, Any]) -> np.ndarray | None:
    """Per test case ``(true positive, lesion, predicted)`` ml of a row's calibrated mask, ``(cases, 3)``,
    from its per-case Dice and volumes (Dice = 2 TP / (lesion + predicted)); ``None`` for rows without
    the predicted volume."""
    cases = list(r.get("per_case", {}).values())
    if not cases or any("predicted_ml" not in m for m in cases):
        return None
    return np.array([[m["dice"] * (m["lesion_ml"] + m["predicted_ml"]) / 2, m["lesion_ml"], m["predicted_ml"]]
                     for m in cases], float)


def _pooled_dice(c: np.ndarray) -> float:
    return float(2 * c[:, 0].sum() / max(c[:, 1].sum() + c[:, 2].sum(), 1e-12))


def dice_interval(r: dict[str, Any], ref: dict[str, Any] | None = None, *, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float, float] | None:
    """95 % bootstrap interval over the test CASES of a row's pooled calibrated Dice, or with ``ref``
    (a row on the same cases) of the difference ``r - ref`` (the same resampled cases for both):
    ``(estimate, low, high)``; ``None`` where the counts are missing. With 4 cases the interval is
    rough (a percentile bootstrap over so few cases runs narrow): it shows how much one case moves
    the figure, not a population range."""
    from medad.evaluation import bootstrap_ci

    a = _case_counts(r)
    b = None if ref is None else _case_counts(ref)
    if a is None or (ref is not None and (b is None or list(ref["per_case"]) != list(r["per_case"]))):
        return None
    if b is None:
        return bootstrap_ci(_pooled_dice, a, n_boot=n_boot, seed=seed)
    return bootstrap_ci(lambda x, y: _pooled_dice(x) - _pooled_dice(y), a, b, n_boot=n_boot, seed=seed)


def _reference_row(results: list[dict[str, Any]], modality: str) -> dict[str, Any] | None:
    """The modality's intensity baseline row (the 2D pipeline one, as the deep rows are scored)."""
    return next((r for r in results if r["modality"] == modality and r["detector"] == "intensity"), None)


def _interval_text(iv: tuple[float, float, float] | None) -> str:
    return "–" if iv is None else f"[{iv[1]:.3f}, {iv[2]:.3f}]"


def _goal_lines(results: list[dict[str, Any]]) -> list[str]:
    """Best deep detector per modality against the issue's goals, and the cost limits."""
    out = []
    # rows with a caveat (``note``, e.g. computed with stale inputs) do not count for the goals
    deep = [r for r in results if not r["detector"].startswith(CLASSICAL) and not r.get("note")]
    for mod, goals in (("flair", (("dice", 0.89), ("auprc", 0.95))), ("t1c", (("dice", 0.5),))):
        rows = [r for r in deep if r["modality"] == mod]
        for key, goal in goals if rows else ():
            best = max(rows, key=lambda r: r["pooled"][key])
            v = best["pooled"][key]
            extra = ""
            if key == "dice":  # how far one case moves it, and the paired difference to the baseline
                ref, iv = _reference_row(results, mod), dice_interval(best)
                ref = None if ref is not None and ref.get("note") else ref
                extra = "" if iv is None else f", 95 % case-bootstrap interval {_interval_text(iv)}"
                d = None if ref is None else dice_interval(best, ref)
                if d is not None:
                    extra += f"; minus the intensity baseline {d[0]:+.3f} {_interval_text(d)}"
            out.append(f"{mod} {'Dice (calibrated)' if key == 'dice' else key.upper()}: best deep {v:.3f} "
                       f"({best['detector']}{extra}) vs goal {goal} -> {'reached' if v >= goal else 'NOT reached'}")
    if any(r.get("note") for r in results):
        out.append("rows with a note (see under the table) are left out of these goal lines")
    slow = [f"{r['modality']}/{r['detector']} " + ("trained on a GPU" if _trained_on_gpu(r) else f"{r['train_seconds']:.0f} s")
            for r in deep if r["train_seconds"] > 1800 or _trained_on_gpu(r)]
    out.append("training under 30 min on 2 CPU cores: " + ("all deep detectors" if not slow else "NOT for " + ", ".join(slow)))
    slow = [f"{r['modality']}/{r['detector']} {r['inference_seconds_per_volume']:.1f} s"
            + (f" ({r['torch_threads']} thread{'s' if r['torch_threads'] > 1 else ''})" if "torch_threads" in r else "")
            for r in results if r["inference_seconds_per_volume"] > 20]
    out.append("a volume scored in under 20 s: " + ("all detectors" if not slow else "NOT for " + ", ".join(slow))
               + " (times on a shared CPU)")
    return out


def _merge_check(d: dict[str, Any]) -> None:
    """What a --merge file must hold for :func:`_merge_rows` (raises KeyError/TypeError if not)."""
    for r in d["results"]:
        r["modality"], r["detector"]  # noqa: B018 -- the keys rows are merged by


def _merge_rows(results: list[dict[str, Any]], merged: Sequence[tuple[Path, dict[str, Any]]],
                order: list[str]) -> list[dict[str, Any]]:
    """Rows of earlier runs (``(file, content)`` as :func:`medad.bench.common.earlier_run` read and
    checked them, in the order given) with this run's rows on top: a later source replaces a
    (modality, detector) row where it first appeared; new rows come after."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for f, old in merged:
        date = old.get("environment", {}).get("date")
        for r in old["results"]:
            rows[(r["modality"], r["detector"])] = {**r, "merged_from": str(f), "run_date": r.get("run_date", date)}
    for r in results:
        rows[(r["modality"], r["detector"])] = r
    rank = {m: i for i, m in enumerate(order)}
    return sorted(rows.values(), key=lambda r: rank.get(r["modality"], len(rank)))  # stable within a modality


def _print(r: dict[str, Any]) -> None:
    p = r["pooled"]
    print(f"[{r['modality']}] {r['detector']}: Dice {p['dice']:.3f} (optimistic {p['dice_optimistic']:.3f}), "
          f"AUPRC {p['auprc']:.3f}, AUROC {p['auroc']:.3f}"
          + (f", recall core {p['recall_core']:.3f} / oedema {p['recall_oedema']:.3f}" if "recall_core" in p else "")
          + (f", site-calibrated Dice {r['site_calibrated']['dice']:.3f}" if "site_calibrated" in r else "")
          + (f", voxel-calibrated Dice {r['voxel_calibrated']['dice']:.3f}" if "voxel_calibrated" in r else "")
          + (f", val patient Dice (slices / voxels) {_val_patient_cell(r)}" if "val_patient" in r else "")
          + f"; train {r['train_seconds']} s, {r['inference_seconds_per_volume']} s/volume")
