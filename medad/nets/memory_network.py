"""Neural memory network (Fernando et al.) with optional neural plasticity.

An external memory ``M`` of ``l`` slots of size ``k`` (a ``k x l`` matrix) is read and written
at every step of every sequence, and it is *kept across sequences* -- the network can relate a
recording to the recordings it has seen before, not only look inside one. For an input step
``x_t``::

    q_t  = f_r(x_t)                          read controller          (k,)
    z_t  = softmax(q_tᵀ M_{t-1})             attention over slots     (l,)
    m̄_t  = z_t M_{t-1}ᵀ                      read                     (k,)
    m_t  = f_o(m̄_t)                          output controller        (k,)
    m'_t = f_w(m_t)                          write controller         (k,)
    M_t  = M_{t-1} ∘ (1 − z_t ⊗ e_k)ᵀ + (m'_t ⊗ e_l) ∘ (z_t ⊗ e_k)ᵀ

with ``e_k``/``e_l`` vectors of ones and ``⊗`` the outer product. The two products in the
update are element-wise (the ``k x l`` matrices only conform that way): slot ``j`` keeps
``1 − z_t[j]`` of its content and receives ``z_t[j]`` of the write vector, i.e.
``M_t[:, j] = (1 − z_t[j]) M_{t-1}[:, j] + z_t[j] m'_t``.

Plasticity (Miconi et al.'s differentiable plasticity, as used by Fernando et al.): each
controller computes ``y = σ(x (W + α ∘ H)ᵀ + b)`` where ``W``, ``α`` and the rate ``η`` are
learned and the Hebbian trace ``H ← clamp((1 − η) H + η yᵀx, −1, 1)`` changes while running;
the traces persist across sequences exactly like the memory.

Persistence: in training mode the items of a batch are processed one after another, each
starting from the memory the previous one left; the state is kept in buffers, detached between
batches (so gradients stop at the batch), and reset with :meth:`NeuralMemoryNetwork.reset_memory`
(e.g. at the start of an epoch). In eval mode every item starts from the stored state and its
writes are discarded afterwards: test items do not influence each other, and scoring is
deterministic and order-independent.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from medad.nets.recurrent import make_rnn

__all__ = ["PlasticLinear", "NeuralMemory", "NeuralMemoryNetwork"]

_ACTS = {None: lambda t: t, "none": lambda t: t, "tanh": torch.tanh, "relu": torch.relu}


class PlasticLinear(nn.Module):
    """A linear controller ``y = act(x (W + α∘H)ᵀ + b)`` with an optional Hebbian trace ``H``.

    Args:
        in_features, out_features: sizes.
        plastic: learn ``α`` and ``η`` and use the trace (else a plain linear layer).
        activation: ``None``/"none", "tanh" or "relu".
    """

    def __init__(self, in_features: int, out_features: int, plastic: bool = False,
                 activation: str | None = "tanh") -> None:
        super().__init__()
        if activation not in _ACTS:
            raise ValueError(f"unknown activation {activation!r}")
        self.linear = nn.Linear(in_features, out_features)
        self.plastic = plastic
        self.activation = activation
        if plastic:
            self.alpha = nn.Parameter(torch.full((out_features, in_features), 0.01))
            self.eta_logit = nn.Parameter(torch.tensor(-2.0))  # η = sigmoid(-2) ≈ 0.12 at start

    def trace_shape(self) -> tuple[int, int]:
        return tuple(self.linear.weight.shape)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, hebb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, in)``, ``hebb`` ``(B, out, in)`` -> ``(y (B, out), new hebb)``."""
        y = self.linear(x)
        if self.plastic:
            if hebb is None:
                hebb = x.new_zeros((x.shape[0], *self.trace_shape()))
            y = y + torch.bmm(self.alpha * hebb, x.unsqueeze(2)).squeeze(2)
        y = _ACTS[self.activation](y)
        if self.plastic:
            eta = torch.sigmoid(self.eta_logit)
            hebb = torch.clamp(hebb + eta * (y.unsqueeze(2) * x.unsqueeze(1) - hebb), -1.0, 1.0)
        return y, hebb


class NeuralMemory(nn.Module):
    """The memory read/write step with its three controllers (see the module docstring).

    Args:
        in_features: size of ``x_t``.
        memory_size: ``k``, the size of a slot.
        slots: ``l``, the number of slots.
        plastic: Hebbian plasticity in the controllers.
        read_activation: activation of ``f_r`` (none by default so the query can sharpen the
            attention freely); ``controller_activation`` that of ``f_o`` and ``f_w`` (tanh keeps
            the memory bounded: every update is a convex blend of bounded vectors).
    """

    def __init__(self, in_features: int, memory_size: int = 32, slots: int = 16, plastic: bool = False,
                 read_activation: str | None = None, controller_activation: str | None = "tanh") -> None:
        super().__init__()
        self.memory_size, self.slots = memory_size, slots
        self.f_r = PlasticLinear(in_features, memory_size, plastic, read_activation)
        self.f_o = PlasticLinear(memory_size, memory_size, plastic, controller_activation)
        self.f_w = PlasticLinear(memory_size, memory_size, plastic, controller_activation)
        self.plastic = plastic

    def step(self, x: torch.Tensor, memory: torch.Tensor, hebbs: list | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor]:
        """One step for a batch of independent memories.

        Args:
            x: ``(B, in_features)``.
            memory: ``(B, k, l)``.
            hebbs: Hebbian traces of ``f_r, f_o, f_w`` (``None`` entries start at zero).

        Returns:
            ``(m_t (B, k), M_t (B, k, l), new hebbs, z_t (B, l))``.
        """
        hebbs = list(hebbs) if hebbs is not None else [None, None, None]
        q, hebbs[0] = self.f_r(x, hebbs[0])                                   # q_t = f_r(x_t)
        z = torch.softmax(torch.bmm(q.unsqueeze(1), memory).squeeze(1), dim=-1)  # softmax(q_tᵀ M_{t-1})
        m_bar = torch.bmm(memory, z.unsqueeze(2)).squeeze(2)                  # z_t M_{t-1}ᵀ
        m, hebbs[1] = self.f_o(m_bar, hebbs[1])                               # m_t = f_o(m̄_t)
        w, hebbs[2] = self.f_w(m, hebbs[2])                                   # m'_t = f_w(m_t)
        zk = z.unsqueeze(1)  # (z_t ⊗ e_k)ᵀ as (B, 1, l), broadcast over the k rows
        # M ∘ (1 − z⊗e_k)ᵀ + (m'⊗e_l) ∘ (z⊗e_k)ᵀ, written with one product fewer
        new_memory = memory + (w.unsqueeze(2) - memory) * zk
        return m, new_memory, hebbs, z


class NeuralMemoryNetwork(nn.Module):
    """Sequence classifier with a persistent neural memory.

    Steps ``x_t`` of a sequence ``(N, S, D)`` are projected and passed through an LSTM/GRU (the
    recurrent part of the read controller in Fernando et al.); its outputs ``h_t`` drive the
    memory; the head sees ``[h_S, mean_t m_t]``.

    Args:
        in_features: features per step ``D``.
        out_channels: logits (1 binary, K classes).
        hidden_size: width of the projection and the recurrent encoder.
        memory_size: ``k``; slots: ``l``.
        cell: "lstm" or "gru".
        plastic: Hebbian plasticity in the memory controllers.
        persistent: keep the memory across the items of a batch and across batches (training);
            ``False`` starts every item from the initial memory (an ablation; faster).
        dropout: before the head.
        seed: seeds the fixed random initial memory (so it is reproducible and saved).
    """

    def __init__(self, in_features: int, out_channels: int = 1, hidden_size: int = 32, memory_size: int = 32,
                 slots: int = 16, cell: str = "lstm", plastic: bool = False, persistent: bool = True,
                 dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_features, hidden_size), nn.ReLU(inplace=True))
        self.rnn = make_rnn(cell, hidden_size, hidden_size)
        self.memory_cell = NeuralMemory(hidden_size, memory_size, slots, plastic)
        self.persistent = persistent
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size + memory_size, out_channels))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("memory_init", torch.randn(memory_size, slots, generator=g) / math.sqrt(memory_size))
        self.register_buffer("memory", self.memory_init.clone())
        self._hebb_names = []
        if plastic:
            for name, ctrl in zip(("r", "o", "w"), (self.memory_cell.f_r, self.memory_cell.f_o, self.memory_cell.f_w)):
                self.register_buffer(f"hebb_{name}", torch.zeros(ctrl.trace_shape()))
                self._hebb_names.append(f"hebb_{name}")

    # ------------------------------------------------------------------ state
    @torch.no_grad()
    def reset_memory(self) -> None:
        """Back to the initial memory and empty Hebbian traces (e.g. at the start of an epoch)."""
        self.memory.copy_(self.memory_init)
        for n in self._hebb_names:
            getattr(self, n).zero_()

    def _stored_hebbs(self) -> list | None:
        return [getattr(self, n) for n in self._hebb_names] if self._hebb_names else None

    # ------------------------------------------------------------------ forward
    def run_memory(self, h: torch.Tensor, memory: torch.Tensor, hebbs: list | None
                   ) -> tuple[torch.Tensor, torch.Tensor, list | None]:
        """Run the memory over steps ``h`` ``(B, S, H)`` for ``B`` independent memories ``(B, k, l)``.
        Returns the outputs ``m`` ``(B, S, k)`` and the final memory and traces."""
        outs = []
        for t in range(h.shape[1]):
            m, memory, hebbs, _ = self.memory_cell.step(h[:, t], memory, hebbs)
            outs.append(m)
        return torch.stack(outs, dim=1), memory, (hebbs if self._hebb_names else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.proj(x))
        b = h.shape[0]
        if self.training and self.persistent:
            # one item after another, each from the memory the previous one left
            # a copy: the buffers are overwritten in place after this batch's graph is built
            memory = self.memory.detach().clone().unsqueeze(0)
            hebbs = [t.detach().clone().unsqueeze(0) for t in self._stored_hebbs()] if self._hebb_names else None
            outs = []
            for i in range(b):
                m, memory, hebbs = self.run_memory(h[i : i + 1], memory, hebbs)
                outs.append(m)
            m_all = torch.cat(outs, dim=0)
            with torch.no_grad():  # keep the state, cut the graph between batches
                self.memory.copy_(memory[0].detach())
                for n, t in zip(self._hebb_names, hebbs or []):
                    getattr(self, n).copy_(t[0].detach())
        else:
            start = self.memory if self.persistent else self.memory_init
            memory = start.unsqueeze(0).expand(b, -1, -1)
            hebbs = ([t.unsqueeze(0).expand(b, -1, -1) for t in self._stored_hebbs()]
                     if self._hebb_names and self.persistent else None)
            m_all, _, _ = self.run_memory(h, memory, hebbs)
        return self.head(torch.cat([h[:, -1], m_all.mean(dim=1)], dim=1))
