"""Recurrent networks for signals: LSTM/GRU classifiers (uni- or bidirectional, stacked), a
sequence autoencoder and a next-step predictor for normal-only training.

Raw windows ``(N, C, T)`` become sequences of frames ``(N, S, C*F)`` with :func:`to_frames`
(an LSTM over thousands of raw samples is slow and forgets; a frame of ``F`` samples per step
keeps sequences short). Every network here takes ``(N, S, D)`` sequences.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_frames", "make_rnn", "RecurrentClassifier", "SequenceAutoencoder", "NextStepPredictor"]


def to_frames(x: torch.Tensor, frame_len: int) -> torch.Tensor:
    """``(N, C, T)`` -> ``(N, S, C*frame_len)`` with ``S = T // frame_len`` non-overlapping frames
    (a trailing remainder shorter than a frame is dropped)."""
    n, c, t = x.shape
    s = t // frame_len
    if s < 1:
        raise ValueError(f"window of {t} samples is shorter than one frame ({frame_len})")
    x = x[:, :, : s * frame_len].reshape(n, c, s, frame_len)
    return x.permute(0, 2, 1, 3).reshape(n, s, c * frame_len)


def from_frames(f: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`to_frames`: ``(N, S, C*F)`` -> ``(N, C, S*F)``."""
    n, s, d = f.shape
    fl = d // channels
    return f.reshape(n, s, channels, fl).permute(0, 2, 1, 3).reshape(n, channels, s * fl)


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
             bidirectional: bool = False, dropout: float = 0.0) -> nn.RNNBase:
    """An ``nn.LSTM`` or ``nn.GRU`` (batch first)."""
    klass = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell.lower())
    if klass is None:
        raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
    return klass(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                 bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)


class _Encoder(nn.Module):
    """Per-step linear projection + ReLU, then the recurrent stack."""

    def __init__(self, in_features: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 cell: str, dropout: float, proj_size: int | None) -> None:
        super().__init__()
        proj_size = proj_size or hidden_size
        self.proj = nn.Sequential(nn.Linear(in_features, proj_size), nn.ReLU(inplace=True))
        self.rnn = make_rnn(cell, proj_size, hidden_size, num_layers, bidirectional, dropout)
        self.out_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, S, D)`` -> outputs ``(N, S, out_size)``."""
        out, _ = self.rnn(self.proj(x))
        return out


class RecurrentClassifier(nn.Module):
    """LSTM/GRU classifier over a sequence; head on [mean over steps, last step] of the outputs.

    Args:
        in_features: features per step ``D``.
        out_channels: logits (1 binary, K classes); ``0`` returns the pooled embedding.
        hidden_size, num_layers, bidirectional, cell ("lstm" | "gru"), dropout: the stack.
        proj_size: width of the per-step input projection (default ``hidden_size``).
    """

    def __init__(self, in_features: int, out_channels: int = 1, hidden_size: int = 64, num_layers: int = 1,
                 bidirectional: bool = False, cell: str = "lstm", dropout: float = 0.0,
                 proj_size: int | None = None) -> None:
        super().__init__()
        self.encoder = _Encoder(in_features, hidden_size, num_layers, bidirectional, cell, dropout, proj_size)
        self.embedding_size = 2 * self.encoder.out_size
        self.head = (nn.Sequential(nn.Dropout(dropout), nn.Linear(self.embedding_size, out_channels))
                     if out_channels > 0 else None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        # mean sees the whole sequence; the last step carries the recurrent summary
        return torch.cat([out.mean(dim=1), out[:, -1]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        return e if self.head is None else self.head(e)


class SequenceAutoencoder(nn.Module):
    """Recurrent autoencoder with a small bottleneck code.

    ``code="sequence"`` (Malhotra et al.'s LSTM-AD): the encoder's final state becomes one code
    ``(N, latent)`` that the decoder unrolls (repeated at every step) back into the sequence.
    ``code="step"``: a bidirectional encoder gives a code of ``latent_size`` per step, which keeps
    the timing and trains much faster on long sequences; the bottleneck is the code's width.
    Either way only sequences like the training ones are reconstructed well, so the per-step
    error is an anomaly score.
    """

    def __init__(self, in_features: int, hidden_size: int = 64, latent_size: int = 16, num_layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0, proj_size: int | None = None, code: str = "step") -> None:
        super().__init__()
        if code not in ("step", "sequence"):
            raise ValueError(f"code must be 'step' or 'sequence', got {code!r}")
        self.code = code
        self.encoder = _Encoder(in_features, hidden_size, num_layers, code == "step", cell, dropout, proj_size)
        self.to_latent = nn.Linear(self.encoder.out_size, latent_size)
        self.decoder = make_rnn(cell, latent_size, hidden_size, num_layers, False, dropout)
        self.out = nn.Linear(hidden_size, in_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, S, latent)`` (step) or ``(N, latent)`` (sequence)."""
        h = self.encoder(x)
        return self.to_latent(h if self.code == "step" else h[:, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(N, S, D)``."""
        z = self.encode(x)
        if self.code == "sequence":
            z = z.unsqueeze(1).expand(-1, x.shape[1], -1)
        h, _ = self.decoder(z)
        return self.out(h)


class NextStepPredictor(nn.Module):
    """Predicts step ``t+1`` of a sequence from steps ``<= t`` (causal, unidirectional).

    ``forward`` returns ``(N, S-1, D)`` predictions of ``x[:, 1:]``.
    """

    def __init__(self, in_features: int, hidden_size: int = 64, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0, proj_size: int | None = None) -> None:
        super().__init__()
        self.encoder = _Encoder(in_features, hidden_size, num_layers, False, cell, dropout, proj_size)
        self.out = nn.Linear(hidden_size, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < 2:
            raise ValueError("next-step prediction needs sequences of at least 2 steps")
        return self.out(self.encoder(x[:, :-1]))
