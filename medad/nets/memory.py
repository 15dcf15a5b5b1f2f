"""Memory module of the memory-augmented autoencoder (MemAE, Gong et al., ICCV 2019).

The encoder output ``z`` addresses ``N`` learned prototypes ``m_i``:
``w_i = softmax_i(z . m_i)``; hard shrinkage ``w^_i = max(w_i - lambda, 0) * w_i / (|w_i - lambda| + eps)``
keeps only the few prototypes that matter, the weights are renormalised to sum to 1, and the
decoder sees ``z^ = sum_i w^_i m_i``. An entropy term on ``w^`` pushes the addressing to be
sparse. Because a lesion cannot be composed from normal prototypes, its reconstruction error
stays high.

Works for any ``spatial_dims``: a feature map ``(N, C, *spatial)`` is addressed position by
position (each position's ``C``-vector is one query, as in Gong et al.'s video model); a
vector latent ``(N, C)`` is one query per item.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MemoryModule", "hard_shrink_relu", "memory_entropy"]


def hard_shrink_relu(w: torch.Tensor, lambd: float, eps: float = 1e-12) -> torch.Tensor:
    """Gong et al.'s continuous hard shrinkage ``max(w - lambd, 0) * w / (|w - lambd| + eps)``.

    Written with ReLU so it stays differentiable almost everywhere (the paper's eq. 7).
    """
    return torch.relu(w - lambd) * w / ((w - lambd).abs() + eps)


def memory_entropy(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy ``-sum_i w_i log w_i`` of addressing weights ``(..., N)`` (the MemAE loss term)."""
    return (-weights * torch.log(weights + eps)).sum(dim=-1).mean()


class MemoryModule(nn.Module):
    """``num_slots`` learned prototypes of size ``dim`` with sparse attention-based read-out.

    Args:
        num_slots: number of prototypes ``N``.
        dim: feature size of a query (the channel count of the latent).
        shrink_threshold: ``lambda`` of the hard shrinkage; ``None`` uses ``1 / num_slots``
            (Gong et al. recommend ``[1/N, 3/N]``); ``0`` disables shrinkage.
        eps: numerical guard of the shrinkage and renormalisation.

    ``forward(z)`` takes ``(N, dim)`` or ``(N, dim, *spatial)`` and returns ``(z_hat, weights)``
    where ``z_hat`` has ``z``'s shape and ``weights`` is ``(N, num_slots)`` or
    ``(N, *spatial, num_slots)``: non-negative, sparse and summing to 1 over the last axis.
    """

    def __init__(self, num_slots: int, dim: int, shrink_threshold: float | None = None, eps: float = 1e-12):
        super().__init__()
        self.num_slots = int(num_slots)
        self.dim = int(dim)
        self.shrink_threshold = 1.0 / self.num_slots if shrink_threshold is None else float(shrink_threshold)
        self.eps = float(eps)
        # uniform init scaled like a linear layer (as in the reference implementation)
        bound = 1.0 / math.sqrt(self.dim)
        self.memory = nn.Parameter(torch.empty(self.num_slots, self.dim).uniform_(-bound, bound))

    def address(self, q: torch.Tensor) -> torch.Tensor:
        """Sparse, renormalised addressing weights ``(Q, num_slots)`` for queries ``(Q, dim)``."""
        w = torch.softmax(q @ self.memory.t(), dim=-1)
        if self.shrink_threshold > 0:
            w = hard_shrink_relu(w, self.shrink_threshold, self.eps)
            w = w / (w.sum(dim=-1, keepdim=True) + self.eps)
        return w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim < 2 or z.shape[1] != self.dim:
            raise ValueError(f"memory of dim {self.dim} got a latent of shape {tuple(z.shape)}")
        # channels last, positions flattened: every position is one query
        zc = z.movedim(1, -1)
        w = self.address(zc.reshape(-1, self.dim))
        out = (w @ self.memory).reshape(zc.shape).movedim(-1, 1)
        return out, w.reshape(*zc.shape[:-1], self.num_slots)

    def extra_repr(self) -> str:
        return f"num_slots={self.num_slots}, dim={self.dim}, shrink_threshold={self.shrink_threshold}"
