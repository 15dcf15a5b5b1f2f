"""Small shared helpers: device choice, seeding, atomic writes, peak memory, timing."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def get_device(device: str | None = None):
    """``"cuda"`` when available (or asked), else ``"cpu"``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_description(device: str | None = None) -> str:
    """What ``device`` (as :func:`get_device` resolves it) is, for records of where a model was
    trained: the GPU's name, or the CPU with torch's thread count."""
    import torch

    d = get_device(device)
    if d.type == "cuda":
        return f"{torch.cuda.get_device_name(d)} (cuda)"
    return f"CPU, {torch.get_num_threads()} torch threads"


def walk_folders(root: str | Path) -> list[Path]:
    """``root`` and every folder below it, sorted, FOLLOWING symbolic links to folders (``Path.rglob``
    does not, so a case folder linked into a study folder would be missed); a link back to a folder
    already visited is not entered twice."""
    root = Path(root)
    seen, out = set(), []
    for d, subdirs, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:  # a link loop or a second link to the same folder
            subdirs[:] = []
            continue
        seen.add(real)
        out.append(Path(d))
    return sorted(out)


def walk_files(root: str | Path, pattern: str = "*") -> list[Path]:
    """Files below ``root`` (links to folders followed, see :func:`walk_folders`) whose name
    matches ``pattern`` (``fnmatch``), sorted."""
    return sorted(f for d in walk_folders(root) for f in d.glob(pattern) if f.is_file())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give the result the usual permissions (umask applies)
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (NumPy scalars and arrays converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default), encoding="utf-8")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_default(o: Any):
    """``json.dumps(default=...)`` for NumPy scalars/arrays, tuples/sets and paths."""
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 1024.0**2


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


#: the JSON file that marks each kind of medad model folder, and how such a folder is used (the
#: more specific kinds first)
MODEL_FOLDER_KINDS = {
    "fusion.json": "a score fusion of detectors: medad.detectors.fusion.ScoreFusion.load(folder)",
    "brain_model.json": "a brain-lesion model: `medad brain score FOLDER SCANS/` "
                        "(pipelines.brain_lesions.BrainModel.load(folder))",
    "screening.json": "a recording-screening model: `medad screen run FOLDER RECORDINGS/`",
    "frames.json": "a frame-screening model: `medad images screen FOLDER FRAMES/`",
    "config.json": "a saved detector: medad.detectors.base.Detector.load(folder)",  # last: frames models hold one too
}


def _other_model_hint(folder: Path, wanted: str) -> str:
    """``"; it is the NAME/ subfolder of PARENT, which holds <wanted>: give that folder"`` when
    ``folder`` lies inside a model folder of the kind wanted (a brain model's ``detector/``), else
    ``"; it holds <another kind of model>"`` when ``folder`` is another kind of medad model folder."""
    real = folder.resolve()
    parent = folder.parent if folder.name and folder.parent.name else real.parent
    if real.parent != real and (real.parent / wanted).is_file():
        return f"; it is the {real.name}/ subfolder of {parent}, which holds {wanted}: give that folder"
    kinds = [k for f, k in MODEL_FOLDER_KINDS.items() if f != wanted and (folder / f).is_file()]
    return f"; it holds {kinds[0]}" if kinds else ""


def check_model_folder(folder: str | Path, what: str) -> Path:
    """``folder`` as a :class:`~pathlib.Path`, or a clear :class:`ReadError` when it does not exist
    or is a file (``what`` names the kind of model expected)."""
    from medad.errors import ReadError

    folder = Path(folder)
    if not folder.exists():
        raise ReadError(f"model folder not found (expected a {what})", folder)
    if not folder.is_dir():
        raise ReadError(f"is a file, not a model folder (expected a {what})", folder)
    return folder


def read_model_json(folder: str | Path, filename: str, what: str) -> dict[str, Any]:
    """Read ``folder/filename`` of a saved model folder, raising a clear :class:`ReadError` when the
    folder is not such a model (``what`` names the kind) or the JSON is corrupt."""
    from medad.errors import ReadError

    folder = check_model_folder(folder, what)
    f = folder / filename
    if not f.is_file():
        raise ReadError(f"not a {what} (no {filename}){_other_model_hint(folder, filename)}", folder)
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReadError(f"corrupt {filename}: {e}", f) from None
    if not isinstance(d, dict):
        raise ReadError(f"corrupt {filename}: not a JSON object", f)
    return d
