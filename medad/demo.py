"""The built-in default for ``medad demo``: data made from what installed packages ship.

* Brain MRI: nilearn's MNI152 T1 template (a real average brain) turned into "subjects" with a
  random smooth bias field, contrast change, shift and noise; test subjects get inserted lesions
  (ellipsoids of raised intensity inside the white matter) with their ground-truth masks. One test
  scan is stored with flipped voxel axes (LAS) so the non-RAS path is exercised.
* EEG: generated multichannel recordings (alpha rhythm + 1/f background); abnormal ones carry
  bursts of 3 Hz spike-and-wave discharges at known times.

Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _smooth_field(shape, rng, scale: float = 0.15, coarse: int = 4) -> np.ndarray:
    from scipy.ndimage import zoom

    c = rng.normal(0.0, scale, size=(coarse,) * len(shape))
    return zoom(c, [s / coarse for s in shape], order=1)[tuple(slice(0, s) for s in shape)]


def make_brain_demo_data(root: str | Path, *, n_healthy: int = 6, n_test: int = 3, seed: int = 0) -> dict[str, Path]:
    """Write ``healthy/<id>/{t1,brainmask}.nii.gz`` (healthy scans with their brain masks),
    ``test/*.nii.gz`` (scans with lesions, no mask: the brain is found by registration to MNI152)
    and ``truth/*_lesion.nii.gz`` under ``root``."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    from scipy.ndimage import binary_erosion, shift

    root = Path(root)
    rng = np.random.default_rng(seed)
    tpl = load_mni152_template(resolution=2)
    base = tpl.get_fdata().astype(np.float32)
    brain = load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    affine = tpl.affine
    wm = binary_erosion((base > 0.75) & brain, iterations=2)
    dirs = {k: root / k for k in ("healthy", "test", "truth")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    def subject() -> np.ndarray:
        v = shift(base, rng.uniform(-1.5, 1.5, 3), order=1, mode="nearest")
        v = v * np.exp(_smooth_field(v.shape, rng)) * rng.uniform(0.85, 1.15)
        v = np.clip(v, 0, None) ** rng.uniform(0.9, 1.1)
        return (v + rng.normal(0, 0.015, v.shape)).astype(np.float32)

    for i in range(n_healthy):
        d = dirs["healthy"] / f"healthy-{i:02d}"
        d.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(subject(), affine), d / "t1.nii.gz")
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), d / "brainmask.nii.gz")
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in base.shape], indexing="ij")
    wm_idx = np.argwhere(wm)
    for i in range(n_test):
        v = subject()
        lesion = np.zeros(base.shape, bool)
        for _ in range(rng.integers(1, 3)):
            c = wm_idx[rng.integers(len(wm_idx))]
            r = rng.uniform(4.0, 7.0, 3)
            lesion |= (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2) <= 1.0
        lesion &= brain
        v[lesion] = v[lesion] * rng.uniform(1.6, 1.9)
        aff = affine
        if i == 0:  # store with the first voxel axis flipped: LAS instead of RAS
            v, lesion = v[::-1].copy(), lesion[::-1].copy()
            flip = np.diag([-1.0, 1.0, 1.0, 1.0])
            flip[0, 3] = base.shape[0] - 1
            aff = affine @ flip
        nib.save(nib.Nifti1Image(v, aff), dirs["test"] / f"case-{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(lesion.astype(np.uint8), aff), dirs["truth"] / f"case-{i:02d}_lesion.nii.gz")
    return dirs


def make_eeg_demo_data(root: str | Path, *, n_normal: int = 4, n_abnormal: int = 2, seconds: float = 120.0,
                       sfreq: float = 128.0, n_channels: int = 4, seed: int = 0) -> dict[str, Path]:
    """Write ``normal/*.edf`` (training), ``screen/*.edf`` (normal and abnormal) and
    ``screen_truth.csv`` (record, onset_s, duration_s of every inserted burst)."""
    import mne

    root = Path(root)
    rng = np.random.default_rng(seed)
    dirs = {"normal": root / "normal", "screen": root / "screen"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sfreq)
    t = np.arange(n) / sfreq
    ch_names = [f"EEG{i + 1}" for i in range(n_channels)]

    def background() -> np.ndarray:
        x = np.empty((n_channels, n))
        for c in range(n_channels):
            white = rng.normal(size=n)
            f = np.fft.rfftfreq(n, 1 / sfreq)
            pink = np.fft.irfft(np.fft.rfft(white) / np.maximum(f, 1.0) ** 0.8, n)
            alpha = np.sin(2 * np.pi * rng.uniform(9, 11) * t + rng.uniform(0, 6.28)) * rng.uniform(0.5, 1.0)
            x[c] = pink / pink.std() + alpha
        return x * 20e-6  # volts, ~20 µV

    def save(x: np.ndarray, path: Path) -> None:
        info = mne.create_info(ch_names, sfreq, ch_types="eeg")
        raw = mne.io.RawArray(x, info, verbose="error")
        mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")

    for i in range(n_normal):
        save(background(), dirs["normal"] / f"normal-{i:02d}.edf")
    truth = ["record,onset_s,duration_s"]
    for i in range(n_abnormal + 2):
        x = background()
        name = f"rec-{i:02d}"
        if i < n_abnormal:
            for _ in range(2):
                dur = rng.uniform(6, 10)
                on = rng.uniform(5, seconds - dur - 5)
                seg = (t >= on) & (t < on + dur)
                tt = t[seg] - on
                # 3 Hz spike-and-wave: a sharp spike followed by a slow wave, large amplitude
                phase = (tt * 3.0) % 1.0
                sw = np.where(phase < 0.1, -np.sin(np.pi * phase / 0.1) * 3.0, np.sin(np.pi * (phase - 0.1) / 0.9) * 1.2)
                x[:, seg] += sw * 80e-6
                truth.append(f"{name},{on:.2f},{dur:.2f}")
        save(x, dirs["screen"] / f"{name}.edf")
    (root / "screen_truth.csv").write_text("\n".join(truth) + "\n", encoding="utf-8")
    return dirs


def _interval_hits(truth_rows: list[dict], intervals: list[dict]) -> tuple[int, int]:
    """(true bursts overlapped by a flagged interval, flagged intervals overlapping no burst)."""
    hit = sum(any(iv["start_s"] < t["onset"] + t["duration"] and iv["end_s"] > t["onset"] for iv in intervals)
              for t in truth_rows)
    false = sum(not any(iv["start_s"] < t["onset"] + t["duration"] and iv["end_s"] > t["onset"] for t in truth_rows)
                for iv in intervals)
    return hit, false


def run_eeg_demo(out: Path, *, seed: int = 0) -> dict:
    """Train the signal screening pipeline on generated normal EEG, screen a folder with hidden
    spike-and-wave bursts, and compare flagged spans with where the bursts were put."""
    import csv

    from pipelines.screening import ScreeningConfig, screen_folder, train_screening

    data = make_eeg_demo_data(out / "data" / "eeg", seed=seed)
    model = train_screening(data["normal"], out / "models" / "eeg-features",
                            ScreeningConfig(detector="features", window_seconds=2.0, step_seconds=1.0,
                                            notch=None, window_fpr=0.01, seed=seed))
    summary = screen_folder(model, data["screen"], out / "eeg")
    truth: dict[str, list[dict]] = {}
    with (out / "data" / "eeg" / "screen_truth.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            truth.setdefault(r["record"], []).append({"onset": float(r["onset_s"]), "duration": float(r["duration_s"])})
    rows = []
    for rec in summary["recordings"]:
        t = truth.get(rec["record_id"], [])
        hit, false = _interval_hits(t, rec.get("intervals", []))
        rows.append({"record": rec["record_id"], "truly_abnormal": bool(t), "decision": rec.get("decision"),
                     "bursts": len(t), "bursts_found": hit, "false_intervals": false})
    return {"recordings": rows, "outputs": str(out / "eeg")}


def run_brain_demo(out: Path, *, detector: str = "dae", seed: int = 0) -> dict:
    """Train the intensity baseline and a deep detector on healthy demo scans, score the test scans
    and compare the masks with the inserted lesions."""
    import nibabel as nib

    from medad.evaluation import dice
    from pipelines.brain_lesions import BrainLesionConfig, score_folder, train_brain

    data = make_brain_demo_data(out / "data" / "brain", seed=seed)
    prep = {"spacing": 2.0, "slice_spacing": 2.0, "size": 96, "skull_strip": "auto", "normalize": "zscore",
            "registration_iterations": 60}
    # small enough to train in about a minute on 2 CPU cores; the benchmark configs are larger
    deep_params = {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2, 2], "epochs": 20,
                   "batch_size": 16, "seed": seed}
    if detector == "dae":
        deep_params.update(noise_res=12, noise_std=1.0, skip_connections=True)
    configs = {
        "intensity": BrainLesionConfig(detector="intensity", detector_params={"normalize": "fit", "median_size": 1},
                                       preprocessing=prep, mask_pattern="brainmask*", val_fraction=0.34, seed=seed),
        detector: BrainLesionConfig(detector=detector, detector_params=deep_params, preprocessing=prep,
                                    mask_pattern="brainmask*", val_fraction=0.34, seed=seed),
    }
    cases = []
    for name, cfg in configs.items():
        model = train_brain(data["healthy"], out / "models" / f"brain-{name}", cfg)
        rows = score_folder(model, data["test"], out / "brain" / name)
        for r in rows:
            if r["status"] != "ok":
                continue
            truth_img = nib.load(data["truth"] / f"{r['scan']}_lesion.nii.gz")
            truth = truth_img.get_fdata() > 0
            pred = nib.load(out / "brain" / name / r["scan"] / "mask.nii.gz").get_fdata() > 0
            vox_ml = float(abs(np.linalg.det(truth_img.affine[:3, :3]))) / 1000.0
            cases.append({"case": r["scan"], "detector": name, "dice": dice(pred, truth),
                          "lesion_ml": float(r["lesion_ml"]), "true_ml": float(truth.sum() * vox_ml),
                          "decision": r["decision"]})
    return {"cases": cases, "outputs": str(out / "brain")}


#: the parts of ``medad demo`` (``--parts``; ``all`` = every one)
DEMO_PARTS = ("brain", "eeg")


def run_demo(out: str | Path, *, parts: Sequence[str] = ("all",), detector: str = "dae", seed: int = 0) -> dict:
    """Run the demo ``parts`` (brain, eeg; ``all`` = both) and write ``<out>/summary.json`` and
    ``<out>/summary.md``. The parts are checked before anything is written."""
    from medad.errors import ConfigError
    from medad.utils import Timer, write_json, write_text

    if isinstance(parts, str):
        raise ConfigError(f"parts must be a list of part names, got the string {parts!r}")
    unknown = set(parts) - set(DEMO_PARTS) - {"all"}
    if unknown:
        raise ConfigError(f"unknown demo part(s) {sorted(unknown)}; choose from {', '.join(DEMO_PARTS)} or all")
    if not parts:
        raise ConfigError(f"no demo part given; choose from {', '.join(DEMO_PARTS)} or all")
    if "all" in parts:
        parts = DEMO_PARTS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out.resolve())}
    md = ["# medad demo\n", "Built-in data: nilearn's MNI152 template with inserted lesions; generated EEG with spike-and-wave bursts.\n"]
    if "brain" in parts:
        with Timer() as t:
            summary["brain"] = run_brain_demo(out, detector=detector, seed=seed)
        summary["brain"]["seconds"] = round(t.seconds, 1)
        md.append("\n## Brain lesions (trained on healthy scans only)\n")
        md.append("| case | detector | Dice (healthy-calibrated threshold) | lesion ml (predicted / true) |\n|---|---|---|---|\n")
        for r in summary["brain"]["cases"]:
            md.append(f"| {r['case']} | {r['detector']} | {r['dice']:.3f} | {r['lesion_ml']:.1f} / {r['true_ml']:.1f} |\n")
    if "eeg" in parts:
        with Timer() as t:
            summary["eeg"] = run_eeg_demo(out, seed=seed)
        summary["eeg"]["seconds"] = round(t.seconds, 1)
        md.append("\n## EEG screening (trained on normal recordings only)\n")
        md.append("| record | truly abnormal | decision | bursts found | false intervals |\n|---|---|---|---|---|\n")
        for r in summary["eeg"]["recordings"]:
            md.append(f"| {r['record']} | {r['truly_abnormal']} | {r['decision']} | {r['bursts_found']}/{r['bursts']} | {r['false_intervals']} |\n")
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", "".join(md))
    print("".join(md))
    print(f"\nmedad demo finished. Outputs are in {out.resolve()}:")
    if "brain" in parts:
        print(f"  brain maps (NIfTI on each scan's own grid) and overlays: {out.resolve() / 'brain'}")
    if "eeg" in parts:
        print(f"  EEG screening results, events.tsv and PNGs:             {out.resolve() / 'eeg'}")
    print(f"  summary: {out.resolve() / 'summary.md'}")
    return summary
