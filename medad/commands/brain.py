"""Brain-lesion commands: ``medad brain train``, ``medad brain score`` and
``medad bench brain-lesions``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medad.bench.common import merge_help
from medad.commands import name_list


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    brain_app = typer.Typer(help="Brain lesions from healthy MRI only: train on healthy scans, score new ones.",
                            no_args_is_help=True)
    app.add_typer(brain_app, name="brain")

    @brain_app.command("train")
    def brain_train(
        healthy: Path = typer.Argument(..., help="folder of healthy scans (NIfTI/MGZ files matching the image "
                                                      "pattern, DICOM series folders -- slices with or without .dcm: "
                                                      "one scan each), searched recursively, links to folders followed; "
                                                      "files named like masks/labels (the config's exclude_patterns) "
                                                      "that hold few distinct values are left out and listed"),
        out: Path = typer.Option(..., "--out", help="model folder to write"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML, e.g. configs/brain_intensity.yaml"),
        detector: Optional[str] = typer.Option(None, help="detector name (overrides the config)"),
        image_pattern: Optional[str] = typer.Option(None, help="glob of the scans, e.g. 'Flair*.nii.gz'"),
        mask_pattern: Optional[str] = typer.Option(
            None, help="glob of each scan's brain mask, looked up from its folder ({stem}: the scan's file name "
                       "without extension), e.g. '{stem}_brainmask.nii.gz' or 'brainmask*' in case folders; a scan "
                       "without one is skull-stripped by MNI152 registration"),
        lesion_pattern: Optional[str] = typer.Option(
            None, help="glob of each scan's lesion mask, looked up like --mask-pattern (overrides the config's "
                       "lesion_pattern), e.g. '{stem}_lesion.nii.gz' or '../wmh/{stem}_DLWMLS.nii.gz': scans may then "
                       "be partly healthy -- slices holding lesion are left out of training, calibration leaves out "
                       "the lesion slices (or voxels: the config's calibration_exclude); a scan without one is "
                       "wholly healthy. A pattern naming several files for a scan, one file for two scans, or no "
                       "file for any scan stops training before any scan is preprocessed"),
    ) -> None:
        """Preprocess healthy scans, fit on axial slices, calibrate on held-out healthy subjects."""
        from pipelines.brain_lesions import BrainLesionConfig, train_brain

        cfg = BrainLesionConfig.from_yaml(config) if config else BrainLesionConfig()
        overrides = {"detector": detector, "image_pattern": image_pattern, "mask_pattern": mask_pattern,
                     "lesion_pattern": lesion_pattern}
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        cfg.check_patterns()  # the glob options, as the config's own are checked
        if cfg.detector != "ensemble":  # a wrong name or parameter: now, not after the preprocessing
            from medad import registry
            from medad.errors import ConfigError

            try:
                registry.create(cfg.detector, **cfg.detector_params)
            except ConfigError as e:  # named in a config file: the error names the file
                raise (ConfigError(e.problem, config) if config and detector is None else e) from None
        train_brain(healthy, out, cfg)

    @brain_app.command("score")
    def brain_score(
        model: Path = typer.Argument(..., help="model folder from `medad brain train`"),
        scans: Path = typer.Argument(..., help="folder (or file) of scans to score (NIfTI/MGZ files matching "
                                                    "the image pattern, DICOM series folders -- slices with or without "
                                                    ".dcm: one scan each), searched recursively, links to folders followed"),
        out: Path = typer.Option(..., "--out", help="output folder, rewritten: summary.csv lists this run's scans only, "
                                                    "and each scan's folder out/<scan id>/ gets fresh files (an earlier "
                                                    "run's map, mask or overlay there is removed, also with "
                                                    "--no-overlays); use a new folder to keep earlier results"),
        image_pattern: Optional[str] = typer.Option(None, help="glob of the scans (default: the model's)"),
        mask_pattern: Optional[str] = typer.Option(None, help="glob of each scan's brain mask, looked up from its "
                                                              "folder as in `brain train` (default: the model's)"),
        overlays: bool = typer.Option(True, help="write overlay.png per scan"),
    ) -> None:
        """Write anomaly_map.nii.gz, mask.nii.gz (input grid) and overlay.png per scan + summary.csv.

        A scan's id is its file name without extension (case folder names in front; a DICOM series:
        its folder's path); when two scans of one run would get the same id, their parent folder's
        name goes in front (then _2, _3...). A scan that cannot be scored is printed and listed in
        summary.csv with status 'error' and the reason. Files whose names match the model's
        exclude_patterns (*mask*, *seg*, *label*...) and hold a mask or label map (few distinct
        values) are left out: printed as 'left out: FILE: reason', not listed in summary.csv (it
        holds scans only); one that holds a scan's intensities is scored."""
        from pipelines.brain_lesions import score_folder

        rows = score_folder(model, scans, out, overlays=overlays, image_pattern=image_pattern,
                            mask_pattern=mask_pattern)
        if rows and all(r["status"] != "ok" for r in rows):  # nothing scored: a failure for scripts too
            from medad.errors import ReadError

            raise ReadError(f"none of the {len(rows)} scan(s) could be scored (e.g. {rows[0]['error']}); "
                            f"see {Path(out) / 'summary.csv'}", scans)

    @bench_app.command("brain-lesions")
    def bench_brain_lesions(
        data_root: Optional[Path] = typer.Option(None, "--data-root", help="data root (default: $MEDAD_DATA_ROOT or ../shared/data)"),
        out: Path = typer.Option(Path("bench-out"), "--out", help="output folder"),
        detectors: List[str] = typer.Option(["intensity"], "--detectors", help="row names, repeated or comma-separated "
                                             "(--detectors ae,dae): NAME reads brain_NAME_<modality>.yaml or brain_NAME.yaml from "
                                             "--config-dir (e.g. pddpm_overlap, ensemble), else the registered detector NAME with its "
                                             "defaults; globs select several ('none' with --merge: only merge)"),
        modalities: str = typer.Option("flair,t1c", "--modalities", help="comma-separated: flair, t1c"),
        quick: bool = typer.Option(False, "--quick", help="few NiChart subjects and short training (smoke run)"),
        config_dir: Path = typer.Option(Path("configs"), "--config-dir", help="folder of the brain_<name>[_<modality>].yaml configs (default: configs/ here, else "
                                                  "the configs that come with medad)"),
        copy_to: Optional[Path] = typer.Option(None, "--copy-to", help="also copy the JSON/MD here (e.g. benchmarks/)"),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="keep registration brain masks here for reruns"),
        merge: Optional[List[Path]] = typer.Option(None, "--merge", help=merge_help("brain-lesions")),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir",
                                                  help="keep fitted models here; a rerun with the same config reuses them "
                                                       "(e.g. an ensemble of already trained members)"),
    ) -> None:
        """Train on healthy slices, calibrate on held-out healthy ones, test on 4 BraTS patients."""
        from medad.bench.brain_lesions import run_brain_lesions

        run_brain_lesions(data_root=data_root, out=out, detectors=[d for d in name_list(detectors) if d != "none"],
                          modalities=[m.strip().lower() for m in modalities.split(",") if m.strip()], quick=quick,
                          config_dir=config_dir, copy_to=copy_to, cache_dir=cache_dir, merge=merge or None,
                          models_dir=models_dir)
