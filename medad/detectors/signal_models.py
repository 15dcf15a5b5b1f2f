"""Neural detectors for signal windows ``(N, C, T)``: supervised CNN (raw 1D or spectrogram 2D),
LSTM/GRU and neural memory network classifiers, and one-class sequence autoencoder and
next-window predictor.

Every model starts with :class:`SignalPrep`, inside the network (so it is saved with it and
applied identically at training and scoring): per window and channel the signal is centred and
divided by its standard deviation, so no score hinges on a recording's amplitude (gain,
electrode impedance, device), then turned into what the network reads -- raw samples, a
sequence of frames, or a log STFT / mel / MFCC image.

Supervised detectors (``cnn1d``, ``cnn2d``, ``lstm``, ``gru``, ``nmn``) fit on ``x, y`` (``y``
integer classes, 0 = normal) with class-weighted BCE (binary) or cross-entropy (K classes); the
score is the probability of "abnormal" (``1 - p(class 0)``). One-class detectors (``seq_ae``,
``seq_predictor``) fit on normal windows only; the score is the mean squared reconstruction or
next-frame prediction error, and the map is that error per sample on the input's time grid.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from medad.detectors.torch_base import TorchDetector
from medad.errors import ConfigError, InputError
from medad.registry import register

__all__ = ["SupervisedSignalDetector", "OneClassSignalDetector"]


class _SignalNetDetector(TorchDetector):
    """Shared parts: the :class:`SignalPrep` front end, input checks, the net wrapper."""

    input_kind = "signal"
    representation = "raw"

    def _store(self, params: dict[str, Any]) -> None:
        """Keep every constructor argument as the same-named attribute (scikit-learn style)."""
        for k, v in params.items():
            if k not in ("self", "__class__"):
                setattr(self, k, v)

    def _prep_kwargs(self) -> dict[str, Any]:
        t = int(self.in_shape_[-1])
        kw: dict[str, Any] = {"normalize": self.normalize, "representation": self._representation()}
        if kw["representation"] == "frames":
            # at least 2 steps per window, whatever the window length
            kw["frame_len"] = max(1, min(int(self.frame_len), t // 2))
        if kw["representation"] in ("stft", "mel", "mfcc"):
            kw.update(n_fft=max(4, min(int(self.n_fft), t)), hop=getattr(self, "hop", None),
                      n_mels=getattr(self, "n_mels", 32), n_mfcc=getattr(self, "n_mfcc", 13),
                      sfreq=getattr(self, "sfreq", None))
        return kw

    def _representation(self) -> str:
        return self.representation

    def _build_net(self):
        from torch import nn

        from medad.nets.signal_prep import SignalPrep

        prep = SignalPrep(**self._prep_kwargs())
        core = self._build_core(prep.out_shape(self.in_shape_))
        return nn.Sequential(prep, core)

    def _build_core(self, shape: tuple[int, ...]):
        raise NotImplementedError

    def _check_input(self, x: np.ndarray) -> None:
        if x.ndim != 3:
            raise InputError(f"{type(self).__name__} expects signal windows (N, C, T), got shape {x.shape}")
        shape = getattr(self, "in_shape_", None)
        if shape is not None and list(x.shape[1:2]) != list(shape[:1]):
            raise InputError(f"{type(self).__name__} was fitted on {shape[0]} channels, got {x.shape[1]}")


# ============================================================================ supervised
class SupervisedSignalDetector(_SignalNetDetector):
    """Base of the supervised classifiers: class-weighted BCE / cross-entropy, score = p(abnormal)."""

    supervised = True

    def _out_channels(self) -> int:
        return 1 if self.n_classes_ == 2 else self.n_classes_

    def _prepare_fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        y = np.asarray(y)
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool
                or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
            raise InputError(f"labels must be integer classes (0 = normal), got dtype {y.dtype}")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise InputError("labels must be non-negative integer classes (0 = normal)")
        counts = np.bincount(y, minlength=self.n_classes_).astype(np.float64)
        if (counts == 0).any():
            raise InputError(f"every class needs training items; counts per class: {counts.astype(int).tolist()}")
        if self.class_weight == "balanced":
            w = counts.sum() / (len(counts) * counts)
        elif self.class_weight in (None, "none"):
            w = np.ones_like(counts)
        else:
            raise ConfigError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        self.class_weights_ = w.astype(np.float32)

    def _loss(self, net, batch):
        import torch
        from torch.nn import functional as F

        x, y = batch
        logits = net(x)
        w = torch.as_tensor(self.class_weights_, device=logits.device)
        if logits.shape[1] == 1:
            y = y.float()
            # per-item weight of its class: same effect as pos_weight plus a negative weight
            return F.binary_cross_entropy_with_logits(logits[:, 0], y, weight=w[y.long()])
        return F.cross_entropy(logits, y.long(), weight=w)

    def _score_batch(self, net, xb):
        import torch

        logits = net(xb)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0]), None
        return 1.0 - torch.softmax(logits, dim=1)[:, 0], None


_TRAIN_DOC = """        normalize: "window" (amplitude normalisation per window and channel) or "none".
        class_weight: "balanced" (inverse class frequency) or None.
        epochs, batch_size, lr, seed, device: training settings."""


@register("cnn1d")
class CNN1DDetector(SupervisedSignalDetector):
    """Residual dilated 1D CNN on raw windows.

    Args:
        channels: feature maps per stage; dilations: per block within a stage.
        kernel_size, stem_kernel, stem_stride, dropout: see :class:`medad.nets.cnn.SignalCNN`.
""" + _TRAIN_DOC

    conformance_params = {"channels": (4, 8), "dilations": (1, 2), "epochs": 2, "batch_size": 16}

    def __init__(self, channels: Sequence[int] = (16, 32, 64), dilations: Sequence[int] = (1, 2),
                 kernel_size: int = 7, stem_kernel: int = 7, stem_stride: int = 2, dropout: float = 0.1,
                 normalize: str = "window", class_weight: str | None = "balanced", epochs: int = 20,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _cnn(self, spatial_dims: int, in_channels: int):
        from medad.nets.cnn import SignalCNN

        return SignalCNN(spatial_dims, in_channels, self._out_channels(), channels=tuple(self.channels),
                         dilations=tuple(self.dilations), kernel_size=int(self.kernel_size),
                         stem_kernel=int(self.stem_kernel), stem_stride=int(self.stem_stride),
                         dropout=float(self.dropout))

    def _build_core(self, shape):
        return self._cnn(1, shape[0])


@register("cnn2d")
class CNN2DDetector(CNN1DDetector):
    """Residual dilated 2D CNN on a log time-frequency image computed inside the model
    (STFT, mel spectrogram or MFCC of the amplitude-normalised window, per channel).

    Args:
        representation: "stft", "mel" or "mfcc" ("mel"/"mfcc" need ``sfreq``).
        n_fft, hop: STFT size and hop (default ``n_fft // 4``); n_mels, n_mfcc: mel bands, coefficients.
        sfreq: sampling rate of the windows in Hz.
        channels, dilations, kernel_size, stem_kernel, stem_stride, dropout: the CNN.
""" + _TRAIN_DOC

    conformance_params = {"channels": (4, 8), "dilations": (1,), "n_fft": 32, "epochs": 2, "batch_size": 16}

    def __init__(self, representation: str = "stft", n_fft: int = 64, hop: int | None = None, n_mels: int = 32,
                 n_mfcc: int = 13, sfreq: float | None = None, channels: Sequence[int] = (16, 32, 64),
                 dilations: Sequence[int] = (1, 2), kernel_size: int = 3, stem_kernel: int = 3,
                 stem_stride: int = 1, dropout: float = 0.1, normalize: str = "window",
                 class_weight: str | None = "balanced", epochs: int = 20, batch_size: int = 32,
                 lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _representation(self) -> str:
        if self.representation not in ("stft", "mel", "mfcc"):
            raise ConfigError(f"cnn2d representation must be 'stft', 'mel' or 'mfcc', got {self.representation!r}")
        return self.representation

    def _build_core(self, shape):
        return self._cnn(2, shape[0])


@register("lstm")
class LSTMDetector(SupervisedSignalDetector):
    """LSTM classifier over a sequence of frames (``frame_len`` samples x channels per step).

    Args:
        frame_len: samples per step (at most half the window).
        hidden_size, num_layers, bidirectional, dropout: the recurrent stack.
""" + _TRAIN_DOC

    representation = "frames"
    cell = "lstm"
    conformance_params = {"frame_len": 16, "hidden_size": 8, "epochs": 2, "batch_size": 16}

    def __init__(self, frame_len: int = 64, hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, normalize: str = "window", class_weight: str | None = "balanced",
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _build_core(self, shape):
        from medad.nets.recurrent import RecurrentClassifier

        return RecurrentClassifier(shape[-1], self._out_channels(), hidden_size=int(self.hidden_size),
                                   num_layers=int(self.num_layers), bidirectional=bool(self.bidirectional),
                                   cell=self.cell, dropout=float(self.dropout))


@register("gru")
class GRUDetector(LSTMDetector):
    """GRU classifier over a sequence of frames (same parameters as ``lstm``)."""

    cell = "gru"


@register("nmn")
class NeuralMemoryDetector(SupervisedSignalDetector):
    """Neural memory network classifier (Fernando et al.; :mod:`medad.nets.memory_network`).

    The memory persists across the training items of an epoch (items are processed one after
    another within a batch, the state carried between batches) and is reset at the start of
    every epoch; at scoring every item starts from the memory left by training.

    Args:
        frame_len: samples per step (at most half the window).
        hidden_size: width of the recurrent encoder; memory_size: slot size ``k``; slots: ``l``.
        cell: "lstm" or "gru"; plastic: Hebbian plasticity in the memory controllers.
        persistent: keep the memory across items (False: every item starts from the initial memory).
""" + _TRAIN_DOC

    representation = "frames"
    conformance_params = {"frame_len": 128, "hidden_size": 8, "memory_size": 4, "slots": 3, "plastic": True,
                          "epochs": 2, "batch_size": 16}

    def __init__(self, frame_len: int = 64, hidden_size: int = 32, memory_size: int = 16, slots: int = 8,
                 cell: str = "lstm", plastic: bool = False, persistent: bool = True, dropout: float = 0.0,
                 normalize: str = "window", class_weight: str | None = "balanced", epochs: int = 20,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _prepare_fit(self, x, y):
        super()._prepare_fit(x, y)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self._steps_per_epoch = max(1, math.ceil(len(x) / world / max(1, int(self.batch_size))))
        self._step = 0

    def _build_core(self, shape):
        from medad.nets.memory_network import NeuralMemoryNetwork

        return NeuralMemoryNetwork(shape[-1], self._out_channels(), hidden_size=int(self.hidden_size),
                                   memory_size=int(self.memory_size), slots=int(self.slots), cell=self.cell,
                                   plastic=bool(self.plastic), persistent=bool(self.persistent),
                                   dropout=float(self.dropout), seed=int(self.seed))

    def _loss(self, net, batch):
        # the training loop has no epoch hook: count steps to reset the memory at each epoch start
        if self._step % self._steps_per_epoch == 0:
            getattr(net, "module", net)[1].reset_memory()
        self._step += 1
        return super()._loss(net, batch)


# ============================================================================ one-class
class OneClassSignalDetector(_SignalNetDetector):
    """Base of the normal-only sequence models.

    ``scoring="error"``: the mean squared reconstruction / prediction error. It fails when an
    anomaly is *simpler* than normal data (a wide, smooth PVC or a rhythmic seizure, once its
    amplitude is normalised, is easier to reconstruct than a sharp normal QRS or irregular
    background EEG), so two more scores look at what the network encodes instead:
    ``scoring="latent"``: mean distance of the item's code to its ``k`` nearest training codes (a
    bank of at most ``max_bank`` normal items kept with the model, deep-kNN style);
    ``scoring="combined"``: the sum of both, each standardised by its spread over the training
    items (leave-one-out for the kNN part). The map is always the per-sample error on the
    input's time grid.
    """

    representation = "frames"

    def _errors(self, net, x):
        """Per-frame-sample squared errors ``(N, S', D)`` and the index of the first scored frame."""
        raise NotImplementedError

    def _codes(self, net, x):
        """What the network encodes of each item, ``(N, E)``."""
        raise NotImplementedError

    def _loss(self, net, batch):
        err, _ = self._errors(net, batch[0])
        return err.mean()

    def _check_score_mode(self) -> None:
        if self.scoring not in ("error", "latent", "combined"):
            raise ConfigError(f"scoring must be 'error', 'latent' or 'combined', got {self.scoring!r}")

    def _fit(self, x, val, y) -> None:
        import torch

        self._check_score_mode()
        super()._fit(x, val, y)
        if self.scoring == "error":
            return
        rng = np.random.default_rng(int(self.seed))
        keep = np.sort(rng.choice(len(x), min(len(x), int(self.max_bank)), replace=False))
        errs, codes = [], []
        with torch.no_grad():
            for i in range(0, len(keep), 256):
                xb = torch.from_numpy(np.ascontiguousarray(x[keep[i:i + 256]]))
                e, _ = self._errors(self.net_, xb)
                errs.append(e.mean(dim=(1, 2)))
                codes.append(self._codes(self.net_, xb))
        self.bank_ = torch.cat(codes)
        err = torch.cat(errs)
        d = self._knn(self.bank_, exclude_self=True)
        self.score_stats_ = torch.stack([err.mean(), err.std() + 1e-12, d.mean(), d.std() + 1e-12])

    def _knn(self, q, exclude_self: bool = False):
        import torch

        k = max(1, min(int(self.k), len(self.bank_) - int(exclude_self)))
        out = []
        for i in range(0, len(q), 1024):
            d = torch.cdist(q[i:i + 1024], self.bank_)
            v = torch.topk(d, k + int(exclude_self), dim=1, largest=False).values
            out.append(v[:, int(exclude_self):].mean(dim=1))
        return torch.cat(out)

    def _extra_state(self):
        if getattr(self, "bank_", None) is None:
            return {}
        return {"bank": self.bank_, "score_stats": self.score_stats_}

    def _load_extra_state(self, arrays) -> None:
        self.bank_ = arrays.get("bank")
        self.score_stats_ = arrays.get("score_stats")

    def _score_batch(self, net, xb):
        import torch

        from medad.nets.recurrent import from_frames

        err, first = self._errors(net, xb)
        score = err.mean(dim=(1, 2))
        if self.scoring != "error":
            self.bank_ = self.bank_.to(xb.device)
            st = self.score_stats_.to(xb.device)
            d = self._knn(self._codes(net, xb))
            score = (d - st[2]) / st[3] if self.scoring == "latent" else (score - st[0]) / st[1] + (d - st[2]) / st[3]
        # per-sample map: unscored leading frames get 0, samples after the last frame the last value
        c, t = xb.shape[1], xb.shape[2]
        full = torch.cat([err.new_zeros(err.shape[0], first, err.shape[2]), err], dim=1)
        m = from_frames(full, c).mean(dim=1)
        if m.shape[1] < t:
            m = torch.cat([m, m[:, -1:].expand(-1, t - m.shape[1])], dim=1)
        return score, m


_ONE_CLASS_DOC = """        scoring: "error", "latent" (kNN distance of the code to normal training codes) or
            "combined"; k: neighbours; max_bank: training items kept for the kNN.
        normalize: "window" or "none".
        epochs, batch_size, lr, seed, device: training settings."""


@register("seq_ae")
class SequenceAEDetector(OneClassSignalDetector):
    """LSTM/GRU sequence autoencoder trained on normal windows; score = reconstruction error.

    Args:
        frame_len: samples per step (at most half the window).
        hidden_size, latent_size, num_layers, cell ("lstm" | "gru"): the autoencoder.
        code: "step" (a small code per frame) or "sequence" (one code per window); see
            :class:`medad.nets.recurrent.SequenceAutoencoder`.
""" + _ONE_CLASS_DOC + """
    """

    conformance_params = {"frame_len": 16, "hidden_size": 8, "latent_size": 4, "epochs": 2, "batch_size": 16}

    def __init__(self, frame_len: int = 32, hidden_size: int = 64, latent_size: int = 4, num_layers: int = 1,
                 cell: str = "lstm", code: str = "step", scoring: str = "error", k: int = 5, max_bank: int = 4096,
                 normalize: str = "window", epochs: int = 20, batch_size: int = 32, lr: float = 1e-3,
                 seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _build_core(self, shape):
        from medad.nets.recurrent import SequenceAutoencoder

        return SequenceAutoencoder(shape[-1], hidden_size=int(self.hidden_size), latent_size=int(self.latent_size),
                                   num_layers=int(self.num_layers), cell=self.cell, code=self.code)

    def _errors(self, net, x):
        prep, core = net[0], net[1]
        f = prep(x)
        return (core(f) - f) ** 2, 0

    def _codes(self, net, x):
        import torch

        z = net[1].encode(net[0](x))
        if z.ndim == 2:  # one code per window
            return z
        # per-step codes pooled over time, so windows of any length compare with the bank
        return torch.cat([z.mean(dim=1), z.std(dim=1, unbiased=False)], dim=1)


@register("seq_predictor")
class SequencePredictorDetector(OneClassSignalDetector):
    """LSTM/GRU next-window predictor trained on normal windows: every frame is predicted from
    the frames before it; score = prediction error (the first frame is not scored).

    Args:
        frame_len: samples per step (at most half the window).
        hidden_size, num_layers, cell ("lstm" | "gru"): the predictor (its code for the kNN
            scores: the mean and last of its hidden states).
""" + _ONE_CLASS_DOC + """
    """

    conformance_params = {"frame_len": 16, "hidden_size": 8, "epochs": 2, "batch_size": 16}

    def __init__(self, frame_len: int = 32, hidden_size: int = 64, num_layers: int = 1, cell: str = "lstm",
                 scoring: str = "error", k: int = 5, max_bank: int = 4096, normalize: str = "window",
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._store(locals())

    def _build_core(self, shape):
        from medad.nets.recurrent import NextStepPredictor

        return NextStepPredictor(shape[-1], hidden_size=int(self.hidden_size), num_layers=int(self.num_layers),
                                 cell=self.cell)

    def _errors(self, net, x):
        prep, core = net[0], net[1]
        f = prep(x)
        return (core(f) - f[:, 1:]) ** 2, 1

    def _codes(self, net, x):
        import torch

        h = net[1].encoder(net[0](x))
        return torch.cat([h.mean(dim=1), h[:, -1]], dim=1)
