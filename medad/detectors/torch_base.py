"""Shared machinery of neural detectors: build a net on the data's shape, train it with
:func:`medad.training.train`, batch inference under ``no_grad``, save/load its weights.

A subclass implements:

* ``_build_net(self) -> nn.Module`` -- may use ``self.in_shape_`` (the item shape ``x.shape[1:]``)
  and, for supervised detectors, ``self.n_classes_``;
* ``_loss(self, net, batch) -> Tensor`` -- ``batch`` is ``[x]`` or ``[x, y]`` on the device;
* ``_score_batch(self, net, xb) -> (scores (B,), map (B, *spatial) or None)``;
* optionally ``_extra_state() -> dict[str, Tensor]`` / ``_load_extra_state(dict)`` for tensors
  that are not parameters or buffers of the net, and ``_prepare_fit(x, y)`` to learn
  something from the data before the net is built (e.g. a normalisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.detectors.base import AnomalyResult, Detector


class TorchDetector(Detector):
    """Base of every neural detector. Subclasses list their parameters in ``__init__``; the common
    ones are ``epochs``, ``batch_size``, ``lr``, ``seed`` and ``device``."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    #: extra fields of :class:`medad.training.TrainConfig` a subclass wants (e.g. grad_clip)
    train_overrides: dict[str, Any] = {}
    #: set by callers who want checkpoints/resume/progress (not a model parameter)
    train_options: dict[str, Any] | None = None

    # ------------------------------------------------------------------ training
    def _train_config(self):
        from medad.training import TrainConfig

        opts = dict(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                    seed=int(self.seed), device=str(self.device))
        opts.update(self.train_overrides)
        opts.update(self.train_options or {})
        return TrainConfig(**opts)

    def _fit(self, x: np.ndarray, val: np.ndarray | None, y: np.ndarray | None) -> None:
        import torch
        from torch.utils.data import TensorDataset

        from medad.training import train
        from medad.utils import seed_everything

        seed_everything(int(self.seed))
        self.in_shape_ = [int(v) for v in x.shape[1:]]
        if self.supervised:
            classes = np.unique(y)
            self.n_classes_ = int(max(2, classes.max() + 1)) if np.issubdtype(classes.dtype, np.integer) else len(classes)
        self._prepare_fit(x, y)
        self.net_ = self._build_net()
        tensors = [torch.from_numpy(np.ascontiguousarray(x))]
        if y is not None:
            tensors.append(torch.as_tensor(np.asarray(y)))
        self.train_result_ = train(self.net_, TensorDataset(*tensors), self._loss, self._train_config())
        self.net_.to("cpu").eval()

    def _prepare_fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        return None

    # ------------------------------------------------------------------ inference
    def _score(self, x: np.ndarray) -> AnomalyResult:
        import torch

        from medad.utils import get_device

        device = get_device(self.device)
        net = self.net_.to(device).eval()
        scores, maps = [], []
        bs = max(1, int(self.batch_size))
        with torch.no_grad():
            for i in range(0, len(x), bs):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + bs])).to(device)
                s, m = self._score_batch(net, xb)
                scores.append(s.detach().float().cpu().numpy())
                if m is not None:
                    maps.append(m.detach().float().cpu().numpy())
        self.net_.to("cpu")
        return AnomalyResult(score=np.concatenate(scores).astype(np.float64),
                             map=np.concatenate(maps) if maps else None)

    # ------------------------------------------------------------------ persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {f"net.{k}": v for k, v in self.net_.state_dict().items()}
        arrays.update({f"extra.{k}": v for k, v in self._extra_state().items()})
        extra = {"in_shape": self.in_shape_}
        if self.supervised:
            extra["n_classes"] = self.n_classes_
        return arrays, extra

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        self.in_shape_ = list(extra["in_shape"])
        if "n_classes" in extra:
            self.n_classes_ = int(extra["n_classes"])
        self._load_extra_state({k[6:]: v for k, v in arrays.items() if k.startswith("extra.")})
        self.net_ = self._build_net()
        self.net_.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("net.")})
        self.net_.eval()

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, arrays: dict[str, Any]) -> None:
        return None

    # ------------------------------------------------------------------ for subclasses
    def _build_net(self):
        raise NotImplementedError

    def _loss(self, net, batch):
        raise NotImplementedError

    def _score_batch(self, net, xb):
        raise NotImplementedError
