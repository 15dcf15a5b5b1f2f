"""Settings: where the data lives, which device to use, YAML configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medad.errors import ConfigError

DATA_ROOT_ENV = "MEDAD_DATA_ROOT"


def data_root(explicit: str | Path | None = None, *, required: bool = True) -> Path | None:
    """Resolve the data root: an explicit value, else ``$MEDAD_DATA_ROOT``, else ``../shared/data``
    relative to the current directory (the layout of the development checkout).

    Returns ``None`` when nothing exists and ``required`` is False.
    """
    candidates = []
    if explicit is not None:
        candidates.append(Path(explicit))
    elif os.environ.get(DATA_ROOT_ENV):
        candidates.append(Path(os.environ[DATA_ROOT_ENV]))
    else:
        candidates.append(Path.cwd().parent / "shared" / "data")
        candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise ConfigError(
            f"data root not found (tried {', '.join(str(c) for c in candidates)}); "
            f"pass --data-root or set {DATA_ROOT_ENV}"
        )
    return None


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings are merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# the configs that come with medad (a source checkout or an editable install: <repo>/configs)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _config_file(p: Path) -> Path:
    """``p`` itself when it is a file; otherwise, for a relative path or a bare name
    (``brain_intensity``), the config of that name that comes with medad (:data:`CONFIG_DIR`), so
    ``--config configs/brain_intensity.yaml`` also works outside the repository folder."""
    if p.is_file():
        return p
    if not p.is_absolute():
        names = [p.name] if p.suffix in (".yaml", ".yml") else [p.name + ".yaml", p.name + ".yml"]
        for name in names:
            if (CONFIG_DIR / name).is_file():
                return CONFIG_DIR / name
    known = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    hint = f"; configs that come with medad (give a name, e.g. {known[0]}): {', '.join(known)}" if known else ""
    raise ConfigError("config file not found" + hint, p)


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config into a dict, with a clear error naming the file.

    A top-level ``base: other.yaml`` (relative to this file) reads that config first and lays
    this one over it, nested mappings merged key by key: a variant names only what differs.
    """
    import yaml

    p = _config_file(Path(path))
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", p) from None
    if not isinstance(cfg, dict):
        raise ConfigError("config must be a mapping at top level", p)
    base = cfg.pop("base", None)
    if base is not None:
        bp = (p.parent / str(base)).resolve()
        if bp in _seen or bp == p.resolve():
            raise ConfigError(f"config 'base' chain loops back to {bp.name}", p)
        if not bp.is_file():
            raise ConfigError(f"base config {base!r} not found next to it", p)
        cfg = _merged(load_config(bp, _seen + (p.resolve(),)), cfg)
    return cfg


# training parameters every neural detector takes (TorchDetector): checked when settings are
# built, so a bad value in a YAML is named with its file before any data are read, not by the
# training loop minutes later; ``(minimum, integer)``
TRAINING_PARAMS: dict[str, tuple[float, bool]] = {"epochs": (1, True), "batch_size": (1, True), "lr": (0.0, False)}


def check_detector_params(params: Any) -> None:
    """Raise :class:`ConfigError` (``detector_params.epochs must be >= 1, got -3``) when
    ``detector_params`` is not a mapping or a common training parameter in it is out of range.
    Parameters of one detector only are left to that detector."""
    if not isinstance(params, dict):
        raise ConfigError(f"detector_params must be a mapping (name: value), got {params!r}")
    for name, (low, integer) in TRAINING_PARAMS.items():
        if name not in params:
            continue
        v = params[name]
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if integer and not (number and float(v).is_integer() and v >= low):
            raise ConfigError(f"detector_params.{name} must be an integer >= {low:g}, got {v!r}")
        if not integer and not (number and v > low):
            raise ConfigError(f"detector_params.{name} must be a number > {low:g}, got {v!r}")


def dataclass_from_dict(cls, d: dict[str, Any] | None, what: str):
    """Build a settings dataclass from a mapping, naming unknown keys in a clear error; a
    ``detector_params`` field is checked (:func:`check_detector_params`). Callers reading a YAML
    re-raise the :class:`ConfigError` with the file's path."""
    from dataclasses import fields

    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} settings: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    out = cls(**d)
    if "detector_params" in known:
        check_detector_params(out.detector_params)
    return out
