"""Run by tests/test_training.py under torchrun: train a tiny model with DDP on the CPU."""

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from medad.training import TrainConfig, train


def main(out: str) -> None:
    import torch.distributed as dist

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, checkpoint_dir=out, progress=False, device="cpu")
    res = train(model, TensorDataset(x, y), lambda m, b: torch.nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1]), cfg)
    rank = dist.get_rank()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    Path(out, f"rank{rank}.txt").write_text(" ".join(f"{v:.6f}" for v in flat.tolist()) + f"\n{dist.get_world_size()} {res.steps}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
