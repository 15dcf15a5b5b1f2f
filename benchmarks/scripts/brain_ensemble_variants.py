"""Choose the brain ensemble's combination rule and voxel FPR on the BraTS validation patient (a
BraTS train-split case whose lesion slices were kept out of training and calibration) -- never on
the 4 test patients, whose figures are printed beside for the record only.

    python benchmarks/scripts/brain_ensemble_variants.py REGCACHE_DIR MODELS_DIR [OUT_JSON]

MODELS_DIR: the ``--models-dir`` of a ``medad bench brain-lesions --detectors dae,dae3d,vae,memae``
run (FLAIR), which holds the ensemble's members; REGCACHE_DIR its ``--cache-dir``.
"""
import json, sys
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from medad.bench.brain_lesions import BenchData, ModelStore, _detector_config, evaluate_maps
from medad.config import data_root
from medad.detectors.base import threshold_at_fpr
from medad.transforms.brain import remove_small_components
from pipelines.brain_lesions import BrainModel, config_key

cfg, _ = _detector_config("ensemble", Path("configs"), False, "flair")
data = BenchData(data_root(None), False, cache_dir=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
d = data.prepared("flair", cfg.prep)
sets, les = d["sets"], d["lesions"]
store = ModelStore(Path(sys.argv[2]) if len(sys.argv) > 2 else Path("models"), "flair", False)
members = [store[config_key(c)] for c in cfg.member_configs()]
ensemble = BrainModel(None, cfg, members=members)
print("members", [m.config.detector for m in members], flush=True)
sup_model = members[0]

COMB = {"mean": lambda a: a.mean(0), "median": lambda a: np.median(a, 0), "min": lambda a: a.min(0),
        "geomean": lambda a: np.exp(np.log(np.clip(a, 1e-3, None)).mean(0))}
val_maps, val_sup = [], []
brats_val = None
for v, l in zip(sets["val"], les["val"]):
    mm = ensemble.member_maps(v)
    s = sup_model.support(v)
    ex = s.copy()
    if l is not None:
        ex &= ~np.asarray(l, bool).any(axis=(0, 1))[None, None, :]
    val_maps.append(mm); val_sup.append(ex)
    if l is not None and l.any() and v.record.subject_id.startswith("brats"):
        brats_val = (v, l, mm, s)
print("val", [v.record.subject_id for v in sets["val"]], "brats val:", brats_val[0].record.subject_id, flush=True)
test = [(v, l, ensemble.member_maps(v), sup_model.support(v)) for v, l in zip(sets["test"], les["test"])]
out = {}
for name, f in COMB.items():
    hv = np.concatenate([f(mm)[s] for mm, s in zip(val_maps, val_sup)])
    for fpr in (0.005, 0.002, 0.001):
        thr = threshold_at_fpr(hv, fpr)
        def dice_of(item):
            v, l, mm, s = item
            amap = f(mm)
            pred = remove_small_components((amap > thr) & s, cfg.min_lesion_voxels)
            return (v.record.subject_id, amap, pred, l, v.brain)
        rv = evaluate_maps([dice_of(brats_val)])
        rt = evaluate_maps([dice_of(t) for t in test])
        out[f"{name}@{fpr}"] = {"val": rv["pooled"], "test": rt["pooled"]}
        print(f"{name:8s} fpr {fpr}: VAL dice {rv['pooled']['dice']:.3f} opt {rv['pooled']['dice_optimistic']:.3f} "
              f"auprc {rv['pooled']['auprc']:.3f} | TEST dice {rt['pooled']['dice']:.3f} opt {rt['pooled']['dice_optimistic']:.3f} "
              f"auprc {rt['pooled']['auprc']:.3f}", flush=True)
# members alone on the validation patient, for context
for m, k in zip(members, range(len(members))):
    v, l, mm, s = brats_val
    pred = remove_small_components((mm[k] > 1.0) & s, cfg.min_lesion_voxels)
    print(m.config.detector, "VAL", evaluate_maps([(v.record.subject_id, mm[k], pred, l, v.brain)])["pooled"], flush=True)
Path(sys.argv[3] if len(sys.argv) > 3 else "ensemble-variants.json").write_text(json.dumps(out, indent=1))
