"""Name -> detector class, looked up lazily so importing medad stays cheap.

A detector module registers itself with :func:`register`; :data:`_KNOWN` lists where each
built-in name lives so :func:`get` can import only that module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from medad.detectors.base import Detector

_REGISTRY: dict[str, type] = {}

# name -> module that defines it (built-ins; imported on first lookup)
_KNOWN: dict[str, str] = {}
_MODULES = (
    "medad.detectors.intensity",
    "medad.detectors.reconstruction",
    "medad.detectors.diffusion",
    "medad.detectors.features",
    "medad.detectors.signal_models",
    "medad.detectors.svdd",
    "medad.detectors.cutpaste",
    "medad.detectors.patchcore",
    "medad.detectors.classifier",
    "medad.detectors.pca",
    "medad.detectors.descriptor_knn",
    "medad.detectors.fusion",
    "medad.detectors.lung_ct",
)


def register(name: str):
    """Class decorator: ``@register("ae")`` makes the class findable as ``get("ae")``."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"detector name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            # a built-in module that does not exist (yet) is skipped; a missing dependency
            # inside an existing module is a real error
            if e.name != mod:
                raise


def get(name: str) -> type["Detector"]:
    """The detector class registered under ``name``."""
    if name not in _REGISTRY:
        _import_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown detector {name!r}; known: {', '.join(available())}")
    return _REGISTRY[name]


def available(input_kind: str | None = None) -> list[str]:
    """All registered detector names, or those taking ``input_kind`` input (``"image"``,
    ``"signal"`` or ``"features"``: each class's ``input_kind``)."""
    _import_all()
    return sorted(n for n, cls in _REGISTRY.items()
                  if input_kind is None or getattr(cls, "input_kind", None) == input_kind)


def create(name: str, **params) -> "Detector":
    """Instantiate detector ``name`` with ``params``; a parameter it does not take is a
    :class:`~medad.errors.ConfigError` naming the known ones (e.g. a typo in a config)."""
    import inspect

    cls = get(name)
    sig = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        known = [k for k, p in sig.items() if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"unknown parameter(s) for detector {name!r}: {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
    return cls(**params)
