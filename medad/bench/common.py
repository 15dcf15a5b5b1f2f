"""What every benchmark shares: environment facts, JSON + Markdown output, table formatting."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any, Sequence

from medad.utils import write_json, write_text


def environment() -> dict[str, Any]:
    """Facts that make a figure reproducible: versions, cores, device."""
    import torch

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.machine(),
    }


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in r) + " |")
    return "\n".join(lines) + "\n"


def write_benchmark(out: str | Path, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (results + environment) and ``<out>/<name>.md`` atomically."""
    out = Path(out)
    results = {"benchmark": name, "environment": environment(), **results}
    j = write_json(out / f"{name}.json", results)
    m = write_text(out / f"{name}.md", markdown)
    print(f"wrote {j} and {m}")
    return j, m
