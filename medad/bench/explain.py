"""``medad bench explain``: faithfulness, localisation and cost of every explanation method on
real data.

* BraTS 2015 (``mri/brats2015``): a supervised 2D slice classifier (the ``classifier`` detector,
  MONAI DenseNet, no pretrained weights) learns lesion vs no lesion on axial FLAIR slices
  (128x128) of the 2 ``train`` patients; maps are computed for lesion slices of the 4
  ``validation``/``test`` patients. Measured: deletion / insertion AUC of the lesion probability
  against random maps (independent per pixel and spatially smooth), the share of positive
  attribution inside the expert lesion mask (beside the lesion's share of the slice, the level
  a map without information reaches), and seconds per map.
* Bonn EEG (``eeg/bonn``): the ``cnn1d`` detector learns A,B (healthy) vs E (seizure) on
  1024-sample windows (5.9 s), split by segment. Set E segments are seizure from start to
  end, so "share inside the seizure" is not meaningful on them (it is 1 by construction); we
  measure localisation instead on spliced windows -- a healthy window (held-out A/B) whose
  tail from a random point on is replaced by a held-out seizure window -- and report the share
  of attribution in the seizure part beside that part's length share.

Timings are wall-clock on this machine with ``--threads`` torch threads; on a shared machine
they are inflated by other processes (the JSON records the load average).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from medad.bench.common import markdown_table, write_benchmark
from medad.errors import ReadError

SIZE = 128
WIN = 1024
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "gradcam": {},
    # Grad-CAM on an earlier, finer feature map (8x8 instead of 4x4 at the classifier's 64 px)
    "gradcam@denseblock2": {"method": "gradcam", "layer": "1.features.denseblock2"},
    "ig": {"n_steps": 32},
    "gradient_shap": {"n_samples": 32},
    "kernel_shap": {"n_segments": 50, "n_samples": 200},
    "lime": {"n_segments": 50, "n_samples": 200},
}
SIGNAL_SETTINGS: dict[str, dict[str, Any]] = {
    "gradcam": {}, "ig": {"n_steps": 32}, "gradient_shap": {"n_samples": 32},
    "kernel_shap": {"n_segments": 32, "n_samples": 200}, "lime": {"n_segments": 32, "n_samples": 200},
}


def _resize2d(a: np.ndarray, size: int) -> np.ndarray:
    from medad.report.cases import _resize

    return _resize(a[:, None].astype(np.float32), (size, size))[:, 0]


def load_brats_slices(root: Path, split: str, *, min_lesion: int = 100, min_brain: float = 0.05,
                      every: int = 1) -> dict[str, np.ndarray]:
    """Axial FLAIR slices (N, 1, 128, 128) of one BraTS split with lesion masks and labels.

    A slice is used when at least ``min_brain`` of it is brain; label 1 when it holds at least
    ``min_lesion`` lesion voxels (at 1 mm), 0 when none; slices with a few lesion voxels are left
    out (ambiguous). Masks are resized with the image (> 0.5).
    """
    from medad.io.volumes import read_volume

    folder = root / "mri" / "brats2015" / split
    cases = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if not cases:
        raise ReadError("no BraTS case folders", folder)
    xs, ms, bs, ys, subj = [], [], [], [], []
    for case in cases:
        flair = read_volume(case / "Flair_subtrMeanDivStd.nii.gz").data
        lesion = read_volume(case / "OTMultiClass.nii.gz").data > 0
        brain = read_volume(case / "brainmask.nii.gz").data > 0.5
        for z in range(0, flair.shape[2], every):
            b, les = brain[..., z].mean(), int(lesion[..., z].sum())
            if b < min_brain or 0 < les < min_lesion:
                continue
            xs.append(flair[..., z].T[::-1])  # display orientation: anterior up
            ms.append(lesion[..., z].T[::-1].astype(np.float32))
            bs.append(brain[..., z].T[::-1].astype(np.float32))
            ys.append(int(les >= min_lesion))
            subj.append(case.name)
    x = _resize2d(np.stack(xs), SIZE)[:, None]
    m = _resize2d(np.stack(ms), SIZE) > 0.5
    brain = _resize2d(np.stack(bs), SIZE) > 0.5
    # "Deleted" = mean brain tissue (0 in these z-scored scans) inside the brain, and the scan's own
    # background value outside it (-5.3 here, not 0): blanking must not paint the background grey.
    background = x.reshape(len(x), -1).min(1)
    baseline = np.where(brain, 0.0, background[:, None, None])[:, None].astype(np.float32)
    return {"x": x, "mask": m, "brain": brain, "baseline": baseline, "y": np.asarray(ys), "subject": np.asarray(subj)}


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


def evaluate_methods(det, items: np.ndarray, regions: np.ndarray | None, settings: dict[str, dict[str, Any]],
                     *, steps: int, n_random: int, out_png: Path | None = None, label: str = "",
                     baselines: np.ndarray | None = None) -> dict[str, Any]:
    """Maps of every method for ``items`` (N, C, *spatial): faithfulness against random maps,
    share inside ``regions`` (N, *spatial) and seconds per map. ``baselines`` (N, C, *spatial):
    the 'absent' value per item for the perturbation/path methods and the deletion curves
    (default 0)."""
    from tqdm import tqdm

    from medad.explain import deletion_insertion, explain, share_inside

    res: dict[str, Any] = {}
    explain(det, items[0], "gradcam")  # warm-up (imports, first-call allocations) kept out of the timings
    for name, kw in settings.items():
        kw = dict(kw)
        method = kw.pop("method", name)
        secs, rows = [], []
        for i in tqdm(range(len(items)), desc=f"{label} {name}", leave=False):
            t0 = time.perf_counter()
            base = 0.0 if baselines is None else baselines[i]
            m = explain(det, items[i], method, seed=i, baseline=base, **kw)
            secs.append(time.perf_counter() - t0)
            f = deletion_insertion(det, items[i], m, steps=steps, n_random=n_random, seed=i, baseline=base)
            row = {k: f[k] for k in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
                                     "smooth_random_deletion_auc", "smooth_random_insertion_auc")}
            row["all_zero"] = bool(not np.any(m))
            if regions is not None:
                row["share_inside"] = share_inside(m, regions[i])
                row["region_share"] = float(regions[i].mean())
            rows.append(row)
            if out_png is not None and i == 0:
                _save_example(items[0], m, regions[0] if regions is not None else None,
                              out_png.parent / f"{out_png.stem}_{name}.png", f"{label} {name}")
        agg = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "all_zero"}
        agg["deletion_margin"] = agg["random_deletion_auc"] - agg["deletion_auc"]
        agg["smooth_deletion_margin"] = agg["smooth_random_deletion_auc"] - agg["deletion_auc"]
        agg["insertion_margin"] = agg["insertion_auc"] - agg["random_insertion_auc"]
        agg["items_better_than_random_deletion"] = int(sum(r["deletion_auc"] < r["random_deletion_auc"] for r in rows))
        agg["items_better_than_smooth_random_deletion"] = int(
            sum(r["deletion_auc"] < r["smooth_random_deletion_auc"] for r in rows))
        agg["all_zero_maps"] = int(sum(r["all_zero"] for r in rows))
        agg["n_items"] = len(rows)
        agg["seconds_per_map_median"] = float(np.median(secs))
        # the fastest map is the one least slowed by other processes on a shared machine
        agg["seconds_per_map_min"] = float(np.min(secs))
        agg["settings"] = {"method": method, **kw}
        agg["per_item"] = rows
        res[name] = agg
    return res


def _save_example(item, m, region, path: Path, title: str) -> None:
    from medad.report import save_overlay, save_signal_plot

    if item.ndim == 3:
        save_overlay(item[0], m, path, mask=region, title=title)
    else:
        spans = []
        if region is not None and region.any():
            idx = np.flatnonzero(region)
            spans = [(idx[0] / 173.61, (idx[-1] + 1) / 173.61, 1.0)]
        save_signal_plot(item, 173.61, path, spans=spans, attribution=m, ch_names=["EEG"], title=title)


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

    train = load_brats_slices(root, "train", every=3 if quick else 1)
    val_part, test_part = load_brats_slices(root, "validation"), load_brats_slices(root, "test")
    test = {k: np.concatenate([val_part[k], test_part[k]]) for k in val_part}
    # the classifier works at 64 px inside (its ImagePrep resizes): 4x cheaper to train on a CPU;
    # maps are still computed and compared on the 128 px input grid
    det = registry.create("classifier", arch="densenet_small", image_size=64, epochs=6 if quick else 20,
                          batch_size=32, lr=1e-3, seed=0, device=device)
    t0 = time.perf_counter()
    det.fit(train["x"], y=train["y"])
    train_s = time.perf_counter() - t0
    scores = det.score(test["x"]).score
    pos = np.flatnonzero(test["y"] == 1)
    rng = np.random.default_rng(0)
    n = 3 if quick else 8
    # lesion slices the model calls lesion, spread over the test patients
    confident = pos[scores[pos] > 0.5]
    chosen = rng.choice(confident if len(confident) >= n else pos, size=min(n, len(pos)), replace=False)
    methods = evaluate_methods(det, test["x"][chosen], test["mask"][chosen], METHOD_SETTINGS,
                               steps=20, n_random=2, out_png=out / "explain_brats.png", label="BraTS",
                               baselines=test["baseline"][chosen])
    _example_report(out, "explain_brats", f"BraTS slice ({test['subject'][chosen[0]]})", float(scores[chosen[0]]),
                    list(METHOD_SETTINGS), "lesion probability of the slice classifier; cyan outline = expert lesion mask")
    return {
        "protocol": ("train: axial FLAIR slices of the 2 BraTS train patients (lesion >= 100 voxels vs none); "
                     "test: slices of the 4 validation+test patients; maps on lesion slices predicted as lesion; "
                     "deleted pixels take the mean tissue value (0) inside the brain mask and the background "
                     "value outside it"),
        "model": {"name": "classifier", "params": det.get_params(), "train_seconds": train_s,
                  "n_train_slices": int(len(train["y"])), "n_train_lesion": int(train["y"].sum()),
                  "n_test_slices": int(len(test["y"])), "test_slice_auroc": auroc(test["y"], scores),
                  "test_patients": sorted(set(test["subject"].tolist()))},
        "explained_slices": int(len(chosen)),
        "explained_patients": sorted(set(test["subject"][chosen].tolist())),
        "methods": methods,
    }


def bench_bonn(root: Path, out: Path, quick: bool, device: str) -> dict[str, Any]:
    from medad import registry
    from medad.evaluation import auroc, split_by_subject

    data = load_bonn_windows(root)
    split = split_by_subject(data["segment"], {"train": 0.8, "test": 0.2}, seed=0, stratify=data["y"])
    tr, te = np.asarray(split["train"]), np.asarray(split["test"])
    det = registry.create("cnn1d", epochs=2 if quick else 5, batch_size=64, seed=0, device=device)
    t0 = time.perf_counter()
    det.fit(data["x"][tr], y=data["y"][tr])
    train_s = time.perf_counter() - t0
    s_te = det.score(data["x"][te]).score
    rng = np.random.default_rng(1)
    n = 3 if quick else 8
    ictal = te[data["y"][te] == 1]
    healthy = te[data["y"][te] == 0]
    whole = rng.choice(ictal, size=min(n, len(ictal)), replace=False)
    res_whole = evaluate_methods(det, data["x"][whole], None, SIGNAL_SETTINGS, steps=20, n_random=2,
                                 label="Bonn E")
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
    res_sp = evaluate_methods(det, spliced, regions, SIGNAL_SETTINGS, steps=20, n_random=2,
                              out_png=out / "explain_bonn_spliced.png", label="Bonn spliced")
    _example_report(out, "explain_bonn_spliced", "Bonn spliced window", float(s_sp[0]), list(SIGNAL_SETTINGS),
                    "seizure probability of the window; red span = the spliced-in seizure part")
    return {
        "protocol": ("cnn1d, A,B vs E, 1024-sample windows, 80/20 split by segment; maps on held-out E windows "
                     "(faithfulness only: E is seizure throughout, so 'share inside the seizure' is 1 by "
                     "construction and not reported) and on spliced windows (held-out A/B start, E from a random "
                     "point on) for the share inside the seizure part"),
        "model": {"name": "cnn1d", "params": det.get_params(), "train_seconds": train_s,
                  "n_train_windows": int(len(tr)), "n_test_windows": int(len(te)),
                  "test_window_auroc": auroc(data["y"][te], s_te),
                  "spliced_mean_score": float(np.mean(s_sp))},
        "seizure_windows": res_whole,
        "spliced_windows": res_sp,
    }


def _rows(methods: dict[str, Any], with_share: bool) -> list[list[Any]]:
    rows = []
    for m, r in methods.items():
        rows.append([m, r["deletion_auc"], r["random_deletion_auc"], r["deletion_margin"], r["smooth_deletion_margin"],
                     f"{r['items_better_than_random_deletion']}/{r['n_items']}",
                     r["insertion_auc"], r["insertion_margin"],
                     r.get("share_inside") if with_share else None, r.get("region_share") if with_share else None,
                     r["all_zero_maps"], r["seconds_per_map_median"] * 1000, r["seconds_per_map_min"] * 1000])
    return rows


READING_NOTE = (
    "\nHow to read the controls: deleting positions in a random order scatters blanked pixels or samples "
    "everywhere, which CNNs find very unnatural, so their output often collapses faster than when a "
    "contiguous region is blanked. Pixel-level maps (IG, GradientSHAP) are compared fairly with that "
    "control; smooth maps (Grad-CAM, superpixel KernelSHAP/LIME) blank contiguous regions and are compared "
    "fairly with the smooth random maps (the 'margin vs smooth random' column). A saturated output "
    "(probability near 1 that stays there while most of the input is blanked) makes deletion curves flat "
    "for every contiguous order.\n")

HEADER = ["method", "deletion AUC", "random", "margin", "margin vs smooth random", "items < random",
          "insertion AUC", "ins. margin", "share inside", "region share", "all-zero maps", "ms / map (median)",
          "ms / map (min)"]


def run(*, data_root=None, out: Path = Path("outputs/bench"), quick: bool = False, threads: int = 2,
        device: str = "cpu", part: str = "all") -> dict[str, Any]:
    """Run the BraTS and Bonn parts (``part``: all, brats or bonn), print the tables and write
    ``<out>/explain.json`` and ``.md``. Running one part keeps the other part's results from an
    existing ``<out>/explain.json`` (marked with the date of the run they came from)."""
    import json

    import torch

    from medad.config import data_root as resolve_root
    from medad.errors import InputError

    if part not in ("all", "brats", "bonn"):
        raise InputError(f"part must be all, brats or bonn, got {part!r}")
    torch.set_num_threads(int(threads))
    root = resolve_root(data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if part != "all":
        try:
            previous = json.loads((out / "explain.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise ReadError(f"--part {part} needs the other part's results in an earlier explain.json", out) from None
    load_before = _load_avg()
    t0 = time.perf_counter()
    brats = bench_brats(root, out, quick, device) if part in ("all", "brats") else \
        {**previous["brats"], "from_run": previous["environment"]["date"]}
    bonn = bench_bonn(root, out, quick, device) if part in ("all", "bonn") else \
        {**previous["bonn"], "from_run": previous["environment"]["date"]}
    results = {"quick": quick, "threads": int(threads), "part_run": part, "load_average_before": load_before,
               "load_average_after": _load_avg(), "total_seconds": time.perf_counter() - t0,
               "brats": brats, "bonn": bonn,
               "goals": {"gradcam_ms_per_128_slice": 50, "shap_lime_s_per_slice": 3,
                         "every_method_better_than_random_deletion": True}}
    g = brats["methods"]
    results["goals_met"] = {
        "gradcam_ms (min over maps)": g["gradcam"]["seconds_per_map_min"] * 1000 <= 50,
        "gradcam_ms (median)": g["gradcam"]["seconds_per_map_median"] * 1000 <= 50,
        "shap_lime_s (median)": all(g[m]["seconds_per_map_median"] <= 3 for m in ("kernel_shap", "lime")),
        "better_than_random_brats": all(r["deletion_margin"] > 0 for r in g.values()),
        "better_than_smooth_random_brats": all(r["smooth_deletion_margin"] > 0 for r in g.values()),
        "better_than_random_bonn": all(r["deletion_margin"] > 0 for r in bonn["seizure_windows"].values()),
    }
    text = render_markdown(results)
    print(text)
    write_benchmark(out, "explain", results, text)
    return results


def render_markdown(results: dict[str, Any]) -> str:
    """The Markdown summary of a results dict (as written to ``explain.json``)."""
    brats, bonn, quick, threads = results["brats"], results["bonn"], results["quick"], results["threads"]
    load_before = results["load_average_before"]
    g = brats["methods"]
    md = [f"# Explanation methods: faithfulness, localisation, cost{' (quick)' if quick else ''}\n",
          f"Torch threads: {threads}; load average before/after: {load_before} / {results['load_average_after']} "
          "(the machine is shared: timings are inflated by other processes).\n",
          "Deletion AUC: lower is better (probability falls fast when the top-ranked pixels are blanked); margin = "
          "random - method (> 0: better than a random map). Random = independent random ranking per position "
          "(mean of several); smooth random = spatially smooth random maps.\n",
          f"\n## BraTS FLAIR slices (128x128): {brats['protocol']}\n",
          f"(results of the run of {brats['from_run']})\n" if "from_run" in brats else "",
          f"Classifier: test slice AUROC {brats['model']['test_slice_auroc']:.3f}, trained in "
          f"{brats['model']['train_seconds']:.0f} s; {brats['explained_slices']} lesion slices from "
          f"{len(brats['explained_patients'])} patients explained. 'share inside' = positive attribution inside the "
          "expert lesion mask; 'region share' = the lesion's share of the slice (what a map without information gets).\n\n",
          markdown_table(HEADER, _rows(g, True)),
          f"\n## Bonn EEG: {bonn['protocol']}\n",
          f"(results of the run of {bonn['from_run']})\n" if "from_run" in bonn else "",
          f"cnn1d: test window AUROC {bonn['model']['test_window_auroc']:.3f}, trained in "
          f"{bonn['model']['train_seconds']:.0f} s.\n\n### Seizure (E) windows\n\n",
          markdown_table(HEADER, _rows(bonn["seizure_windows"], False)),
          "\n### Spliced windows (healthy start, seizure end): share of attribution in the seizure part\n\n",
          markdown_table(HEADER, _rows(bonn["spliced_windows"], True)),
          "\n## Goals\n\n" + "\n".join(f"- {k}: {'met' if v else 'NOT met'}" for k, v in results["goals_met"].items()) + "\n"]
    md.insert(3, READING_NOTE)
    return "".join(md)

