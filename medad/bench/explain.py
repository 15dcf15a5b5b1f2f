"""``medad bench explain``: faithfulness, localisation and cost of every explanation method on
real data.

* BraTS 2015 (``mri/brats2015``): a supervised 2D slice classifier (the ``classifier`` detector,
  MONAI DenseNet, no pretrained weights) learns lesion vs no lesion on axial FLAIR slices of the
  2 ``train`` patients, preprocessed like the brain-lesion pipeline (1.5 mm, 128x128 centred on
  the brain); settings were chosen on the 2 ``validation`` patients and maps are computed for
  lesion slices of the 2 ``test`` patients. Measured: deletion / insertion AUC of the lesion
  log-odds against random maps (random block orders and spatially smooth random maps), the
  share of positive attribution inside the expert lesion mask (beside the lesion's share of the
  slice, the level a map without information reaches), and seconds per map.
* Bonn EEG (``eeg/bonn``): the ``cnn1d`` detector learns A,B (healthy) vs E (seizure) on
  1024-sample windows (5.9 s), split by segment. Set E segments are seizure from start to
  end, so "share inside the seizure" is not meaningful on them (it is 1 by construction); we
  measure localisation instead on spliced windows -- a healthy window (held-out A/B) whose
  tail from a random point on is replaced by a held-out seizure window -- and report the share
  of attribution in the seizure part beside that part's length share.

* MIT-BIH ECG beats (``ecg/mitbih_subset``, ``--parts ecg``): the beat explanations of the ECG
  beat screening models (``configs/screening_ecg_beats.yaml``: kNN on beat-minus-template + RR
  features; ``configs/screening_ecg_beats_predictor.yaml``: seq_predictor fused with an RR
  Mahalanobis model), trained through the pipeline on the normal beats of the MIT-BIH
  benchmark's training records, on flagged PVC beats of its test records: the beat-shape part by
  deletion of time blocks (deleted = the recording's median beat) against random orders, with
  intervals over beats and over whole records; the RR part (KernelSHAP over the 4 RR features
  against a regular rhythm) by efficiency (attributions add up to z(beat) - z(regular)) and by
  setting the top-attributed feature to 1 against a random one.

Faithfulness follows the log-odds of the model's probability (it saturates at 1.0, which makes
every deletion curve flat) and deletes blocks (region perturbation), with a bootstrap interval
over items for every margin; see ``READING_NOTE``.

Timings are wall-clock on this machine with ``--threads`` torch threads; on a shared machine
they are inflated by other processes (the JSON records the load average).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medad.bench.common import keep_run, markdown_table, run_record, stamp_rows, write_benchmark
from medad.errors import ReadError

WIN = 1024
#: lesion pixels (1.5 mm grid, about 110 mm2) for a slice to count as a lesion slice
MIN_LESION_PX = 50
#: region-perturbation block side (Samek et al. 2017) for the deletion / insertion curves, fixed on
#: validation data (BraTS validation patients; Bonn segments held out inside the training split)
PATCH_2D = 16
PATCH_1D = 32
#: what GradientSHAP does, recorded with each part's results (a part kept from an older run says so)
GRADIENT_SHAP_IMPL = "baselines exactly as given (no added noise), no input noise"
# Settings fixed on validation data (BraTS: the 2 validation patients; Bonn: segments held out
# inside the training split), never on the test items reported.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "gradcam": {},  # automatic layer: the classifier's last feature map (4x4 at its 64 px)
    # Grad-CAM on an earlier, finer feature map (8x8 instead of 4x4 at the classifier's 64 px)
    "gradcam@denseblock2": {"method": "gradcam", "layer": "1.features.denseblock2"},
    "ig": {"n_steps": 32},
    "gradient_shap": {"n_samples": 32},
    "kernel_shap": {"n_segments": 50, "n_samples": 200},
    "lime": {"n_segments": 50, "n_samples": 200},
}
SIGNAL_SETTINGS: dict[str, dict[str, Any]] = {
    "gradcam": {},  # automatic layer: the last residual stage (64 positions for 1024 samples)
    # GradientSHAP from the healthy reference window alone, no added noise, 128 samples: margin
    # over random maps 0.84 [0.70, 0.98] (61/64 validation E windows beat random), 0.79 with 32
    # samples, 0.75 with SmoothGrad noise 0.1, 0.46 with 0.2; a stack of 16 healthy training windows
    # as the baseline distribution 0.78 (58/64); the former noisy baselines 0.72 (60/64)
    "ig": {"n_steps": 32}, "gradient_shap": {"n_samples": 128},
    # 32 segments of 0.18 s (half a 3 Hz spike-wave cycle); 400 evaluations: 11/12 validation
    # items beat random, 10/12 with 200 (measured with the default cnn1d, before the change below)
    "kernel_shap": {"n_segments": 32, "n_samples": 400}, "lime": {"n_segments": 32, "n_samples": 400},
}


def load_brats_slices(root: Path, split: str, *, min_lesion: int = MIN_LESION_PX,
                      min_brain: int = 200) -> dict[str, np.ndarray]:
    """Axial FLAIR slices (N, 1, 128, 128) of one BraTS split with lesion masks and labels,
    preprocessed exactly like the brain-lesion pipeline does (:func:`medad.transforms.brain.
    preprocess_volume` with default :class:`~medad.transforms.brain.BrainPrepConfig`: the scan's
    brain mask, 1.5 mm in-plane grid of 128 x 128 centred on the brain, robust z-score inside the
    brain, 0 outside).

    A slice is used when it holds at least ``min_brain`` brain pixels; label 1 when it holds at
    least ``min_lesion`` lesion pixels on that grid, 0 when none; slices with a few lesion pixels
    are left out (ambiguous).
    """
    from medad.io.volumes import read_volume
    from medad.transforms.brain import BrainPrepConfig, preprocess_volume

    folder = root / "mri" / "brats2015" / split
    cases = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if not cases:
        raise ReadError("no BraTS case folders", folder)
    prep = BrainPrepConfig()
    xs, ms, bs, ys, subj = [], [], [], [], []
    for case in cases:
        rec = read_volume(case / "Flair_subtrMeanDivStd.nii.gz")
        vol = preprocess_volume(rec, prep, brain_mask=read_volume(case / "brainmask.nii.gz").data)
        lesion = np.moveaxis(vol.labels_to_model_grid(read_volume(case / "OTMultiClass.nii.gz").data > 0), -1, 0)
        x, brain = vol.slices(), vol.slice_brain()[:, 0]
        n_brain, n_les = brain.reshape(len(x), -1).sum(1), lesion.reshape(len(x), -1).sum(1)
        keep = (n_brain >= min_brain) & ((n_les == 0) | (n_les >= min_lesion))
        xs.append(x[keep])
        ms.append(lesion[keep])
        bs.append(brain[keep])
        ys.append((n_les[keep] >= min_lesion).astype(int))
        subj += [case.name] * int(keep.sum())
    # model-grid slices are RAS (x, y): rotated to anterior up so the example PNGs read as usual
    x, les, brain = (np.ascontiguousarray(np.rot90(np.concatenate(a), axes=(-2, -1))) for a in (xs, ms, bs))
    x = x.astype(np.float32)
    # "Deleted" = the median brain tissue value (0 after the robust z-score) inside the brain; the
    # background is already 0, so deleting it changes nothing.
    return {"x": x, "mask": les, "brain": brain, "baseline": np.zeros_like(x),
            "y": np.concatenate(ys), "subject": np.asarray(subj)}


def load_bonn_windows(root: Path) -> dict[str, np.ndarray]:
    """Non-overlapping 1024-sample windows of Bonn A, B (label 0) and E (label 1) with the
    segment each comes from (the split unit)."""
    from medad.datasets.signals import load_bonn

    recs = load_bonn(root / "eeg" / "bonn", sets=("A", "B", "E"))
    xs, ys, seg = [], [], []
    for r in recs:
        for i in range(r.n_times // WIN):
            xs.append(r.data[:, i * WIN:(i + 1) * WIN])
            ys.append(int(r.meta["abnormal"]))
            seg.append(f"{r.label}/{r.record_id}")
    return {"x": np.stack(xs).astype(np.float32), "y": np.asarray(ys), "segment": np.asarray(seg)}


def _load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def margin_summary(rows: list[dict[str, Any]], seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Per-item deletion margins (random minus map, against both random controls): how many items
    beat the control, the mean margin with a 95 % bootstrap interval over items (with ``groups``,
    e.g. the recording of each item: over whole groups, since items of one group are not
    independent), and whether the map is *clearly* better than the control: the interval's lower
    end above 0."""
    from medad.evaluation import bootstrap_ci

    out: dict[str, Any] = {}
    for ctrl, key in (("random", "random_deletion_auc"), ("smooth_random", "smooth_random_deletion_auc")):
        m = np.asarray([r[key] - r["deletion_auc"] for r in rows])
        _, lo, hi = bootstrap_ci(np.mean, m, n_boot=2000, seed=seed, groups=groups)
        out[f"items_better_than_{ctrl}_deletion"] = int((m > 0).sum())
        out[f"{ctrl}_deletion_margin_ci"] = [float(lo), float(hi)]
        out[f"clearly_better_than_{ctrl}"] = bool(lo > 0)
    return out


def evaluate_methods(det, items: np.ndarray, regions: np.ndarray | None, settings: dict[str, dict[str, Any]],
                     *, steps: int, n_random: int, out_png: Path | None = None, label: str = "",
                     baselines: np.ndarray | None = None, patch: int = 1, n_examples: int = 1,
                     sfreq: float = 173.61, ch_name: str = "EEG") -> dict[str, Any]:
    """Maps of every method for ``items`` (N, C, *spatial): faithfulness against random maps,
    share inside ``regions`` (N, *spatial) and seconds per map. ``baselines`` (N, C, *spatial):
    the 'absent' value per item for the perturbation/path methods and the deletion curves
    (default 0). ``out_png``: where the first ``n_examples`` items' maps are drawn (signals at
    ``sfreq``, channel ``ch_name``)."""
    from tqdm import tqdm

    from medad.explain import deletion_insertion, explain, share_inside

    res: dict[str, Any] = {}
    # warm-up (imports, first-call allocations) kept out of the timings: the first method (models
    # without gradients, e.g. a kNN, have no Grad-CAM)
    first = dict(next(iter(settings.values())))
    first.pop("absolute", None)
    explain(det, items[0], first.pop("method", next(iter(settings))), **first)
    for name, kw in settings.items():
        kw = dict(kw)
        method = kw.pop("method", name)
        # "absolute": rank by |map|, as a plot that shades the magnitude shows it (medad explain's
        # signal plots do): negative regions then count as important too
        absolute = bool(kw.pop("absolute", False))
        secs, rows = [], []
        for i in tqdm(range(len(items)), desc=f"{label} {name}", leave=False):
            base = 0.0 if baselines is None else baselines[i]
            t0 = time.perf_counter()
            m = explain(det, items[i], method, seed=i, baseline=base, **kw)
            secs.append(time.perf_counter() - t0)
            if absolute:
                m = np.abs(m)
            f = deletion_insertion(det, items[i], m, steps=steps, n_random=n_random, seed=i, baseline=base,
                                   patch=patch)
            keys = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
                    "smooth_random_deletion_auc", "smooth_random_insertion_auc")
            row = {k: f[k] for k in keys}
            row.update({f"prob_{k}": f["probability"][k] for k in keys if "probability" in f})
            row["all_zero"] = bool(not np.any(m))
            if regions is not None:
                row["share_inside"] = share_inside(m, regions[i])
                row["region_share"] = float(regions[i].mean())
            rows.append(row)
            if out_png is not None and i < n_examples and not absolute:  # plots shade |map| anyway
                suffix = f"_{i}" if n_examples > 1 else ""
                _save_example(items[i], m, regions[i] if regions is not None else None,
                              out_png.parent / f"{out_png.stem}_{name}{suffix}.png", f"{label} {name}", sfreq, ch_name)
        agg = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "all_zero"}
        for pre in ("", "prob_"):
            if f"{pre}deletion_auc" not in agg:
                continue
            agg[f"{pre}deletion_margin"] = agg[f"{pre}random_deletion_auc"] - agg[f"{pre}deletion_auc"]
            agg[f"{pre}smooth_deletion_margin"] = agg[f"{pre}smooth_random_deletion_auc"] - agg[f"{pre}deletion_auc"]
            agg[f"{pre}insertion_margin"] = agg[f"{pre}insertion_auc"] - agg[f"{pre}random_insertion_auc"]
        agg.update(margin_summary(rows))
        agg["curve_scale"] = f["scale"]
        agg["patch"] = int(patch)
        agg["n_random"] = int(n_random)
        agg["all_zero_maps"] = int(sum(r["all_zero"] for r in rows))
        agg["n_items"] = len(rows)
        agg["seconds_per_map_median"] = float(np.median(secs))
        # the fastest map is the one least slowed by other processes on a shared machine
        agg["seconds_per_map_min"] = float(np.min(secs))
        agg["settings"] = {"method": method, **kw, **({"absolute": True} if absolute else {})}
        agg["per_item"] = rows
        res[name] = agg
    return res


def _save_example(item, m, region, path: Path, title: str, sfreq: float = 173.61, ch_name: str = "EEG") -> None:
    from medad.report import save_overlay, save_signal_plot

    if item.ndim == 3:
        save_overlay(item[0], m, path, mask=region, title=title)
    else:
        spans = []
        if region is not None and region.any():
            idx = np.flatnonzero(region)
            spans = [(idx[0] / sfreq, (idx[-1] + 1) / sfreq, 1.0)]
        save_signal_plot(item, sfreq, path, spans=spans, attribution=m, ch_names=[ch_name], title=title)


def _example_report(out: Path, stem: str, case_id: str, score: float, methods: list[str], what: str) -> None:
    """An HTML report of the first explained item with every method's figure (as a clinician sees it)."""
    from medad.report.html import CaseReport, Figure, write_case_report

    figs = [Figure(png=str(out / f"{stem}_{m}.png"), title=m, kind=m.split("@")[0]) for m in methods
            if (out / f"{stem}_{m}.png").is_file()]
    write_case_report(out / f"{stem}_report.html", CaseReport(
        case_id=case_id, decision="abnormal" if score > 0.5 else "normal", score=score, threshold=0.5,
        method=", ".join(methods), model=what, figures=figs))


def bench_brats(root: Path, out: Path, quick: bool, device: str) -> dict[str, Any]:
    from medad import registry
    from medad.evaluation import auroc

    train, test = load_brats_slices(root, "train"), load_brats_slices(root, "test")
    # The classifier works at 64 px inside (its ImagePrep resizes): 4x cheaper to train on a CPU;
    # maps are still computed and compared on the 128 px input grid. Settings (this model, the
    # deletion block size, the method settings) were chosen on the 2 validation patients; the
    # figures below are on the 2 test patients only.
    det = registry.create("classifier", arch="densenet_small", image_size=64, epochs=8 if quick else 20,
                          batch_size=32, lr=1e-3, seed=0, device=device)
    t0 = time.perf_counter()
    det.fit(train["x"], y=train["y"])
    train_s = time.perf_counter() - t0
    scores = det.score(test["x"]).score
    pos = np.flatnonzero(test["y"] == 1)
    rng = np.random.default_rng(0)
    n = 3 if quick else 10
    # lesion slices the model calls lesion, spread over the test patients
    confident = pos[scores[pos] > 0.5]
    chosen = rng.choice(confident if len(confident) >= n else pos, size=min(n, len(pos)), replace=False)
    methods = evaluate_methods(det, test["x"][chosen], test["mask"][chosen], METHOD_SETTINGS,
                               steps=20, n_random=2, out_png=out / "explain_brats.png", label="BraTS",
                               baselines=test["baseline"][chosen], patch=PATCH_2D)
    _example_report(out, "explain_brats", f"BraTS slice ({test['subject'][chosen[0]]})", float(scores[chosen[0]]),
                    list(METHOD_SETTINGS), "lesion probability of the slice classifier; cyan outline = expert lesion mask")
    return {
        "protocol": ("train: axial FLAIR slices of the 2 BraTS train patients (lesion >= 50 pixels on the 1.5 mm grid "
                     "vs none), preprocessed like the brain-lesion pipeline (brain mask, 1.5 mm, 128x128 centred on "
                     "the brain, robust z-score); settings chosen on the 2 validation patients; maps on lesion "
                     "slices of the 2 test patients that the model calls lesion; deleted pixels take the median "
                     f"tissue value (0; the background is 0 already); deletion in {PATCH_2D}x{PATCH_2D}-pixel blocks"),
        "model": {"name": "classifier", "params": det.get_params(), "train_seconds": train_s,
                  "n_train_slices": int(len(train["y"])), "n_train_lesion": int(train["y"].sum()),
                  "n_test_slices": int(len(test["y"])), "test_slice_auroc": auroc(test["y"], scores),
                  "test_patients": sorted(set(test["subject"].tolist()))},
        "explained_slices": int(len(chosen)),
        "explained_patients": sorted(set(test["subject"][chosen].tolist())),
        "methods": methods,
        "gradient_shap_impl": GRADIENT_SHAP_IMPL,
    }


def healthy_reference(det, x: np.ndarray) -> np.ndarray:
    """The healthy training window with the median score among healthy training windows ``x``: the
    'absent' signal for the Bonn maps and curves. Zeros are no neutral input for a model that
    normalises each window (an all-zero window scores as seizure with high confidence), so
    'deleting' a segment means putting typical healthy EEG in its place."""
    s = det.score(x).score
    return x[np.argsort(s)[len(s) // 2]]


def bench_bonn(root: Path, out: Path, quick: bool, device: str) -> dict[str, Any]:
    from medad import registry
    from medad.evaluation import auroc, split_by_subject

    data = load_bonn_windows(root)
    split = split_by_subject(data["segment"], {"train": 0.8, "test": 0.2}, seed=0, stratify=data["y"])
    tr, te = np.asarray(split["train"]), np.asarray(split["test"])
    # kernel 3 and one block per stage (the default has kernel 7 and dilations 1, 2) keep the last
    # stage's receptive field near half a second: with the default net, whose last features each
    # see most of the window, Grad-CAM could not localise the seizure part of the validation
    # spliced windows (share 0.60 for a part covering 0.59 of the window, 7/12 items better than
    # random); with this one, 0.71 and 10/12, at the same validation AUROC (1.000 vs 0.999).
    det = registry.create("cnn1d", kernel_size=3, dilations=(1,), epochs=2 if quick else 10, batch_size=64,
                          seed=0, device=device)
    t0 = time.perf_counter()
    det.fit(data["x"][tr], y=data["y"][tr])
    train_s = time.perf_counter() - t0
    s_te = det.score(data["x"][te]).score
    ref = healthy_reference(det, data["x"][tr][data["y"][tr] == 0])
    rng = np.random.default_rng(1)
    n = 3 if quick else 12
    ictal = te[data["y"][te] == 1]
    healthy = te[data["y"][te] == 0]
    whole = rng.choice(ictal, size=min(n, len(ictal)), replace=False)
    res_whole = evaluate_methods(det, data["x"][whole], None, SIGNAL_SETTINGS, steps=20, n_random=3,
                                 label="Bonn E", baselines=np.repeat(ref[None], len(whole), 0), patch=PATCH_1D)
    # spliced: healthy start, seizure from a random point on (real signals, synthetic montage)
    spliced, regions = [], []
    for k in range(n):
        a, e = data["x"][rng.choice(healthy)], data["x"][rng.choice(ictal)]
        cut = int(rng.integers(WIN // 4, 3 * WIN // 4))
        x = a.copy()
        x[:, cut:] = e[:, cut:]
        spliced.append(x)
        reg = np.zeros(WIN, bool)
        reg[cut:] = True
        regions.append(reg)
    spliced, regions = np.stack(spliced), np.stack(regions)
    s_sp = det.score(spliced).score
    res_sp = evaluate_methods(det, spliced, regions, SIGNAL_SETTINGS, steps=20, n_random=3,
                              out_png=out / "explain_bonn_spliced.png", label="Bonn spliced",
                              baselines=np.repeat(ref[None], len(spliced), 0), patch=PATCH_1D)
    _example_report(out, "explain_bonn_spliced", "Bonn spliced window", float(s_sp[0]), list(SIGNAL_SETTINGS),
                    "seizure probability of the window; red span = the spliced-in seizure part")
    return {
        "protocol": ("cnn1d (kernel 3, one block per stage), A,B vs E, 1024-sample windows, 80/20 split by segment (settings chosen on segments held "
                     "out inside the training split); maps on held-out E windows (faithfulness only: E is seizure "
                     "throughout, so 'share inside the seizure' is 1 by construction and not reported) and on spliced "
                     "windows (held-out A/B start, E from a random point on) for the share inside the seizure part; "
                     "'absent' signal = a typical healthy training window (the median-scored A/B window), not zeros; "
                     f"deletion in blocks of {PATCH_1D} samples ({PATCH_1D / 173.61:.2f} s)"),
        "model": {"name": "cnn1d", "params": det.get_params(), "train_seconds": train_s,
                  "n_train_windows": int(len(tr)), "n_test_windows": int(len(te)),
                  "test_window_auroc": auroc(data["y"][te], s_te),
                  "spliced_mean_score": float(np.mean(s_sp)),
                  "reference_window_score": float(det.score(ref[None]).score[0]),
                  "all_zero_window_score": float(det.score(np.zeros_like(ref)[None]).score[0])},
        "seizure_windows": res_whole,
        "spliced_windows": res_sp,
        "gradient_shap_impl": GRADIENT_SHAP_IMPL,
    }


# ============================================================================= MIT-BIH ECG beats
#: the beat-mode screening configs whose beat explanations are checked, with the methods that
#: explain each one's beat-shape part: the kNN model has no gradients (KernelSHAP / LIME, as
#: ``medad explain`` offers); the seq_predictor is explained through its own network (explain_recording
#: explains the ScoreFusion's first member), so the gradient methods too
ECG_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "knn": ("screening_ecg_beats.yaml", ("kernel_shap", "lime")),
    "seq_predictor": ("screening_ecg_beats_predictor.yaml", ("ig", "gradient_shap", "kernel_shap", "lime")),
}
#: deletion block length (s): the 0.7 s beat in 16 blocks, as many as the 16 time segments
#: KernelSHAP / LIME use by default on a 1D item (4 columns of the kNN's 90 Hz shape block, 16
#: samples of the seq_predictor's 360 Hz residual)
ECG_BLOCK_S = 0.7 / 16
#: a PVC is explained when the model flags it (beat score above its threshold) and the explained
#: part's own z-score is at least this: the deletion curves follow the part's score relative to
#: the beat's own, which has no meaning for a part that does not call the beat abnormal
ECG_MIN_PART_Z = 1.0
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def ecg_beats(model, folder: Path) -> dict[str, np.ndarray]:
    """Every beat the screening ``model`` finds in the WFDB records of ``folder`` (its own R peaks,
    preprocessing and features, as ``medad screen run`` computes them), with its record, time (s)
    and whether it is a listed PVC (``<record>_pvc_beats.csv``, matched within 50 ms)."""
    from medad.datasets.signals import read_beat_csv
    from medad.io.signals import record_id_from_path
    from pipelines.screening import BEAT_MATCH_SECONDS, list_recordings, match_beats, recording_items

    feats, rec, t, pvc = [], [], [], []
    for f in list_recordings(folder):
        rid = record_id_from_path(f)
        r = recording_items(model, f, features=True)
        tt = r["times"]
        lst = f.parent / f"{rid}_pvc_beats.csv"
        listed = np.sort(read_beat_csv(lst) / float(r["header"].sfreq)) if lst.is_file() else np.zeros(0)
        feats.append(r["features"])
        rec += [rid] * len(tt)
        t.append(tt)
        pvc.append(match_beats(tt, listed, BEAT_MATCH_SECONDS) >= 0)
    return {"features": np.concatenate(feats), "record": np.asarray(rec), "time": np.concatenate(t),
            "pvc": np.concatenate(pvc)}


def rr_checks(rr_part, rr_x: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """KernelSHAP of the RR part's z-score (:func:`pipelines.screening.explain_rr`, as ``medad
    explain`` reports it) for the beats ``rr_x`` ``(N, 1, 4)``:

    * efficiency: the 4 attributions should add up to z(beat) - z(regular rhythm, every ratio 1);
    * removal: setting the top-attributed feature to 1 (regular) should lower the z-score more
      than setting a random one to 1 (its expectation: the mean drop over the 4 features), and
      ideally be the single removal that lowers it most.
    """
    from medad.evaluation import bootstrap_ci
    from pipelines.screening import explain_rr

    a = np.asarray(explain_rr(rr_part, rr_x, seed=seed), np.float64).reshape(len(rr_x), -1)
    z = rr_part.score(rr_x).score.astype(np.float64)
    gap = z - rr_part.score(np.ones_like(rr_x)).score.astype(np.float64)
    err = a.sum(1) - gap
    drops = np.empty_like(a)
    for j in range(a.shape[1]):
        xj = rr_x.copy()
        xj[:, 0, j] = 1.0
        drops[:, j] = z - rr_part.score(xj).score
    top = np.argmax(a, 1)
    d_top, d_rand = drops[np.arange(len(a)), top], drops.mean(1)
    _, lo, hi = bootstrap_ci(np.mean, d_top - d_rand, n_boot=2000, seed=seed)
    ci_groups = [float("nan")] * 2 if groups is None else \
        list(bootstrap_ci(np.mean, d_top - d_rand, n_boot=2000, seed=seed, groups=groups)[1:])
    rel = np.abs(err) / np.maximum(np.abs(gap), 1e-9)
    return {
        "n_beats": int(len(a)),
        "mean_rr_z": float(z.mean()), "mean_gap_to_regular": float(gap.mean()),
        "efficiency_abs_error_median": float(np.median(np.abs(err))),
        "efficiency_rel_error_median": float(np.median(rel)), "efficiency_rel_error_max": float(rel.max()),
        "beats_within_5pct": int((rel <= 0.05).sum()),
        "drop_top_mean": float(d_top.mean()), "drop_random_mean": float(d_rand.mean()),
        "drop_margin": float((d_top - d_rand).mean()), "drop_margin_ci": [float(lo), float(hi)],
        "clearly_better_than_random": bool(lo > 0), "drop_margin_ci_by_record": ci_groups,
        "beats_top_beats_random": int((d_top > d_rand).sum()),
        "beats_top_is_best_removal": int((top == np.argmax(drops, 1)).sum()),
        "top_feature_counts": np.bincount(top, minlength=a.shape[1]).tolist(),
        "per_item": {"attributions": a.round(4).tolist(), "gap": gap.round(4).tolist(),
                     "drops": drops.round(4).tolist(), "rr_features": rr_x[:, 0].round(4).tolist()},
    }


def _save_rr_example(rr_x: np.ndarray, attr: list[list[float]], path: Path, title: str) -> None:
    """Bars of the RR attributions of a few beats, each feature labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.screening import RR_FEATURE_NAMES

    a = np.asarray(attr)
    fig, axes = plt.subplots(1, len(a), figsize=(4 * len(a), 3.2), squeeze=False)
    for ax, ai, xi in zip(axes[0], a, rr_x[:, 0]):
        ax.barh(range(len(ai)), ai, color=["tab:red" if v > 0 else "tab:blue" for v in ai])
        ax.set_yticks(range(len(ai)), [f"{n}\n= {v:.2f}" for n, v in zip(RR_FEATURE_NAMES, xi)], fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("KernelSHAP (RR z-score)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from medad.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def ecg_faithfulness(train_dir: Path, test_dir: Path, out: Path, *, models=tuple(ECG_MODELS), n_items: int = 150,
                     seed: int = 0, quick: bool = False, n_random: int = 3) -> dict[str, Any]:
    """Fit each beat-mode screening model of ``models`` (:data:`ECG_MODELS`) through the pipeline on
    the normal recordings of ``train_dir`` (listed PVCs left out, whole recordings held out for the
    threshold), find the beats of ``test_dir``, and check the explanations of up to ``n_items``
    flagged PVC beats: the shape part by deletion against random orders (``evaluate_methods``;
    'absent' = the recording's median beat, i.e. 0 in beat minus template), the RR part by
    :func:`rr_checks`. Example PNGs go to ``out``."""
    from pipelines.screening import BeatPart, ScreeningConfig, ScreeningModel, train_screening

    res: dict[str, Any] = {}
    for name in models:
        config, methods = ECG_MODELS[name]
        cfg = ScreeningConfig.from_yaml(CONFIGS_DIR / config)
        cfg.train_exclude_beats = "{record}_pvc_beats.csv"
        cfg.seed = seed
        if quick and "epochs" in cfg.detector_params:
            cfg.detector_params = {**cfg.detector_params, "epochs": 2}
        t0 = time.perf_counter()
        model = ScreeningModel.load(train_screening(train_dir, out / f"ecg_model_{name}", cfg, progress=False))
        train_s = time.perf_counter() - t0
        b = ecg_beats(model, test_dir)
        det = model.detector
        shape, rr = BeatPart(det, 0), BeatPart(det, 1)
        x_shape, x_rr = shape.of(b["features"]), rr.of(b["features"])
        z_shape = shape.score(x_shape).score.astype(np.float64)
        z_rr = rr.score(x_rr).score.astype(np.float64)
        flagged = (z_shape + z_rr) / 2 > model.threshold  # the beat score is the mean of its parts
        rng = np.random.default_rng(seed)

        def pick(z: np.ndarray) -> np.ndarray:
            """Up to ``n_items`` candidates, spread as evenly over the test records as they allow
            (record 200 holds most PVCs), at random inside each record."""
            cand = np.flatnonzero(b["pvc"] & flagged & (z >= ECG_MIN_PART_Z))
            left = {r: list(rng.permutation(cand[b["record"][cand] == r])) for r in sorted(set(b["record"][cand]))}
            chosen: list[int] = []
            while len(chosen) < n_items and any(left.values()):
                for r in left:
                    if left[r] and len(chosen) < n_items:
                        chosen.append(int(left[r].pop()))
            return np.sort(np.asarray(chosen, dtype=np.int64))

        sel_shape, sel_rr = pick(z_shape), pick(z_rr)
        fusion = cfg.beat_fusion
        # what `medad explain` explains: the signal member on the residual, or the kNN's shape block
        explained = det.members[0] if fusion else shape
        rate = model.sfreq / (1 if fusion else cfg.beat_step_at(model.sfreq))
        patch = max(1, int(round(ECG_BLOCK_S * rate)))
        items = x_shape[sel_shape]
        n_blocks = -(-items.shape[-1] // patch)
        # medad explain's defaults; each also ranked by |map| ("(abs)"), the magnitude its signal plots shade
        settings: dict[str, dict[str, Any]] = {}
        for meth in methods:
            settings[meth] = {}
            settings[f"{meth} (abs)"] = {"method": meth, "absolute": True}
        shape_res = evaluate_methods(explained, items, None, settings, steps=n_blocks, n_random=n_random,
                                     out_png=out / f"explain_ecg_{name}.png", label=f"MIT-BIH PVC, {name}",
                                     patch=patch, n_examples=3, sfreq=rate,
                                     ch_name=f"{model.channels[0]} - median beat")
        recs = b["record"][sel_shape]
        for m in shape_res.values():  # margins per record: the items of one record are not independent
            margins = np.asarray([r["random_deletion_auc"] - r["deletion_auc"] for r in m["per_item"]])
            m["by_record"] = margin_summary(m["per_item"], groups=recs)
            m["per_record_margin"] = {r: {"n": int((recs == r).sum()), "mean_margin": float(margins[recs == r].mean())}
                                      for r in sorted(set(recs.tolist()))}
            for r, it in zip(sel_shape, m["per_item"]):
                # 4 decimals keep the JSON small (150 beats x every method) and are far below the margins
                it.update({k: round(v, 4) for k, v in it.items() if isinstance(v, float)})
                it["record"], it["time_s"] = str(b["record"][r]), round(float(b["time"][r]), 3)
        rr_res = rr_checks(rr, x_rr[sel_rr], seed=seed, groups=b["record"][sel_rr])
        _save_rr_example(x_rr[sel_rr][:3], rr_res["per_item"]["attributions"][:3], out / f"explain_ecg_{name}_rr.png",
                         f"MIT-BIH PVC, {name}: KernelSHAP of the RR z-score vs a regular rhythm (all ratios 1)")
        rr_res["per_item"]["record"] = b["record"][sel_rr].tolist()
        # the same KernelSHAP maps (4 segments = the 4 features, regular rhythm as 'absent') as a
        # deletion curve over all 4 features against random feature orders
        rr_res["deletion"] = evaluate_methods(rr, x_rr[sel_rr], None, {"kernel_shap": {"n_segments": 4}}, steps=4,
                                              n_random=n_random, label=f"MIT-BIH PVC RR, {name}",
                                              baselines=np.ones_like(x_rr[sel_rr]), patch=1)["kernel_shap"]
        rr_res["deletion"]["by_record"] = margin_summary(rr_res["deletion"]["per_item"], groups=b["record"][sel_rr])
        res[name] = {
            "config": config, "detector": cfg.detector, "detector_params": cfg.detector_params,
            "explained_model": type(explained).__name__ + ("" if fusion else " (BeatPart: kNN beat-shape block)"),
            "explained_scale": "raw score of the signal member" if fusion else "beat-shape z-score",
            "train_seconds": train_s, "threshold": float(model.threshold),
            "n_test_beats": int(len(flagged)), "n_test_pvc_matched": int(b["pvc"].sum()),
            "n_pvc_flagged": int((b["pvc"] & flagged).sum()),
            "n_pvc_shape_candidates": int((b["pvc"] & flagged & (z_shape >= ECG_MIN_PART_Z)).sum()),
            "n_pvc_rr_candidates": int((b["pvc"] & flagged & (z_rr >= ECG_MIN_PART_Z)).sum()),
            "shape_records": {r: int((b["record"][sel_shape] == r).sum()) for r in sorted(set(b["record"][sel_shape]))},
            "block_samples": patch, "item_rate_hz": rate, "n_blocks": n_blocks,
            "shape": shape_res, "rr": rr_res,
        }
    return res


def bench_ecg(root: Path, out: Path, quick: bool, device: str) -> dict[str, Any]:
    """The ECG part on MIT-BIH: train on the normal beats of the benchmark's training records
    (:data:`medad.bench.signals.MITBIH_TRAIN`), explain PVC beats of its test records."""
    from medad.bench.signals import MITBIH_TEST, MITBIH_TRAIN, link_records
    from medad.datasets import dataset_root

    src = dataset_root("wfdb_beats", data_root=root)
    work = out / "explain_ecg"
    train_dir = link_records(src, MITBIH_TRAIN, work / "train")
    test_dir = link_records(src, MITBIH_TEST, work / "test")
    n = 20 if quick else 150
    res = ecg_faithfulness(train_dir, test_dir, out, n_items=n, quick=quick)
    return {
        "protocol": (f"screening pipeline, beat mode (medad screen train): each config trained on the normal beats of "
                     f"MIT-BIH records {', '.join(MITBIH_TRAIN)} (listed PVCs left out; whole normal records held "
                     f"out for the 5 % threshold, as the MIT-BIH benchmark's pipeline section), beats of records "
                     f"{', '.join(MITBIH_TEST)} found by the pipeline's own R-peak detector; explained: up to {n} "
                     f"PVC beats (random, seed 0, spread as evenly over the test records as they allow) that the model flags and whose explained part has z >= "
                     f"{ECG_MIN_PART_Z:g}. Shape part: the beat minus its recording's median beat, explained as "
                     f"`medad explain` does with its default settings; deletion in {ECG_BLOCK_S * 1000:.0f} ms time "
                     f"blocks (16 per beat), 'absent' = the recording's median beat (0 in beat minus template); "
                     f"the curve follows the explained score relative to the beat's own. RR part: KernelSHAP of the "
                     f"RR z-score against a regular rhythm (every RR ratio 1), efficiency and removal checks"),
        "n_items_asked": n, "gradient_shap_impl": GRADIENT_SHAP_IMPL,
        "models": res,
    }


def _ci(r: dict[str, Any], ctrl: str) -> str:
    lo, hi = r[f"{ctrl}_deletion_margin_ci"]
    return f"[{lo:.2f}, {hi:.2f}]"


def _rows(methods: dict[str, Any], with_share: bool) -> list[list[Any]]:
    rows = []
    for m, r in methods.items():
        rows.append([m, r["deletion_auc"], r["random_deletion_auc"], r["deletion_margin"], _ci(r, "random"),
                     "yes" if r["clearly_better_than_random"] else "no",
                     f"{r['items_better_than_random_deletion']}/{r['n_items']}",
                     r["smooth_deletion_margin"], _ci(r, "smooth_random"),
                     "yes" if r["clearly_better_than_smooth_random"] else "no",
                     r.get("prob_deletion_margin"), r["insertion_auc"], r["insertion_margin"],
                     r.get("share_inside") if with_share else None, r.get("region_share") if with_share else None,
                     r["all_zero_maps"], r["seconds_per_map_median"] * 1000, r["seconds_per_map_min"] * 1000])
    return rows


READING_NOTE = (
    "\nWhat the curves follow: the log-odds of the lesion / seizure probability, computed from the network's "
    "logits (log p/(1-p)), not the probability itself. The probability saturates at 1.0: it stays there while "
    "most of the input is deleted, so every deletion order gives the same flat curve and the test cannot tell a "
    "good map from a random one (the previous run of this benchmark, on probabilities, showed exactly that on "
    "Bonn). The log-odds rank inputs like the probability but keep falling. The maps explain the same log-odds "
    "(a saturated probability has almost no gradient). 'prob. margin' = the same margin on the probability "
    "scale, from the same forward passes.\n\n"
    "How positions are deleted: in square blocks (images) or time blocks (signals), ranked by the map's mean "
    "in the block (region perturbation, Samek et al. 2017); the random control deletes the same blocks in a "
    "random order. Deleting single pixels or samples at random scatters holes everywhere, an unnatural input "
    "under which a CNN's output collapses whatever the order, a control a map of regions cannot fairly be held "
    "to. 'smooth random' = spatially smooth random maps (contiguous random regions), a second control.\n\n"
    "'Clearly better' = the 95 % bootstrap interval (over explained items) of the mean margin lies above 0. "
    "Units of AUC and margins: log-odds (the area under the log-odds curve over the deleted fraction 0..1).\n\n"
    "Cost: wall-clock time per map (median and fastest map). With a load average above the 2 cores, other "
    "processes inflate these times several-fold (and torch's waiting threads lose their cores too).\n")

HEADER = ["method", "deletion AUC", "random", "margin", "95% CI", "clearly better", "items < random",
          "margin vs smooth random", "95% CI", "clearly better", "prob. margin", "insertion AUC", "ins. margin",
          "share inside", "region share", "all-zero maps", "ms / map (median)", "ms / map (min)"]


PARTS = ("brats", "bonn", "ecg")


def run(*, data_root=None, out: Path = Path("outputs/bench"), quick: bool = False, threads: int = 2,
        device: str = "cpu", part: str | Sequence[str] = "all") -> dict[str, Any]:
    """Run the BraTS, Bonn and MIT-BIH ECG parts (``part``: all, brats, bonn or ecg, or a list of
    them: ``medad bench explain --parts``), print the tables and write ``<out>/explain.json`` and
    ``.md``. Running some parts keeps the other parts' results from an existing
    ``<out>/explain.json`` (marked with the date of the run they came from); an earlier file
    without the ECG part keeps BraTS and Bonn and says the ECG part was not run."""
    import json

    import torch

    from medad.config import data_root as resolve_root
    from medad.errors import InputError

    names = [part] if isinstance(part, str) else list(part)
    bad = [p for p in names if p not in ("all",) + PARTS]
    if bad or not names:
        raise InputError(f"part must be all, {', '.join(PARTS)} (one or several), got "
                         f"{', '.join(repr(b) for b in bad) if bad else 'none'}")
    chosen = PARTS if "all" in names else tuple(p for p in PARTS if p in names)
    label = "all" if chosen == PARTS else ",".join(chosen)  # as --parts takes it
    if int(threads) < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(int(threads))
    record = run_record()
    root = resolve_root(data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if label != "all":
        try:
            previous = json.loads((out / "explain.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise ReadError(f"--parts {label} needs the other parts' results in an earlier explain.json", out) from None
        if not isinstance(previous, dict):
            raise ReadError("not an explain benchmark file", out / "explain.json")
        if previous.get("quick") is not None and bool(previous["quick"]) != bool(quick):
            # the file has one 'quick' flag: a quick part beside full ones would be misread
            raise InputError(f"--parts {label}{' --quick' if quick else ''} would keep the other parts of a "
                             f"{'quick' if previous['quick'] else 'full'} run: run with"
                             f"{'' if previous['quick'] else 'out'} --quick, or --parts all", out / "explain.json")
        for other in ("brats", "bonn"):
            if other in chosen:
                continue
            res = previous.get(other, {})
            first = next(iter((res.get("methods") or res.get("seizure_windows") or {}).values()), {})
            if "clearly_better_than_random" not in first:
                raise ReadError("the earlier explain.json comes from an older version of this benchmark: run --parts all",
                                out / "explain.json")
    load_before = _load_avg()
    t0 = time.perf_counter()
    benches = {"brats": bench_brats, "bonn": bench_bonn, "ecg": bench_ecg}
    parts: dict[str, Any] = {}
    for name in PARTS:
        if name in chosen:
            parts[name] = benches[name](root, out, quick, device)
        elif previous.get(name):
            parts[name] = _kept(previous, name)
        else:
            parts[name] = None  # only the ECG part can be missing (an earlier file made before it existed)
    run_info = {"threads": int(threads), "load_average_before": load_before, "load_average_after": _load_avg()}
    for name in chosen:
        parts[name]["run_info"] = run_info
    stamp_rows(parts.values(), record)  # kept parts keep the record of the run that made them (or none)
    brats, bonn, ecg = parts["brats"], parts["bonn"], parts["ecg"]
    results = {"quick": quick, "threads": int(threads), "part_run": label, "load_average_before": load_before,
               "load_average_after": run_info["load_average_after"], "total_seconds": time.perf_counter() - t0,
               "brats": brats, "bonn": bonn, "ecg": ecg,
               "goals": {"gradcam_ms_per_128_slice": 50, "shap_lime_s_per_slice": 3,
                         "every_method_better_than_random_deletion": True}}
    g = brats["methods"]
    results["goals_met"] = {
        "gradcam_ms (min over maps)": g["gradcam"]["seconds_per_map_min"] * 1000 <= 50,
        "gradcam_ms (median)": g["gradcam"]["seconds_per_map_median"] * 1000 <= 50,
        "shap_lime_s (median)": all(g[m]["seconds_per_map_median"] <= 3 for m in ("kernel_shap", "lime")),
    }
    groups = [("brats", g), ("bonn_seizure", bonn["seizure_windows"]), ("bonn_spliced", bonn["spliced_windows"])]
    groups += [(f"ecg {name} shape", m["shape"]) for name, m in ((ecg or {}).get("models") or {}).items()]
    for name, group in groups:
        for ctrl in ("random", "smooth_random"):
            results["goals_met"][f"every method clearly better than {ctrl.replace('_', ' ')} ({name})"] = all(
                r[f"clearly_better_than_{ctrl}"] for r in group.values())
            if name.startswith("ecg"):  # beats of one record are not independent: the interval over records
                results["goals_met"][f"every method clearly better than {ctrl.replace('_', ' ')} ({name}, "
                                     f"interval over records)"] = all(
                    r["by_record"][f"clearly_better_than_{ctrl}"] for r in group.values())
    text = render_markdown(results)
    print(text)
    write_benchmark(out, "explain", results, text, record=record,
                    rows=[("", name, parts[name].get("run")) for name in PARTS if parts[name]])
    return results


def _kept(previous: dict[str, Any], name: str) -> dict[str, Any]:
    """A part's results kept from an earlier explain.json, with the date and the conditions
    (threads, load) of the run they came from."""
    res = keep_run(previous[name])
    res.setdefault("from_run", previous["environment"]["date"])
    res.setdefault("run_info", {k: previous.get(k) for k in ("threads", "load_average_before", "load_average_after")})
    return res


def _part_header(res: dict[str, Any]) -> str:
    """Which run a part's figures come from, its torch threads and load, and whether its
    GradientSHAP row comes from an earlier implementation."""
    info = res.get("run_info") or {}
    line = (f"(results of the run of {res['from_run']}; " if "from_run" in res else "(results of this run; ") + \
        f"torch threads {info.get('threads', '?')}, load average before/after {info.get('load_average_before')} / " \
        f"{info.get('load_average_after')})\n"
    if res.get("gradient_shap_impl") != GRADIENT_SHAP_IMPL:
        line += ("\nThe gradient_shap row of this part comes from the earlier GradientSHAP (baselines: the given one "
                 "plus 7 copies with noise of 0.1 x the input's standard deviation, the same noise on the input, "
                 "32 samples), not the current one (" + GRADIENT_SHAP_IMPL + ").")
        line += "\n"
    return line + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """The Markdown summary of a results dict (as written to ``explain.json``)."""
    brats, bonn, quick = results["brats"], results["bonn"], results["quick"]
    g = brats["methods"]
    md = [f"# Explanation methods: faithfulness, localisation, cost{' (quick)' if quick else ''}\n",
          "Each part below says which run its figures come from, with the torch threads and the load average "
          "of that run (the machine is shared: timings are inflated by other processes).\n",
          "Deletion AUC: lower is better (the output falls fast when the top-ranked regions are deleted); margin = "
          "random - method (> 0: better than a random map; mean over items, each item's control being the mean "
          "of a few random maps, n_random in the JSON).\n",
          f"\n## BraTS FLAIR slices (128x128): {brats['protocol']}\n",
          _part_header(brats),
          f"Classifier: test slice AUROC {brats['model']['test_slice_auroc']:.3f}, trained in "
          f"{brats['model']['train_seconds']:.0f} s on {brats['model']['n_train_slices']} slices; "
          f"{brats['explained_slices']} lesion slices from "
          f"{len(brats['explained_patients'])} patients explained. 'share inside' = positive attribution inside the "
          "expert lesion mask; 'region share' = the lesion's share of the slice (what a map without information gets).\n\n",
          markdown_table(HEADER, _rows(g, True)),
          f"\n## Bonn EEG: {bonn['protocol']}\n",
          _part_header(bonn),
          f"cnn1d: test window AUROC {bonn['model']['test_window_auroc']:.3f}, trained in "
          f"{bonn['model']['train_seconds']:.0f} s. Seizure probability of the healthy reference window "
          f"{bonn['model'].get('reference_window_score', float('nan')):.3g}; of an all-zero window "
          f"{bonn['model'].get('all_zero_window_score', float('nan')):.3g}.\n\n### Seizure (E) windows\n\n",
          markdown_table(HEADER, _rows(bonn["seizure_windows"], False)),
          "\n### Spliced windows (healthy start, seizure end): share of attribution in the seizure part\n\n",
          markdown_table(HEADER, _rows(bonn["spliced_windows"], True)),
          _ecg_markdown(results.get("ecg")),
          "\n## Goals\n\n" + "\n".join(f"- {k}: {'met' if v else 'NOT met'}" for k, v in results["goals_met"].items()) + "\n"]
    md.insert(3, READING_NOTE)
    return "".join(md)



def _verdict(r: dict[str, Any]) -> str:
    """Faithful or not: the stricter of the intervals over beats and (ECG) over whole records."""
    def level(x: dict[str, Any]) -> int:
        return int(x["clearly_better_than_random"]) + int(x["clearly_better_than_smooth_random"])

    words = {2: "clearly better than both random controls", 1: "clearly better than one random control only",
             0: "NOT clearly better than random"}
    by = r.get("by_record")
    levels = [level(r)] + ([level(by)] if by is not None else [])
    text = {2: "faithful", 1: "partly faithful", 0: "NOT shown faithful"}[min(levels)]
    text += f": over beats {words[levels[0]]}"
    if by is not None:
        text += (f"; over records {words[levels[1]]} (random {_ci(by, 'random')}, smooth random "
                 f"{_ci(by, 'smooth_random')})")
    worse = {k: v for k, v in (r.get("per_record_margin") or {}).items() if v["mean_margin"] <= 0}
    if worse:
        text += "; worse than random on record " + ", ".join(
            f"{k} (mean margin {v['mean_margin']:.2f}, n={v['n']})" for k, v in worse.items())
    return text


def _ecg_markdown(ecg: dict[str, Any] | None) -> str:
    """The MIT-BIH ECG section (or a line saying it was not run)."""
    if not ecg:
        return "\n## MIT-BIH ECG beats\n\nNot run in the run that wrote this file (`--parts ecg` adds it).\n"
    md = [f"\n## MIT-BIH ECG beats: {ecg['protocol']}\n", _part_header(ecg)]
    verdicts = {f"{name} {k}": _verdict(r).split(":")[0] for name, m in ecg["models"].items() for k, r in m["shape"].items()}
    md.append("Summary (beat shape; the stricter of the intervals over beats and over records): "
              + "; ".join(f"{v}: " + (", ".join(k for k, w in verdicts.items() if w == v) or "none")
                          for v in ("faithful", "partly faithful", "NOT shown faithful")) + ".\n\n")

    def ci_pos(ci: list[float]) -> str:
        return "yes" if ci[0] > 0 else "no"

    md.append("Summary (RR part, KernelSHAP): " + "; ".join(
        f"{name}: attributions add up to z(beat) - z(regular) within 5 % on {m['rr']['beats_within_5pct']}/"
        f"{m['rr']['n_beats']} beats; the top feature set to 1 lowers the RR z more than a random one, clearly: "
        f"over beats {ci_pos(m['rr']['drop_margin_ci'])}, over records {ci_pos(m['rr']['drop_margin_ci_by_record'])} "
        f"(mean drop {m['rr']['drop_top_mean']:.2f} vs {m['rr']['drop_random_mean']:.2f}); deletion over all 4 "
        f"features clearly better than random: over beats {'yes' if m['rr']['deletion']['clearly_better_than_random'] else 'no'}, "
        f"over records {'yes' if m['rr']['deletion']['by_record']['clearly_better_than_random'] else 'no'}"
        for name, m in ecg["models"].items()) + ".\n")
    for name, m in ecg["models"].items():
        md.append(
            f"\n### {name} (configs/{m['config']})\n\nTrained in {m['train_seconds']:.0f} s; {m['n_test_beats']} test "
            f"beats, {m['n_test_pvc_matched']} of them listed PVCs, {m['n_pvc_flagged']} flagged; "
            f"{m['n_pvc_shape_candidates']} flagged PVCs with shape z >= {ECG_MIN_PART_Z:g}, of which "
            f"{next(iter(m['shape'].values()))['n_items']} explained (per record: "
            + ", ".join(f"{r} {k}" for r, k in m["shape_records"].items()) + "). "
            f"Explained: {m['explained_model']}, {m['explained_scale']}, on {m['item_rate_hz']:g} Hz input; deletion in "
            f"blocks of {m['block_samples']} samples ({m['n_blocks']} per beat).\n\n"
            "Beat shape, deletion against random time-block orders (AUC units: the explained score relative to the "
            "beat's own, 1 = the beat). '(abs)': the same maps ranked by their magnitude, which is what `medad "
            "explain`'s signal plots shade (a region that lowers the score looks as important there as one that "
            "raises it):\n\n")
        md.append(markdown_table(HEADER, _rows(m["shape"], False)))
        md.append("\nVerdict per method:\n\n" + "".join(f"- **{k}**: {_verdict(r)}\n" for k, r in m["shape"].items())
                  + "\nMean margin vs random per test record (items of one record are not independent): "
                  + "; ".join(f"{k}: " + ", ".join(f"{rec} {v['mean_margin']:.2f} (n={v['n']})"
                                                    for rec, v in r["per_record_margin"].items())
                              for k, r in m["shape"].items()) + ".\n")
        r = m["rr"]
        lo, hi = r["drop_margin_ci"]
        from pipelines.screening import RR_FEATURE_NAMES

        md.append(
            f"\nRR part (KernelSHAP, 4 features, vs a regular rhythm) on {r['n_beats']} flagged PVCs with RR z >= "
            f"{ECG_MIN_PART_Z:g} ({m['n_pvc_rr_candidates']} candidates): mean RR z {r['mean_rr_z']:.2f}, mean "
            f"z(beat) - z(regular) {r['mean_gap_to_regular']:.2f}.\n\n")
        md.append(markdown_table(
            ["check", "figure"],
            [["efficiency: median absolute error of sum of attributions vs z(beat) - z(regular)",
              r["efficiency_abs_error_median"]],
             ["efficiency: median / max relative error", f"{r['efficiency_rel_error_median']:.3g} / "
                                                          f"{r['efficiency_rel_error_max']:.3g}"],
             ["efficiency: beats within 5 %", f"{r['beats_within_5pct']}/{r['n_beats']}"],
             ["removal: mean z drop, top-attributed feature set to 1", r["drop_top_mean"]],
             ["removal: mean z drop, a random feature set to 1 (expectation)", r["drop_random_mean"]],
             ["removal: margin (top - random), 95 % CI", f"{r['drop_margin']:.3f} [{lo:.3f}, {hi:.3f}]"],
             ["removal: clearly better than random", "yes" if r["clearly_better_than_random"] else "no"],
             ["removal: margin 95 % CI over records", "[{:.3f}, {:.3f}]".format(*r["drop_margin_ci_by_record"])],
             ["removal: beats where top beats random", f"{r['beats_top_beats_random']}/{r['n_beats']}"],
             ["removal: beats where top is the single best removal", f"{r['beats_top_is_best_removal']}/{r['n_beats']}"],
             ["top feature counts", ", ".join(f"{n}: {c}" for n, c in zip(RR_FEATURE_NAMES, r["top_feature_counts"]))]]))
        d = r["deletion"]
        md.append(
            f"\nThe same RR maps as a deletion curve over all 4 features (set to 1 in the map's order, vs random "
            f"orders; relative to the beat's RR z-score): deletion AUC {d['deletion_auc']:.3f} vs random "
            f"{d['random_deletion_auc']:.3f}, margin {d['deletion_margin']:.3f} {_ci(d, 'random')} "
            f"({'clearly better' if d['clearly_better_than_random'] else 'NOT clearly better'} than random; "
            f"{d['items_better_than_random_deletion']}/{d['n_items']} beats better; interval over records "
            f"{_ci(d['by_record'], 'random')}).\n")
        if r["drop_top_mean"] <= 0:
            md.append(
                f"\nSetting the top-attributed RR feature alone to 1 *raises* this model's RR z-score on average "
                f"({r['drop_top_mean']:.2f}; a random one: {r['drop_random_mean']:.2f}). The 4 RR features move "
                "together in a PVC (short previous RR, long next RR, so a large next/previous ratio); one of them "
                "set to the regular value while the others stay makes a combination no normal beat has. The "
                "attributions are Shapley values"
                + (" (exact here: they add up to z(beat) - z(regular))" if r["beats_within_5pct"] == r["n_beats"] else "")
                + ", i.e. averages "
                "over every subset of the other features, not the effect of changing that feature alone: read "
                "them as 'how much of the gap to a regular rhythm this feature accounts for', not as 'what would "
                "make the beat normal'.\n")
    return "".join(md)
