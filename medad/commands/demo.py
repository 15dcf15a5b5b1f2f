"""``medad demo``: the main job end to end on the built-in default data (see :mod:`medad.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from medad.commands import name_list


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("medad-demo"), "--out", help="output folder"),
        parts: List[str] = typer.Option(["all"], "--parts", help="parts to run: brain, eeg or all; repeatable or "
                                                                 "comma-separated (--parts brain,eeg), as bench explain"),
        detector: str = typer.Option("dae", help="deep brain detector shown beside the intensity baseline"),
        seed: int = typer.Option(0, help="seed of the generated data and the models"),
    ):
        """Build demo data from what installed packages ship (MNI152 template, generated EEG),
        train on healthy data only, calibrate on held-out healthy data, score new cases, and write
        NIfTI maps, PNG overlays and summaries. Needs no download and no data folder."""
        from medad.demo import run_demo

        run_demo(out, parts=name_list(parts), detector=detector, seed=seed)
