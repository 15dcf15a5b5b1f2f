import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from medad.errors import ReadError
from medad.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g)
    y = x @ torch.tensor([2.0, -1.0, 0.5])
    return TensorDataset(x, y)


def _loss(m, b):
    return torch.nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1])


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_training_reduces_loss_and_is_seeded():
    m1, m2 = _model(), _model()
    r1 = train(m1, _data(), _loss, TrainConfig(epochs=5, batch_size=8, lr=0.05, progress=False))
    r2 = train(m2, _data(), _loss, TrainConfig(epochs=5, batch_size=8, lr=0.05, progress=False))
    assert r1.history[-1] < r1.history[0] * 0.5
    assert r1.steps == 25
    assert torch.equal(m1.weight, m2.weight)


def test_resume_continues_exactly(tmp_path):
    full = _model()
    train(full, _data(), _loss, TrainConfig(epochs=4, batch_size=8, lr=0.05, progress=False))

    part = _model()
    ck = tmp_path / "ck"
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05, progress=False, checkpoint_dir=str(ck),
                      checkpoint_every=3, max_steps=7)
    r = train(part, _data(), _loss, cfg)
    assert r.steps == 7 and (ck / CHECKPOINT_NAME).is_file()
    state = load_checkpoint(ck / CHECKPOINT_NAME)  # weights_only load works
    assert state["step"] == 6 or state["step"] == 7

    resumed = _model()  # fresh process-like start
    cfg2 = TrainConfig(epochs=4, batch_size=8, lr=0.05, progress=False, checkpoint_dir=str(ck), resume=True)
    r2 = train(resumed, _data(), _loss, cfg2)
    assert r2.resumed_from_step is not None and r2.resumed_from_step > 0
    assert r2.steps == 20
    torch.testing.assert_close(resumed.weight, full.weight)


def test_interrupt_writes_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss(m, b):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return _loss(m, b)

    with pytest.raises(KeyboardInterrupt):
        train(_model(), _data(), loss, TrainConfig(epochs=3, batch_size=8, progress=False,
                                                   checkpoint_dir=str(tmp_path)))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 3


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ReadError, match="last.ckpt"):
        load_checkpoint(bad)


def test_ddp_two_processes_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    worker = Path(__file__).with_name("_ddp_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = (tmp_path / "rank0.txt").read_text().splitlines()
    r1 = (tmp_path / "rank1.txt").read_text().splitlines()
    assert r0[0] == r1[0], "DDP replicas diverged"
    assert r0[1] == "2 12"  # world size 2; 64 items / 2 ranks / batch 8 = 4 steps x 3 epochs
    assert (tmp_path / CHECKPOINT_NAME).is_file()
