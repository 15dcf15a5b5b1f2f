"""Choose the brain ensemble's members, combination rule and voxel FPR on the BraTS validation
patient (a BraTS train-split case whose lesion slices were kept out of training and calibration)
-- never on the 4 test patients, whose figures are printed beside for the record only.

    python benchmarks/scripts/brain_ensemble_variants.py REGCACHE_DIR MODELS_DIR [OUT_JSON] [MAPS_DIR]

MODELS_DIR: the ``--models-dir`` of a ``medad bench brain-lesions --detectors dae,dae3d,vae,memae,pddpm``
run (FLAIR), which holds the candidate members; REGCACHE_DIR its ``--cache-dir``. MAPS_DIR (optional)
keeps each member's volume maps as .npy, so a rerun (e.g. more variants) does not score again.
Each variant is calibrated like the shipped ensemble: threshold at the FPR on the lesion-free brain
voxels of the held-out healthy scans, members scaled by their own voxel thresholds.
"""
import json, sys
from itertools import combinations
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from medad.bench.brain_lesions import BenchData, ModelStore, _detector_config, evaluate_maps
from medad.config import data_root
from medad.detectors.base import threshold_at_fpr
from medad.transforms.brain import remove_small_components
from pipelines.brain_lesions import config_key

CANDIDATES = ("dae", "dae3d", "vae", "memae", "pddpm")
SHIPPED = ("dae", "dae3d", "vae", "memae")  # configs/brain_ensemble.yaml before pddpm was a candidate
FPRS = (0.005,)  # the shipped ensemble's pixel_fpr (0.002 and 0.001 lost on the validation patient before)
COMB = {"mean": lambda a: a.mean(0), "median": lambda a: np.median(a, 0)}

args = sys.argv[1:]
data = BenchData(data_root(None), False, cache_dir=Path(args[0]) if args else None)
store = ModelStore(Path(args[1]) if len(args) > 1 else Path("models"), "flair", False)
maps_dir = Path(args[3]) if len(args) > 3 else None
cfgs = {n: _detector_config(n, Path("configs"), False, "flair")[0] for n in CANDIDATES}
ens_cfg = _detector_config("ensemble", Path("configs"), False, "flair")[0]
d = data.prepared("flair", ens_cfg.prep)
sets, les = d["sets"], d["lesions"]
members = {n: store[config_key(c)] for n, c in cfgs.items()}


def scaled_map(name: str, v) -> np.ndarray:
    """Member ``name``'s volume map of ``v`` in units of its voxel threshold (cached on disk)."""
    m, sid = members[name], v.record.subject_id
    f = None if maps_dir is None else maps_dir / store._dir(config_key(cfgs[name])).name / f"{sid}.npy"
    if f is not None and f.is_file():
        amap = np.load(f)
    else:
        amap = m.volume_map(v)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, amap)
    return amap / m.voxel_threshold


sup_model = members["dae"]
val = []  # (maps by member, support without lesion slices)
brats_val = None
for v, l in zip(sets["val"], les["val"]):
    mm = {n: scaled_map(n, v) for n in CANDIDATES}
    s = sup_model.support(v)
    ex = s.copy()
    if l is not None:
        ex &= ~np.asarray(l, bool).any(axis=(0, 1))[None, None, :]
    val.append((mm, ex))
    if l is not None and l.any() and v.record.subject_id.startswith("brats"):
        brats_val = (v, l, mm, s)
print("val", [v.record.subject_id for v in sets["val"]], "brats val:", brats_val[0].record.subject_id, flush=True)
test = [(v, l, {n: scaled_map(n, v) for n in CANDIDATES}, sup_model.support(v)) for v, l in zip(sets["test"], les["test"])]

# the shipped members, and every set of two or more that holds the pDDPM
subsets = [SHIPPED] + [s for k in range(2, len(CANDIDATES) + 1) for s in combinations(CANDIDATES, k) if "pddpm" in s]
out = {}
for subset in subsets:
    for cname, f in COMB.items():
        if len(subset) <= 2 and cname == "median":  # the median of 1 or 2 is the mean
            continue
        hv = np.concatenate([f(np.stack([mm[n] for n in subset]))[s] for mm, s in val])
        for fpr in FPRS:
            thr = threshold_at_fpr(hv, fpr)

            def case(item):
                v, l, mm, s = item
                amap = f(np.stack([mm[n] for n in subset]))
                return (v.record.subject_id, amap, remove_small_components((amap > thr) & s, ens_cfg.min_lesion_voxels),
                        l, v.brain)

            rv, rt = evaluate_maps([case(brats_val)])["pooled"], evaluate_maps([case(t) for t in test])["pooled"]
            key = f"{'+'.join(subset)} {cname}@{fpr}"
            out[key] = {"val": rv, "test": rt}
            print(f"{key:40s} VAL dice {rv['dice']:.3f} opt {rv['dice_optimistic']:.3f} auprc {rv['auprc']:.3f} | "
                  f"TEST dice {rt['dice']:.3f} opt {rt['dice_optimistic']:.3f} auprc {rt['auprc']:.3f}", flush=True)
best = max(out, key=lambda k: out[k]["val"]["dice"])
print(f"best on the validation patient: {best} (VAL dice {out[best]['val']['dice']:.3f}; "
      f"TEST dice {out[best]['test']['dice']:.3f}, shown for the record)", flush=True)
Path(args[2] if len(args) > 2 else "ensemble-variants.json").write_text(json.dumps(out, indent=1))
