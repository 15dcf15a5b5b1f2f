"""Image-screening commands: ``medad images train|screen`` and ``medad bench image-screening``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medad.bench.common import merge_help
from medad.commands import name_list


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    images_app = typer.Typer(help="Flag abnormal endoscopy frames / CT / MRI slices and show where.",
                             no_args_is_help=True)
    app.add_typer(images_app, name="images")

    @images_app.command("train")
    def images_train(
        normal: Path = typer.Argument(..., help="folder of normal images/frames (subfolders searched too, "
                                                "natural name order), or a video of normal frames"),
        out: Path = typer.Option(..., "--out", help="model folder to write"),
        detector: Optional[str] = typer.Option(None, help="image detector (registry name); default cutpaste"),
        config: Optional[Path] = typer.Option(None, help="YAML (see configs/images_*.yaml)"),
        image_size: Optional[int] = typer.Option(None, help="working side length in pixels (>= 16)"),
        grey: Optional[bool] = typer.Option(None, "--grey/--rgb", help="one grey channel or RGB"),
        epochs: Optional[int] = typer.Option(None, help="override the detector's training epochs (>= 1)"),
        fpr: Optional[float] = typer.Option(None, help="share of held-out normal frames flagged, in (0, 1)"),
        # Path like `screen train --abnormal` (one kind of value per option name); NAME=SOURCE is split below
        abnormal: Optional[List[Path]] = typer.Option(
            None, "--abnormal", metavar="[NAME=]SOURCE",
            help="folder (subfolders searched too) or video of abnormal frames: train a supervised detector "
                 "(--detector classifier) on normal vs abnormal frames. Repeat it for several abnormal classes "
                 "(--abnormal polyps/ --abnormal bleeding/), each source one class, named after its folder (a "
                 "video: its file name) or NAME=SOURCE (--abnormal polyp=data/kvasir); names must differ, and "
                 "'normal' is taken"),
    ) -> None:
        """Learn normal frames (one-class), or normal vs abnormal frames with --abnormal (supervised,
        e.g. --detector classifier; repeat --abnormal for several abnormal classes). The abnormality
        score is 1 - p(normal) and the frame threshold is always calibrated on held-out normal
        frames; each class keeps a share of its frames for validation (a video as one block). A
        folder is searched with its subfolders."""
        from pipelines.frames import FramesConfig, check_int, train_frames

        cfg = FramesConfig.from_yaml(config) if config else FramesConfig()
        for k, v in {"detector": detector, "image_size": image_size, "grey": grey, "fpr": fpr}.items():
            if v is not None:
                setattr(cfg, k, v)
        cfg.validate()  # bad numbers are named before any frame is read
        if epochs is not None:
            check_int("epochs", epochs, 1, "--epochs")
            from medad.detectors.fusion import with_epochs

            cfg.detector_params = with_epochs(cfg.detector, cfg.detector_params, epochs)
        det = train_frames(normal, out, cfg, abnormal=[str(a) for a in abnormal] if abnormal else None)
        typer.echo(f"{det.name} model written to {out} (frame threshold {det.threshold_:.4g}, "
                   f"from held-out normal frames at fpr={cfg.fpr})")
        if abnormal:
            import json

            rec = json.loads((out / "frames.json").read_text(encoding="utf-8"))
            c, v = rec["classes"], rec["validation"]
            spec = (f"specificity {v['specificity']:.3f} (2-fold cross-calibration on the {v['n_normal']} held-out "
                    f"normal frames: threshold from one half, measured on the other)"
                    if v.get("specificity") is not None else v["specificity_note"])
            n_abn = sum(c[k]["n_train"] for k in c if k != "0")
            names = rec.get("class_names")
            kinds = f" in {len(c) - 1} classes ({', '.join(names[k] for k in c if k != '0')})" if names else ""
            typer.echo(f"trained on {c['0']['n_train']} normal + {n_abn} abnormal frames{kinds} "
                       f"(class weight {rec['class_weight']}); held out {v['n_normal']} normal + "
                       f"{v['n_abnormal']} abnormal: frame AUROC {v['frame_auroc']:.3f}, sensitivity "
                       f"{v['sensitivity']:.3f} at the threshold; {spec}")
            for pc in (v.get("per_class") or {}).values():  # several abnormal classes: each against normal
                acc = pc.get("naming_accuracy")
                typer.echo(f"  {pc['name']}: {pc['n_val']} held out, AUROC vs normal {pc['frame_auroc']:.3f}, "
                           f"sensitivity {pc['sensitivity']:.3f} at the threshold"
                           + (f", flagged frames named {pc['name']}: {acc:.3f}" if acc is not None else ""))

    @images_app.command("screen")
    def images_screen(
        model: Path = typer.Argument(..., help="model folder from `medad images train`"),
        source: Path = typer.Argument(..., help="video file or folder of frames (subfolders searched too, "
                                                "natural name order)"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        stride: int = typer.Option(1, help="screen every K-th frame (>= 1)"),
        overlays: bool = typer.Option(True, help="write an overlay PNG per flagged frame"),
        fps: Optional[float] = typer.Option(None, help="frame rate of a folder of frames, for times in seconds "
                                                       "(default 1: frame numbers); a video's own rate is used"),
    ) -> None:
        """Score frames; write frames.csv (unreadable frames included, with the reason; a model of
        several abnormal classes names each flagged frame's most likely class and its probability),
        summary.json (flagged spans) and overlays/. A folder is searched with its subfolders; a
        progress bar (stderr) counts the screened frames."""
        from pipelines.frames import screen_frames

        s = screen_frames(model, source, out, stride=stride, overlays=overlays, fps=fps)
        typer.echo(f"screened {s['n_frames_screened']} frames: {s['n_flagged']} flagged in {len(s['spans'])} spans, "
                   f"{len(s['unreadable_frames'])} unreadable; results in {out}")
        if s.get("flagged_by_class"):
            typer.echo("flagged frames by most likely class: "
                       + ", ".join(f"{n} {k}" for n, k in s["flagged_by_class"].items()))
        if overlays and s["n_flagged"] and not s["maps"]:
            typer.echo(f"this model makes no maps (no overlays); draw one for a frame with "
                       f"`medad explain {model} FRAME --out DIR` (Grad-CAM for a classifier)")

    @bench_app.command("image-screening")
    def bench_image_screening(
        data_root: Optional[Path] = typer.Option(None, "--data-root", help="shared data folder"),
        out: Path = typer.Option(Path("bench-out"), "--out", help="output folder"),
        tasks: Optional[List[str]] = typer.Option(None, "--tasks",
                                                  help="kvasir, wce, brain, brain_z, covid, ct_tumour, or a glob "
                                                       "such as 'brain*' (default all; 'none' only merges); "
                                                       "repeated or comma-separated (--tasks wce,covid)"),
        detectors: Optional[List[str]] = typer.Option(None, "--detectors",
                                                      help="only these detectors, by exact name or a glob such as "
                                                           "'patchstats*'; repeated or comma-separated (--detectors "
                                                           "pca,ae: no name holds a comma); an unknown name lists "
                                                           "them"),
        quick: bool = typer.Option(False, help="small subsets and few epochs (smoke run)"),
        copy_to: Optional[Path] = typer.Option(None, help="also copy the JSON/MD here (e.g. benchmarks/)"),
        merge: Optional[List[Path]] = typer.Option(None, "--merge",
                                                   help=merge_help("image-screening", "--quick and --budget")),
        threads: int = typer.Option(2, help="torch threads (1 is faster on a crowded machine)"),
        budget: float = typer.Option(1.0, help="multiply every learned detector's optimiser steps (10 on a GPU)"),
    ) -> None:
        """Kvasir-SEG, WCEBleedGen, brain-tumour MRI, COVID-CT, CT tumour slices: one-class
        detectors beside PCA and intensity baselines; metrics, training time, images/s."""
        from medad.bench.image_screening import run_image_screening
        from medad.config import data_root as _data_root

        chosen = None if not tasks else [t for t in name_list(tasks) if t != "none"]
        run_image_screening(_data_root(data_root), out, tasks=chosen, detectors=name_list(detectors or []) or None,
                            quick=quick, copy_to=copy_to, merge=merge or None, threads=threads,
                            budget=budget)
